"""``train.stop_at``: a run ends after that step, its learning-rate schedule still laid out over ``train.steps``
(the embedded teacher was stopped at 6,000 of its 7,000 steps); refused outside 1..steps; finished on resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_delta_core.cli import main
from pixart_delta_core.errors import InputError
from pixart_delta_core.training.config_file import config_from_dict, toml_reader
from pixart_delta_core.training.loop import TrainResult, train
from tests.test_training_data import run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("stop_at"), control=False)


def _table(setup: dict, output: Path, **options: object) -> dict:
    return run_table(setup, output, batch_size=2, learning_rate=1e-3, lr_schedule="cosine", **options)


def _train(setup: dict, output: Path, resume: bool = False, **options: object) -> TrainResult:
    return train(config_from_dict(_table(setup, output, **options), "base"), resume=resume)


def _step_2(output: Path, name: str) -> Path:
    """The file ``name`` of the step-2 checkpoint under ``output``."""
    return output / "checkpoints" / "step-0000002" / name


def _last_lr(output: Path) -> float:
    """The learning rate the scheduler saved in the step-2 checkpoint under ``output``: its rate after step 2."""
    return torch.load(_step_2(output, "scheduler.bin"), weights_only=True)["_last_lr"][0]


def test_a_stopped_run_ends_at_stop_at_on_the_schedule_of_its_steps(setup, tmp_path) -> None:
    stopped = _train(setup, tmp_path / "stopped", steps=4, stop_at=2, checkpoint_every=3)
    assert stopped.step == 2 and len(stopped.losses) == 2
    assert [p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()] == ["step-0000002"]  # as at an end
    assert stopped.weights == _step_2(tmp_path / "stopped", "transformer.safetensors")
    whole = _train(setup, tmp_path / "whole", steps=4, checkpoint_every=2)
    _train(setup, tmp_path / "short", steps=2)
    runs = ("stopped", "whole", "short")
    # cosine over 4 steps: half the peak after step 2, where a 2-step run's has reached 0
    assert _last_lr(tmp_path / "stopped") == _last_lr(tmp_path / "whole") == pytest.approx(0.5e-3)
    assert _last_lr(tmp_path / "short") == 0
    assert stopped.losses == whole.losses[:2]
    # the second update ran at step 1's rate of a 4-step schedule: the weights are the whole run's, not the short's
    ours, theirs, short_ones = (load_file(_step_2(tmp_path / run, "transformer.safetensors")) for run in runs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not all(torch.equal(ours[k], short_ones[k]) for k in ours)
    # without stop_at the stopped run resumes to train.steps as if it had not stopped
    resumed = _train(setup, tmp_path / "stopped", resume=True, steps=4)
    assert resumed.step == 4 and resumed.losses == whole.losses[2:]


@pytest.mark.parametrize("stop_at", [0, -1, 5])
def test_stop_at_outside_one_to_steps_is_refused_by_name(setup, tmp_path, stop_at) -> None:
    expected = rf"^train\.stop_at must be between 1 and train\.steps \(4\), found {stop_at}$"
    with pytest.raises(InputError, match=expected):
        config_from_dict(_table(setup, tmp_path, steps=4, stop_at=stop_at), "base")
    with pytest.raises(InputError, match=r"^train\.stop_at must be int, found '2'$"):
        config_from_dict(_table(setup, tmp_path, steps=4, stop_at="2"), "base")


def test_stop_at_round_trips_through_the_saved_config(setup, tmp_path) -> None:
    config = config_from_dict(_table(setup, tmp_path, steps=4, stop_at=2), "base")
    assert "\nstop_at = 2\n" in config.to_toml()
    assert config_from_dict(toml_reader().loads(config.to_toml())) == config
    assert "\nstop_at =" not in config_from_dict(_table(setup, tmp_path, steps=4), "base").to_toml()  # None: unwritten


def test_resuming_a_stopped_run_says_it_is_finished_before_building_the_cache(setup, tmp_path, capsys) -> None:
    table = _table(setup, tmp_path / "out", steps=4, stop_at=1)
    table["data"] = {**table["data"], "cache": str(tmp_path / "cache")}  # its own: deleted below
    (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 0
    assert "trained 1 steps; " in capsys.readouterr().out
    shutil.rmtree(tmp_path / "cache")  # a finished run needs no features: they are not encoded again
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "already at step 1 of 4 (train.stop_at = 1): nothing was trained (raise or drop train.stop_at to train on); "
        "weights: "
    ), printed[:300]  # no config printed: no run
    assert not (tmp_path / "cache").exists()
