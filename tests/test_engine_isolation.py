"""The engine never imports the host: no comfy, folder_paths, server or the pack's nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server")

PROBE = f"""
import importlib, pkgutil, sys
import pixart_delta_core
for info in pkgutil.walk_packages(pixart_delta_core.__path__, "pixart_delta_core."):
    if info.name != "pixart_delta_core.__main__":
        importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HOST_MODULES!r})
print(",".join(loaded))
"""


def test_engine_imports_no_host_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the engine imported host modules: {out.stdout.strip()}"


def test_probe_would_see_a_host_import(tmp_path: Path) -> None:
    """The probe above can fail: a fake host module imported next to the engine is reported."""
    (tmp_path / "folder_paths.py").write_text("")
    probe = "import folder_paths\n" + PROBE
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert out.stdout.strip() == "folder_paths"
