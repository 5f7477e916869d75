"""The training loop, driven by Hugging Face accelerate, for every trainer.

accelerate runs it on one process or many (DDP by default; ``accelerate launch`` chooses), with
mixed precision and gradient accumulation. ``train.batch_size`` is the global batch: each process
trains its share of every batch, and every sample's random numbers come from (seed, step, index)
(``draws.py``), so the result does not depend on the number of processes, and a resumed run repeats
what an uninterrupted one would have done. Checkpoints hold the weights in the layouts the engine's
loaders read plus accelerate's state (model, optimizer, scheduler, RNG) and the trainer's own (EMA).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoints.files import STEP_FILE  # written last: a checkpoint folder without it is incomplete
from ..errors import InputError, PixArtDeltaError
from ..models.initialization import initialize_weights_
from ..models.layers import set_gradient_checkpointing
from ..models.transformer import PixArtTransformer, inspect_transformer, load_transformer
from ..models.transformer_config import TransformerConfig, default_interpolation, sample_size_for, vae_defaults_for
from ..text.embedding import TextEmbedding
from ..vae.vae_config import SD_VAE
from .cache import FeatureCache, build_cache
from .checks import (
    check_against_base,
    check_batch_size,
    check_model_files,
    check_model_kinds,
    check_output,
    check_resolution,
    check_resumed_config,
)
from .config import EmbedderInit, LrSchedule, Method, MixedPrecision, Optimizer, TrainingConfig, TrainSection
from .data import BatchOrder, Record, check_images, read_records
from .draws import draw
from .sharding import fsdp_plugin, report_sharding
from .trainers import ControlNetTrainer, Trainer, timestep_weights
from .validation import validation_captions, validation_grid

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"  # the TensorBoard run's folder under train.output
TRAINER_STATE = "trainer.safetensors"


@dataclass(frozen=True)
class TrainResult:
    """Where a run left its files, and the loss of each optimizer step it ran."""

    output: Path
    step: int
    weights: Path
    losses: list[float]


def make_trainer(config: TrainingConfig, transformer: PixArtTransformer, scaling_factor: float) -> Trainer:
    """The strategy of ``config.method`` around ``transformer`` (already on its device)."""
    dropout = config.train.caption_dropout
    weighting = timestep_weights(config.train.loss_weighting, config.train.p2_gamma)
    if config.method is Method.BASE:
        return Trainer(transformer, scaling_factor, dropout, weighting)
    if config.method is Method.LCM:
        from .lcm import LcmTrainer

        return LcmTrainer(transformer, scaling_factor, config.lcm, config.train.mixed_precision.frozen_dtype)
    if config.method is Method.CONTROLNET:
        from ..models.controlnet import ControlNetTransformer, load_controlnet

        if config.model.controlnet is not None:
            controlnet = load_controlnet(config.model.controlnet, transformer.config, device=transformer.device)
            controlnet.requires_grad_(True)  # the loader returns a model for inference
        else:
            controlnet = ControlNetTransformer.from_base(transformer, config.controlnet.copies)
        return ControlNetTrainer(transformer, controlnet, scaling_factor, dropout, weighting)
    from .lora import LoraTrainer

    return LoraTrainer(transformer, scaling_factor, dropout, config.lora, config.lcm, weighting)


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    t = config.train
    options: dict[str, Any] = {"lr": t.learning_rate, "weight_decay": t.weight_decay}
    if t.optimizer is Optimizer.ADAMW_8BIT:
        try:
            import bitsandbytes
        except ImportError as err:
            raise InputError(
                f"train.optimizer = 'adamw8bit' needs bitsandbytes, which cannot be imported: {err}"
            ) from err
        return bitsandbytes.optim.AdamW8bit(parameters, **options)
    return torch.optim.AdamW(parameters, **options)


def lr_factor(t: TrainSection, step: int) -> float:
    """The learning rate at optimizer step ``step`` as a fraction of ``train.learning_rate``."""
    if step < t.warmup_steps:
        return (step + 1) / (t.warmup_steps + 1)
    if t.lr_schedule is LrSchedule.COSINE:
        done = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return 1.0


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint folder under ``output``."""
    done = sorted(p.parent for p in (output / CHECKPOINTS).glob(f"step-*/{STEP_FILE}"))
    return done[-1] if done else None


