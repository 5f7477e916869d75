"""The quick start: one command sets up a virtual environment and runs the demo or the tests.

    python3 scripts/dev.py demo    # generate an image with the built-in demo model
    python3 scripts/dev.py test    # lint and run the whole test suite

Everything lives in .venv beside this checkout and is installed on first use (and again when
pyproject.toml changes). Set PIXART_DELTA_TORCH to choose the torch to install (default
"torch==2.13.0"); an environment that already has torch keeps it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".pixart-delta-installed"


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def ensure_environment() -> None:
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    has_torch = subprocess.run([str(PYTHON), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        run(PYTHON, "-m", "pip", "install", "-q", os.environ.get("PIXART_DELTA_TORCH", "torch==2.13.0"))
    run(PYTHON, "-m", "pip", "install", "-q", "-e", ".[test]")
    STAMP.write_text(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_environment()
    extra = sys.argv[2:]
    if sys.argv[1] == "demo":
        run(PYTHON, "-m", "pixart_delta_core", "demo", *extra)
    else:
        run(PYTHON, "-m", "ruff", "check", ".")
        run(PYTHON, "-m", "ruff", "format", "--check", ".")
        run(PYTHON, "-m", "pytest", *extra)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
