"""Importing the pack is light: diffusers, transformers, bitsandbytes, peft and accelerate load on first use.

ComfyUI imports every node pack at start-up (torch is already imported there) and prints how long each
took; every command-line call builds the parser. Each probe runs in a fresh interpreter and reads
``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixart_delta_core.sampling.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("diffusers", "transformers", "bitsandbytes", "peft", "accelerate")

LOAD_PACK = "import torch\nfrom tests.test_pack_entry import load_pack\nload_pack()\n"
BUILD_PARSER = "from pixart_delta_core.cli import build_parser\nbuild_parser()\n"
PUBLIC_API = "import pixart_delta_core\ndir(pixart_delta_core)\n"
HELP = (
    "import runpy, contextlib, io\nsys.argv = ['pixart_delta_core', '--help']\n"
    "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
    "    runpy.run_module('pixart_delta_core', run_name='__main__')\n"
)


def heavy_modules_after(code: str, pythonpath: Path | None = None, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``heavy`` top-level modules loaded once ``code`` has run in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r})))"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize(
    "code", [LOAD_PACK, BUILD_PARSER, PUBLIC_API, HELP], ids=["comfyui-loads-pack", "build-parser", "api", "help"]
)
def test_start_up_imports_nothing_heavy(code: str) -> None:
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("code", [BUILD_PARSER, HELP], ids=["build-parser", "help"])
def test_the_command_lines_parser_does_not_even_import_torch(code: str) -> None:
    """``--help`` and a mistyped command answer at once: torch (seconds to import) loads only for real work."""
    assert heavy_modules_after(code, heavy=("torch",)) == []


def test_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The probe can fail: a module that imports transformers at its top is seen."""
    (tmp_path / "eager_module.py").write_text("import transformers\n")
    assert heavy_modules_after("import eager_module", pythonpath=tmp_path) == ["transformers"]


def test_samplers_name_diffusers_schedulers() -> None:
    """The schedulers are named, not imported, at start-up: every name is a diffusers scheduler class."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    for sampler, spec in SAMPLERS.items():
        assert issubclass(getattr(diffusers, spec.scheduler), SchedulerMixin), sampler