def train(config: TrainingConfig, resume: bool = False, on_checked: Callable[[], None] | None = None) -> TrainResult:
    """Run ``config`` to ``train.steps`` optimizer steps, or to ``train.stop_at`` (from the latest checkpoint with
    ``resume``); ``on_checked`` is called once the checks pass, before the long work (the command line prints the
    config then).

    Raises ``InputError`` for settings that cannot work (before the feature cache is built and any model is
    loaded where it can: ``checks.py``), ``PixArtDeltaError`` at the first step whose loss is not finite.
    """
    try:
        from accelerate import Accelerator
        from accelerate.utils import is_tensorboard_available
    except ModuleNotFoundError:
        raise InputError(
            "training runs on accelerate, which is not installed: pip install 'pixart-delta[train]'"
        ) from None
    check_output(config)  # before accelerate is given it as its project folder
    t = config.train
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision.value,
        gradient_accumulation_steps=t.gradient_accumulation,
        cpu=t.cpu,
        step_scheduler_with_optimizer=False,
        log_with="tensorboard" if is_tensorboard_available() else None,  # beside the CSV, when installed
        project_dir=str(t.output),
        fsdp_plugin=fsdp_plugin() if t.fsdp else None,
    )
    try:
        return _train(config, resume, accelerator, on_checked or (lambda: None))
    finally:
        # accelerate keeps its precision settings for the whole process; forget them, so that a later run in this
        # process (the Python API, the tests) may ask for other ones. The process group itself is kept.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        if t.fsdp:  # accelerate marked the whole process as FSDP (its ACCELERATE_USE_FSDP): a later run may not be
            os.environ.pop("ACCELERATE_USE_FSDP", None)


