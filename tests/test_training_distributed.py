"""Two processes (accelerate launch on the CPU, gloo) with the same global batch train the same weights as one."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file

from pixart_delta_core.training.config import config_from_dict
from pixart_delta_core.training.loop import train
from tests.helpers import ROOT
from tests.test_training_data import run_table, tiny_setup


def test_two_processes_train_the_weights_of_one(tmp_path) -> None:
    setup = tiny_setup(tmp_path)
    options = {"batch_size": 2, "steps": 3, "checkpoint_every": 3, "learning_rate": 1e-3}
    config = config_from_dict(run_table(setup, tmp_path / "two", **options), "base")
    (tmp_path / "two.toml").write_text(config.to_toml())
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
    ]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*launch, "-m", "pixart_delta_core", "train", "base", "--config", str(tmp_path / "two.toml")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "checkpoints" / "step-0000003"
    assert (two / "random_states_1.pkl").is_file()  # the second process did run
    one = train(config_from_dict(run_table(setup, tmp_path / "one", **options), "base"))
    ours, theirs = load_file(one.weights), load_file(two / "transformer.safetensors")
    # Each process averages the gradient of its own sample and DDP averages the two: the same sum in another
    # order, so equal to fp32 rounding (measured: bit-identical on this tiny model).
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-6)
