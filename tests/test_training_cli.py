"""The ``train`` subcommand: runs a config file, resumes, and costs the parser no heavy import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pixart_delta_core.cli import main
from pixart_delta_core.training.config_file import config_from_dict
from tests.helpers import ROOT
from tests.test_training_data import run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_parser_imports_no_heavy_library() -> None:
    # The train subparser alone (the generate parser's own imports are another matter).
    code = (
        "import argparse, sys; from pixart_delta_core.training.cli import add_train_parser; "
        "common = argparse.ArgumentParser(add_help=False); common.add_argument('-v', action='store_true'); "
        "parser = argparse.ArgumentParser(); add_train_parser(parser.add_subparsers(), common); "
        "parser.parse_args(['train', 'lcm', '-v', '--config', 'x.toml']); "
        "heavy = {'accelerate', 'peft', 'diffusers', 'transformers', 'bitsandbytes'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_train_command_runs_prints_its_config_and_resumes(tmp_path, capsys) -> None:
    table = run_table(tiny_setup(tmp_path, control=False), tmp_path / "out", batch_size=2, steps=2, checkpoint_every=1)
    (tmp_path / "run.toml").write_text(config_from_dict(table, "lcm").to_toml())
    assert main(["train", "base", "--config", str(tmp_path / "run.toml")]) == 0  # the command's method wins
    printed = capsys.readouterr().out
    assert 'method = "base"' in printed and "trained 2 steps" in printed
    assert (tmp_path / "out" / "checkpoints" / "step-0000002" / "transformer.safetensors").is_file()
    assert main(["train", "base", "--config", str(tmp_path / "run.toml"), "--resume"]) == 0
    printed = capsys.readouterr().out  # nothing left to do after the last checkpoint: its weights are the result
    assert "already at step 2 of 2: nothing was trained (raise train.steps to train on); weights: " in printed
    assert "trained 2 steps" not in printed
    assert printed.rstrip().endswith("transformer.safetensors")
    assert main(["train", "base", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_a_refused_train_command_prints_only_its_error(tmp_path, capsys) -> None:
    table = run_table(tiny_setup(tmp_path, control=False), tmp_path / "out", batch_size=2, steps=2)
    table["model"] = {**table["model"], "transformer": str(tmp_path / "missing.safetensors")}
    (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
    assert main(["train", "base", "--config", str(tmp_path / "run.toml")]) == 1
    printed = capsys.readouterr()
    assert printed.out == "", printed.out[:300]  # not the config: it is printed once the checks pass
    assert "missing.safetensors: no such file or folder" in printed.err


def test_a_resumed_run_says_the_steps_it_ran_and_where_it_stands(tmp_path, capsys) -> None:
    setup = tiny_setup(tmp_path, control=False)
    for steps, said in ((1, "trained 1 steps; "), (3, "trained 2 steps, resumed at step 1, now at step 3 of 3; ")):
        table = run_table(setup, tmp_path / "out", batch_size=2, steps=steps, checkpoint_every=1)
        (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
        assert main(["train", "--config", str(tmp_path / "run.toml"), *(["--resume"] if steps > 1 else [])]) == 0
        assert said in capsys.readouterr().out


def test_resuming_a_finished_run_says_so_before_building_the_cache(tmp_path, capsys) -> None:
    table = run_table(tiny_setup(tmp_path, control=False), tmp_path / "out", batch_size=2, steps=1)
    (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 0
    capsys.readouterr()
    shutil.rmtree(table["data"]["cache"])  # a finished run needs no features: they are not encoded again
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("already at step 1 of 1: nothing was trained"), printed[:300]  # no config: no run
    assert not Path(table["data"]["cache"]).exists()


def test_a_refused_run_leaves_no_cache_folder_behind(tmp_path, capsys) -> None:
    table = run_table(tiny_setup(tmp_path, control=False), tmp_path / "out", batch_size=2, steps=1)
    (Path(table["data"]["path"]) / "1.png").write_bytes(b"not a picture")
    table["data"]["cache"] = str(tmp_path / "caches" / "run")
    (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 1
    assert "1.png" in capsys.readouterr().err
    assert not (tmp_path / "caches").exists() and not (tmp_path / "out").exists()
    shutil.copy(Path(table["data"]["path"]) / "0.png", Path(table["data"]["path"]) / "1.png")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    table["data"]["cache"] = str(taken / "cache")
    (tmp_path / "run.toml").write_text(config_from_dict(table, "base").to_toml())
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 1
    printed = capsys.readouterr()
    assert printed.out == "", printed.out[:300]  # refused before the config is printed, not by mkdir's traceback
    assert (
        printed.err == f"error: data.cache {taken / 'cache'}: expected a folder for the features, but {taken} is a "
        "regular file\n"
    )