def _train(config: TrainingConfig, resume: bool, accelerator: Any, on_checked: Callable[[], None]) -> TrainResult:
    from tqdm import tqdm

    t = config.train
    if t.mixed_precision is MixedPrecision.FP16 and accelerator.device.type == "cpu":
        log.warning("train.mixed_precision = 'fp16' does not apply on the CPU (accelerate autocasts only bf16 there): "
                    "this run computes in fp32; use 'bf16' for mixed precision on the CPU")  # fmt: skip
    if t.fsdp:
        report_sharding(accelerator)
    processes, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % processes:
        raise InputError(
            f"train.batch_size {t.batch_size} (the global batch) must split evenly over {processes} processes"
        )
    checkpoint = latest_checkpoint(t.output)
    if resume and checkpoint is None:
        raise InputError(f"--resume: no complete checkpoint in {t.output / CHECKPOINTS}")
    if not resume and checkpoint is not None:  # starting over would overwrite its checkpoints and log
        raise InputError(
            f"train.output {t.output} already holds a run (its newest checkpoint is {checkpoint.name}): add "
            f"--resume to continue it, or choose another train.output"
        )
    if checkpoint is not None:
        check_resumed_config(config, checkpoint)
        if (done := _step_record(checkpoint)["step"]) >= t.last_step:  # nothing to train: no feature cache, no model
            return TrainResult(t.output, done, _weights_of(checkpoint), [])
    trainer, cache, captions = _setup(config, accelerator, on_checked)
    order = BatchOrder(cache.sizes, t.batch_size, t.seed)
    set_gradient_checkpointing(trainer.module, t.gradient_checkpointing)
    parameters = trainer.trainable_parameters()
    optimizer = make_optimizer(parameters, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, t))
    module, optimizer, scheduler = accelerator.prepare(trainer.module, optimizer, scheduler)
    parameters = trainer.trainable_parameters()  # FSDP replaced them by their shards (DDP keeps them)
    step, weights = 0, t.output
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        trainer.load_state(load_file(str(checkpoint / TRAINER_STATE), device=str(accelerator.device)))
        step = _step_record(checkpoint)["step"]
        weights = _weights_of(checkpoint)
        log.info("resuming from %s at step %d", checkpoint, step)
    if accelerator.is_main_process:
        t.output.mkdir(parents=True, exist_ok=True)
        (t.output / "config.toml").write_text(config.to_toml())
        log.info("training configuration:\n%s", config.to_toml())
    accelerator.init_trackers(TENSORBOARD)  # writes under train.output/tensorboard (main process only)
    per_process = t.batch_size // processes
    csv_log = _CsvLog(t.output / "log.csv", step) if accelerator.is_main_process else None
    bar = tqdm(
        total=t.last_step, initial=step, desc=f"train {config.method.value}", disable=not accelerator.is_main_process
    )
    losses: list[float] = []
    while step < t.last_step:
        started = time.perf_counter()
        total = torch.zeros((), device=accelerator.device)
        for micro in range(t.gradient_accumulation):
            number = step * t.gradient_accumulation + micro
            indices = order.batch(number)[rank * per_process : (rank + 1) * per_process]
            batch = cache.batch(indices).to(accelerator.device)
            draws = draw(t.seed, number, rank * per_process, per_process, batch.latent_shape)
            with accelerator.accumulate(module), accelerator.autocast():
                loss = trainer.loss(module, batch, draws.to(accelerator.device))
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            total += loss.detach() / t.gradient_accumulation
        scheduler.step()
        trainer.after_step()
        step += 1
        value = accelerator.reduce(total, "mean").item()
        if not math.isfinite(value):  # before any checkpoint of the broken weights is written
            raise PixArtDeltaError(
                f"training diverged: the loss is {value} at step {step}; lower train.learning_rate "
                f"({t.learning_rate:g}), or raise train.warmup_steps"
            )
        losses.append(value)
        rate = t.batch_size * t.gradient_accumulation / (time.perf_counter() - started)
        lr = scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.3g}", samples_per_s=f"{rate:.3g}")
        bar.update(1)
        if step % t.log_every == 0:
            accelerator.log({"loss": value, "learning_rate": lr, "samples_per_s": rate}, step=step)
            if csv_log is not None:
                csv_log.write(step, value, lr, rate)
        if step % t.checkpoint_every == 0 or step == t.last_step:
            weights = _save_checkpoint(accelerator, trainer, module, config, step)
        if captions is not None and step % t.validate_every == 0:
            lcm = config.method is Method.LCM or (config.method is Method.LORA and config.lora.lcm)
            grid = validation_grid(trainer, captions, cache, config.model.vae, t.validation_seed, lcm)
            (t.output / "validation").mkdir(exist_ok=True)
            grid.save(t.output / "validation" / f"step-{step:07d}.png")
    bar.close()
    if csv_log is not None:
        csv_log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(t.output, step, weights, losses)


def _setup(
    config: TrainingConfig, accelerator: Any, on_checked: Callable[[], None]
) -> tuple[Any, Any, TextEmbedding | None]:
    """The trainer, its data (feature cache or pictures) and the validation captions (main process only);
    ``on_checked`` between the checks and the long work."""
    t, device = config.train, accelerator.device
    check_model_files(config)
    check_model_kinds(config)
    records = read_records(config.data.path)
    check_batch_size(config, len(records))
    if config.method is Method.AUTOENCODER:
        from .autoencoder import AutoencoderTrainer, PixelData, autoencoder_to_train

        if config.data.resolution is None:
            raise InputError("autoencoder training needs data.resolution (px): there is no transformer to ask")
        model, convention = autoencoder_to_train(config.model.vae, config.autoencoder, t.seed)
        check_images(records)
        on_checked()
        pictures = PixelData(records, config.data.resolution, config.autoencoder.crop_size)
        return AutoencoderTrainer(model.to(device), pictures, config.autoencoder, convention), pictures, None
    if config.model.transformer is None:
        transformer_config = new_transformer_config(config)
    else:
        detected = inspect_transformer(config.model.transformer)
        transformer_config = detected.config
    check_against_base(config, transformer_config)
    on_checked()
    with accelerator.main_process_first():  # the main process builds the cache, the others then read it
        cache = _cache(config, transformer_config, device, records)
    captions = None
    if t.validate_every and accelerator.is_main_process:
        length = transformer_config.caption_length
        captions = validation_captions(config.model, t.validation_prompts, length, cache.folder)
    torch.manual_seed(t.seed)  # initial LoRA weights; DDP then copies the main process's to the others
    if config.model.transformer is None:
        small = config.architecture.embedder_init is EmbedderInit.REFERENCE
        transformer = initialize_weights_(PixArtTransformer(transformer_config, device=device), t.seed, small)
    else:
        transformer = load_transformer(detected, torch.float32, device)
    return make_trainer(config, transformer.requires_grad_(True), cache.scaling_factor), cache, captions


