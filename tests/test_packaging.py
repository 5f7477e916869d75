"""What ComfyUI-Manager and the Comfy registry read: pyproject.toml and requirements.txt."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def test_pyproject_has_the_registry_fields() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = config["project"], config["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] and project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]


def test_requirements_never_install_torch_and_match_the_project() -> None:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    names = {re.split(r"[<>=!~ ;\[]", line)[0].lower() for line in requirements}
    assert not names & {"torch", "torchvision", "torchaudio"}  # ComfyUI's own torch is used as it is
    assert all(not re.search(r"==", line) for line in requirements)  # loose pins only
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(requirements) == {d for d in dependencies if not d.startswith("torch")}
