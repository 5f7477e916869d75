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
import re
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".pixart-delta-installed"


def run(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in args], cwd=cwd, env=env, check=True)


# Runs the pack as ``python -m pixart_delta_core`` does, from the folder given first (this checkout's), whatever the
# current folder holds: -m would put the current folder first on sys.path, so a pixart_delta_core/ there (another copy)
# would run instead, and -P, which leaves it out, needs Python 3.11 (the pack supports 3.10).
LAUNCH = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('pixart_delta_core', run_name='__main__', alter_sys=True)"
)


def run_demo(extra: list[str]) -> None:
    """The demo in the folder this script was run from, so that the paths given to it and those it prints are the
    user's; its grid goes to this checkout's outputs/ unless an --out of the user's (the last one wins) says
    otherwise, and it runs this checkout's pack (``LAUNCH``) as it does from the checkout."""
    grid = ROOT / "outputs" / "demo.png"
    run(PYTHON, "-c", LAUNCH, ROOT, "demo", "--out", grid, *extra, cwd=Path.cwd())


def step(what: str, how_long: str, *args: str | Path) -> None:
    """Run one setup step, saying first what it does and roughly how long it takes, then how long it took."""
    print(f"{what} ({how_long})...", flush=True)
    started = time.perf_counter()
    run(*args)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)


def dependencies(key: str = "dependencies") -> str:
    """The package names pyproject.toml lists under ``key`` (the dependencies, or an extra), for the setup message."""
    listed = re.search(rf"^{key} = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    return ", ".join(re.findall(r'"([A-Za-z0-9_.\-]+)', listed.group(1))) if listed else "see pyproject.toml"


def ensure_environment() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    print(f"First-time setup (again when pyproject.toml changes): everything goes into {VENV}.", flush=True)
    if not PYTHON.exists():
        print(f"creating the virtual environment {VENV} (a few seconds)", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    has_torch = subprocess.run([str(PYTHON), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        torch = os.environ.get("PIXART_DELTA_TORCH", "torch==2.13.0")
        how_long = "a download of about 1 GB for a CPU build, several GB with CUDA: often 2 to 10 minutes"
        step(f"installing {torch}", how_long, PYTHON, "-m", "pip", "install", "-q", torch)
    how_long = "a few hundred MB: usually 1 to 3 minutes"
    what = f"installing this pack with {dependencies()}, and {dependencies('test')} for the tests"
    step(what, how_long, PYTHON, "-m", "pip", "install", "-q", "-e", ".[test]")
    STAMP.write_text(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        if len(sys.argv) >= 2:  # a typo such as 'demos': say which word was not understood
            print(f"error: unknown command {sys.argv[1]!r} (expected demo or test)", file=sys.stderr)
        return 2
    ensure_environment()
    extra = sys.argv[2:]
    if sys.argv[1] == "demo":
        run_demo(extra)
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
