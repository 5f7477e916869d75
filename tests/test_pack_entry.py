"""The pack's ``__init__.py`` imports the way ComfyUI imports a custom node folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_pack(name: str = "pixart_delta_pack_under_test"):
    """Import the checkout as ComfyUI does: a package named after its folder, from its __init__.py."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pack_exports_what_comfyui_reads() -> None:
    pack = load_pack()
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)
    assert (ROOT / pack.WEB_DIRECTORY).is_dir()