def new_transformer_config(config: TrainingConfig) -> TransformerConfig:
    """The shape of a new transformer: ``[architecture]``, T5's width, the data's resolution."""
    from ..text.t5 import inspect_t5

    if config.data.resolution is None:
        raise InputError("a new transformer (no model.transformer) needs data.resolution (px)")
    a = config.architecture
    check_resolution(config.data.resolution, SD_VAE.downscale, a.patch_size)  # sample_size_for's downscale
    sample_size = sample_size_for(config.data.resolution)
    return TransformerConfig(
        depth=a.depth,
        hidden_size=a.hidden_size,
        num_heads=a.num_heads,
        patch_size=a.patch_size,
        mlp_hidden=round(a.hidden_size * a.mlp_ratio),
        caption_channels=inspect_t5(config.model.t5).config.d_model,
        caption_length=a.caption_length,
        micro_conditions=a.micro_conditions,
        sample_size=sample_size,
        interpolation_scale=default_interpolation(sample_size, a.caption_length),
    )


def _cache(config: TrainingConfig, base: Any, device: torch.device, records: list[Record]) -> FeatureCache:
    data = config.data
    return build_cache(
        config.model,
        data.path,
        data.cache,
        data.resolution or base.resolution,
        base.caption_length,
        data.multi_scale,
        data.control,
        data.shard_size,
        device,
        vae_defaults_for(base),
        records,
    )


def _save_checkpoint(
    accelerator: Any, trainer: Trainer, module: torch.nn.Module, config: TrainingConfig, step: int
) -> Path:
    """Weights in the loaders' layout, accelerate's state, the trainer's state, then the step (last)."""
    folder = config.train.output / CHECKPOINTS / f"step-{step:07d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))  # every process writes its RNG state
    whole = accelerator.get_state_dict(module)  # every process: under FSDP, the shards gather to the main one
    weights = folder
    if accelerator.is_main_process:
        weights = trainer.save(folder, whole)
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.state().items()}
        save_file(state, str(folder / TRAINER_STATE))
        (folder / "config.toml").write_text(config.to_toml())
        (folder / STEP_FILE).write_text(json.dumps({"step": step, "weights": weights.name}))
    accelerator.wait_for_everyone()
    return _weights_of(folder)


def _step_record(checkpoint: Path) -> dict:
    """A complete checkpoint folder's step file: its step and the name of its weights file."""
    return json.loads((checkpoint / STEP_FILE).read_text())


def _weights_of(checkpoint: Path) -> Path:
    """The weights file a complete checkpoint folder holds."""
    return checkpoint / _step_record(checkpoint)["weights"]


class _CsvLog:
    """step, loss, learning rate, samples/s, one row per logged step. A run resumed at ``step`` keeps the rows
    up to it (those after it were logged by the crashed run, and are logged again); a new run starts afresh."""

    def __init__(self, path: Path, step: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if step > 0 and path.is_file():
            with path.open(newline="") as f:
                kept = [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= step]
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerows([["step", "loss", "learning_rate", "samples_per_s"], *kept])
        self.file.flush()

    def write(self, step: int, loss: float, lr: float, rate: float) -> None:
        self.writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{rate:.4g}"])
        self.file.flush()

    def close(self) -> None:
        self.file.close()
