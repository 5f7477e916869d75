"""A training config's ``[model]`` takes the embedded models by name, as ``generate`` does (``by_name``'s rule): an
embedded model's own name is that model (with a warning where the config's folder holds a file of that name), a path
spelling is a path from the config's folder, and another kind's model is refused naming the setting that takes it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pixart_delta_core.cli import main
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.training import loop
from pixart_delta_core.training.checks import check_model_files, check_model_kinds


class Loaded(Exception):
    """Raised where the run would start: its config is read and nothing is trained."""


def config(tmp_path: Path, method: str = "controlnet", **model: str) -> Path:
    lines = [f'method = "{method}"', "[model]", *(f'{key} = "{value}"' for key, value in model.items())]
    lines += ["[data]", 'path = "data"', 'cache = "cache"', *(['control = "canny"'] if method == "controlnet" else [])]
    lines += ["[train]", 'output = "run"']
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def loaded(monkeypatch):
    def train(config, **options):
        raise Loaded(config)

    monkeypatch.setattr(loop, "train", train)

    def run(path: Path):
        with pytest.raises(Loaded) as caught:
            main(["train", "--config", str(path)])
        return caught.value.args[0]

    return run


EMBEDDED = {
    "transformer": "shapes-teacher",
    "t5": "shapes-t5",
    "vae": "shapes-taesd",
    "controlnet": "shapes-controlnet",
}


def test_the_embedded_models_names_are_their_files_and_pass_the_checks(tmp_path: Path, loaded) -> None:
    model = loaded(config(tmp_path, **EMBEDDED)).model
    assert (model.transformer, model.t5) == (embedded_path("shapes-teacher"), embedded_path("shapes-t5"))
    assert (model.vae, model.controlnet) == (embedded_path("shapes-taesd"), embedded_path("shapes-controlnet"))
    config_read = loaded(config(tmp_path, **EMBEDDED))
    check_model_files(config_read)  # was: model.transformer .../shapes-teacher: no such file or folder
    check_model_kinds(config_read)  # the headers: T5 and VAE of their kinds


def test_a_path_spelling_is_a_path_from_the_configs_folder(tmp_path: Path, loaded) -> None:
    model = loaded(config(tmp_path, transformer="./shapes-teacher", t5="shapes-t5", vae="shapes-taesd")).model
    assert model.transformer == tmp_path / "shapes-teacher"
    assert model.t5 == embedded_path("shapes-t5")


def test_a_file_of_the_name_beside_the_config_is_passed_over_with_a_warning(tmp_path: Path, loaded, caplog) -> None:
    (tmp_path / "shapes-t5").mkdir()
    with caplog.at_level(logging.WARNING):
        model = loaded(config(tmp_path, transformer="shapes-teacher", t5="shapes-t5", vae="shapes-taesd")).model
    assert model.t5 == embedded_path("shapes-t5")
    assert "model.t5 shapes-t5 is the pack's embedded T5 text encoder: using it, not the folder" in caplog.text


def test_another_kinds_model_is_refused_naming_the_setting_that_takes_it(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", str(config(tmp_path, transformer="shapes-teacher", t5="shapes-lcm"))]) == 1
    assert capsys.readouterr().err == (
        "error: model.t5 shapes-lcm: shapes-lcm is the pack's embedded transformer, not a T5 text encoder: give it as "
        'model.transformer = "shapes-lcm" (the embedded T5 text encoder: shapes-t5)\n'
    )
