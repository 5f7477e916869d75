"""``pip install .`` ships every engine subpackage: what setuptools finds is every folder that holds code.

Checked by hand as well: a non-editable install into a fresh virtual environment ran
``python -m pixart_delta_core --help`` and ``demo``.
"""

from __future__ import annotations

import pytest
from setuptools import find_packages

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def test_setuptools_finds_every_engine_subpackage() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(ROOT), include=find["include"]))
    engine = ROOT / "pixart_delta_core"
    with_code = {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in [engine, *engine.rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }
    assert with_code == found, f"folders with code that are not packages: {sorted(with_code - found)}"
    assert {"pixart_delta_core.checkpoints", "pixart_delta_core.text", "pixart_delta_core.pipeline"} <= found


def test_the_embedded_model_ships_with_the_engine() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = ROOT / "pixart_delta_core"
    shipped = {p for pattern in data["pixart_delta_core"] for p in folder.glob(pattern) if p.is_file()}
    files = {p for p in (folder / "embedded_model").rglob("*") if p.is_file()}
    assert files and files == shipped
    assert {"MODEL_CARD.md", "shapes-lcm.safetensors", "tokenizer.json"} <= {p.name for p in files}
