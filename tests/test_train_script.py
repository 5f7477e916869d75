"""scripts/embedded_model/train.sh, the embedded model's recipe, run again after an interruption: what is made is
kept, a run with a checkpoint goes on with --resume (the trainer skips a finished one), one without starts; and
ship.py --as-shipped, which rounds the checkpoints some runs started from as the pack's fp16 copies read back.
No training runs here: a stand-in interpreter records the commands and passes ``-c`` to the real one."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.helpers import ROOT

SCRIPTS = ROOT / "scripts" / "embedded_model"
RUNS = 17  # train commands in train.sh
SCENES = [
    "a large red star in the center, on a gray background",
    "a small blue star on the left, on a white background",
    "a large yellow star at the top, on a black background",
    "a small purple circle at the bottom, on a gray background",
    "a large green square on the right, on a white background",
]
STAND_IN = """#!/usr/bin/env bash
if [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi
echo "$*" >> "$LOG"
if [ "$3" = world ]; then mkdir -p "$5"; cp "$SCENES" "$5/data.jsonl"; fi
"""


def test_train_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPTS / "train.sh")], check=True)


def test_train_sh_finds_checkpoints_where_the_trainer_does() -> None:
    from pixart_delta_core.checkpoints.files import STEP_FILE
    from pixart_delta_core.training.loop import CHECKPOINTS

    assert f'"{CHECKPOINTS}/step-*/{STEP_FILE}"' in (SCRIPTS / "train.sh").read_text()


def _tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A checkout's layout for train.sh (its script and configs) and the stand-in interpreter's environment."""
    (tmp_path / "scripts" / "embedded_model").mkdir(parents=True)
    for file in [SCRIPTS / "train.sh", *SCRIPTS.glob("*.toml")]:
        shutil.copy(file, tmp_path / "scripts" / "embedded_model" / file.name)
    scenes = tmp_path / "scenes.jsonl"
    scenes.write_text("".join(f'{{"image": "{i:06d}.png", "caption": "{c}"}}\n' for i, c in enumerate(SCENES)))
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(python),
        "REAL_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "LOG": str(tmp_path / "commands.log"),
        "SCENES": str(scenes),
    }
    return tmp_path, env


def _run(root: Path, env: dict[str, str]) -> tuple[list[str], str]:
    log = Path(env["LOG"])
    log.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", "scripts/embedded_model/train.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().splitlines(), done.stdout


def test_a_rerun_keeps_what_is_made_and_resumes_each_run_that_has_a_checkpoint(tmp_path: Path) -> None:
    root, env = _tree(tmp_path)
    out = root / "outputs" / "embedded"
    (out / "world").mkdir(parents=True)
    (out / "world" / "000000.png").write_bytes(b"")  # an interrupted world: scenes, no data.jsonl
    for t5 in ("t5", "t5-windowed"):
        (out / t5).mkdir()
    for run, step, complete in (("autoencoder", 2400, True), ("decoder", 350, True), ("decoder-stars", 100, False)):
        folder = out / run / "checkpoints" / f"step-{step:07d}"
        folder.mkdir(parents=True)
        if complete:  # written last: a checkpoint folder without it is incomplete
            (folder / "step.json").write_text(f'{{"step": {step}, "weights": "autoencoder.safetensors"}}')
    (out / "cache-windowed").mkdir()  # made from the fp32 autoencoder: removed before the runs on the fp16 copies

    commands, printed = _run(root, env)
    trains = [c.removeprefix("-m pixart_delta_core train ") for c in commands if " train " in c]
    assert len(trains) == RUNS
    assert "autoencoder --config scripts/embedded_model/autoencoder.toml --resume" in trains  # finished: it skips
    assert "autoencoder --config scripts/embedded_model/decoder.toml --resume" in trains  # interrupted: goes on
    assert "autoencoder --config scripts/embedded_model/spread.toml" in trains  # not begun
    assert "autoencoder --config scripts/embedded_model/decoder-stars.toml" in trains  # no complete checkpoint
    assert sum(t.endswith("--resume") for t in trains) == 2
    assert commands.count(f"-m pixart_delta_core world --out {out.relative_to(root)}/world-part --count 8000 "
                          f"--first-seed 0") == 1  # fmt: skip
    assert sorted(p.name for p in (out / "world").iterdir()) == [
        "control.jsonl", "data.jsonl", "decoder-gray.jsonl", "decoder-purple.jsonl", "decoder-stars.jsonl"
    ]  # fmt: skip
    assert not (out / "world-part").exists()
    stars = (out / "world" / "decoder-stars.jsonl").read_text().splitlines()
    assert len(stars) == len(SCENES) + 2 * 2  # the two stars on white or gray twice more
    rounded = [c for c in commands if "--as-shipped" in c]
    assert len(rounded) == 1 and "teacher-windowed-more/checkpoints/step-0004000/transformer.safetensors" in rounded[0]
    assert not (out / "cache-windowed").exists()
    assert commands.index(rounded[0]) == commands.index("-m pixart_delta_core train controlnet --config "
                                                        "scripts/embedded_model/controlnet.toml") + 1  # fmt: skip
    assert commands[-1].startswith("scripts/embedded_model/ship.py outputs/embedded/teacher-windowed-long/")
    assert "(its run has a checkpoint: --resume)" in printed

    (out / "cache-windowed").mkdir()  # built anew from the rounded autoencoder: kept from now on
    (out / "world" / "decoder-gray.jsonl").write_text("kept\n")
    commands, printed = _run(root, env)
    assert not any("--as-shipped" in c or " world " in c for c in commands)
    assert (out / "cache-windowed").is_dir() and (out / "world" / "decoder-gray.jsonl").read_text() == "kept\n"
    assert f"{out.relative_to(root)}/world is there already" in printed
    assert f"{out.relative_to(root)}/world/decoder-gray.jsonl is there already" in printed
    assert len([c for c in commands if " train " in c]) == RUNS


def _ship():
    spec = importlib.util.spec_from_file_location("ship", SCRIPTS / "ship.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_as_shipped_rounds_a_checkpoint_as_its_fp16_copy_reads_back_and_again_changes_nothing(tmp_path: Path) -> None:
    ship = _ship()
    weights = {
        "w": torch.randn(64, 64) * 3,
        "vae_scale": torch.tensor(0.123456789),  # a constant: shipped in fp32
        "count": torch.arange(4),
    }
    path = tmp_path / "checkpoint.safetensors"
    save_file(weights, str(path), metadata={"num_heads": "3"})
    ship.half(path, tmp_path / "shipped.safetensors")
    ship.as_shipped(path)
    rounded, shipped = load_file(str(path)), load_file(str(tmp_path / "shipped.safetensors"))
    assert rounded["w"].dtype == torch.float32 and not torch.equal(rounded["w"], weights["w"])
    for name in weights:
        assert torch.equal(rounded[name], shipped[name].to(weights[name].dtype))
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"num_heads": "3"}
    once = path.read_bytes()
    ship.as_shipped(path)
    assert path.read_bytes() == once
    assert not path.with_name(path.name + ".part").exists()
