"""The ``train`` subcommand: ``python -m pixart_delta_core train [{base,lcm,controlnet,lora}] --config FILE``.

Building the parser imports nothing heavy (accelerate, peft, diffusers, transformers load when the
command runs). Under ``accelerate launch -m pixart_delta_core train ...`` every process runs it.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_types import nonempty
from .config import Method

if TYPE_CHECKING:
    from .config import TrainSection
    from .config_file import Named


def add_train_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, named: Named | None = None
) -> None:
    """Add ``train`` to ``sub``. ``named``: what makes a config's ``[model]`` value of an embedded model's name its
    file (``demo.embedded_files.config_model``: demo sits above training, so the caller hands it down)."""
    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a model from a TOML config (base fine-tune, LCM distillation, ControlNet, LoRA, autoencoder)",
        description="Train with the reference recipes; runs on many processes or GPUs under `accelerate launch`. "
        "Checks the config, prints it whole (the file's settings and every default), then trains with a progress bar, "
        "writing resumable checkpoints to train.output/checkpoints/step-NNNNNNN/ every train.checkpoint_every "
        "steps. The configs the embedded model was trained with are in the pack's scripts/embedded_model/.",
    )
    train.add_argument(
        "method",
        nargs="?",
        choices=[m.value for m in Method],
        help="what to train (overrides the file's method; without it, the file's method)",
    )
    train.add_argument(
        "--config",
        type=nonempty("a TOML file", Path),
        required=True,
        help="TOML file: [model] (paths from the file's folder, or the embedded models' names such as "
        "shapes-teacher), [data], [train], [lcm]...",
    )
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output")
    train.set_defaults(run=partial(cmd_train, named=named))


def cmd_train(args: argparse.Namespace, named: Named | None = None) -> int:
    from .config_file import load_config
    from .loop import train

    config = load_config(args.config, args.method, named)
    result = train(config, resume=args.resume, on_checked=lambda: print(config.to_toml(), flush=True))
    from accelerate import PartialState

    if PartialState().is_main_process:  # under accelerate launch, every process ran the command
        print(f"{_trained(result.step, len(result.losses), config.train)}; weights: {result.weights}")
    return 0


def _trained(step: int, ran: int, t: TrainSection) -> str:
    """What a run did, for its last line: it ended at ``step`` of ``train.steps`` (or at ``train.stop_at``) having
    run ``ran`` steps."""
    of = f"{t.steps}" if t.stop_at is None else f"{t.steps} (train.stop_at = {t.stop_at})"
    if ran == 0:  # resumed from its last checkpoint
        more = "raise train.steps" if step >= t.steps else "raise or drop train.stop_at"
        return f"already at step {step} of {of}: nothing was trained ({more} to train on)"
    if ran == step:
        return f"trained {step} steps"
    return f"trained {ran} steps, resumed at step {step - ran}, now at step {step} of {of}"
