"""Training configuration: one frozen dataclass per concern (read from TOML by ``config_file.py``).

A file has the sections ``[model]``, ``[data]``, ``[train]`` and the trainer's own (``[lcm]``,
``[controlnet]``, ``[lora]``). Unknown sections and keys, wrong types and bad values are refused up
front, by name, before any model is loaded. The defaults are the reference recipes (docs/REFERENCE.md §6).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads when a run starts, not when the command line's parser is built
    import torch


class Method(Enum):
    """What a run trains."""

    BASE = "base"  # fine-tune the whole transformer with the PixArt-α diffusion loss
    LCM = "lcm"  # distil a latent consistency model from the transformer (PixArt-δ)
    CONTROLNET = "controlnet"  # train a ControlNet-Transformer on the frozen transformer
    LORA = "lora"  # train a PEFT LoRA on the transformer (LCM-LoRA with ``lora.lcm``)
    AUTOENCODER = "autoencoder"  # train a TAESD-architecture autoencoder on the data set's pictures

    @property
    def caption_dropout(self) -> float:
        """The recipe's caption dropout (docs/REFERENCE.md §6): 0.5 for the ControlNet (PixArt-δ), 0.1 otherwise
        (PixArt-α's ``class_dropout_prob``; LCM distillation trains every caption whatever it says)."""
        return 0.5 if self is Method.CONTROLNET else 0.1


class MixedPrecision(Enum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype frozen models (the LCM teacher) are held in: the reference casts them to the compute dtype."""
        from ..devices import parse_dtype

        return parse_dtype("fp32" if self is MixedPrecision.NO else self.value)


class LrSchedule(Enum):
    """The learning rate after warm-up."""

    CONSTANT = "constant"  # the reference's
    COSINE = "cosine"  # down to 0 at the last step along a half cosine: short runs end better converged


class LossWeighting(Enum):
    """How much each sample's noise-prediction error counts in the diffusion loss (base, ControlNet, LoRA)."""

    UNIFORM = "uniform"  # the reference's: the plain epsilon MSE at every timestep
    # P2 (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models", eq. 8, k = 1): the epsilon
    # MSE x 1 / (1 + SNR_t)^p2_gamma, divided by that weight's mean over the 1000 timesteps (so the loss keeps
    # its scale beside the variational-bound term). Under the plain MSE the low-noise timesteps, where only fine
    # detail is left to learn, carry most of the gradient, and the noisy ones, where the caption decides the
    # layout and colours, almost none (their squared epsilon error is their squared x0 error x SNR_t); P2 takes
    # weight off the former (t = 50: 0.03, t >= 500: about 1, before the division).
    P2 = "p2"


class EmbedderInit(Enum):
    """How a new transformer's timestep, caption and micro-condition MLPs start (``initialize_weights_``)."""

    REFERENCE = "reference"
    XAVIER = "xavier"


class Optimizer(Enum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"  # bitsandbytes' 8-bit AdamW


class ControlExtractor(Enum):
    """Where control images come from: given with the data, or made from the image."""

    GIVEN = "given"
    CANNY = "canny"
    SOFT_EDGE = "soft_edge"


class LcmLoss(Enum):
    HUBER = "huber"  # pseudo-Huber, sqrt(d^2 + c^2) - c
    L2 = "l2"


@dataclass(frozen=True)
class ModelSection:
    """The model files: the transformer to start from (teacher, base), T5 and its tokenizer, the VAE.

    ``base`` training without a transformer starts a new one shaped by ``[architecture]``; ``autoencoder``
    training starts a new autoencoder, or continues the TAESD file ``vae``.
    """

    transformer: Path | None = None
    t5: Path | None = None
    vae: Path | None = None
    tokenizer: Path | None = None
    controlnet: Path | None = None  # a ControlNet to continue training (default: fresh copies of the base)


@dataclass(frozen=True)
class DataSection:
    """The dataset and its feature cache."""

    path: Path  # a folder of images with same-name .txt captions, or a JSONL file
    cache: Path | None = None  # where the T5/VAE features are written once and reused (all but autoencoder)
    resolution: int | None = None  # training resolution in px (default: the transformer's)
    multi_scale: bool = True  # aspect-ratio bins; False: every image centre-cropped to a square
    control: ControlExtractor | None = None  # ControlNet only: given, canny or soft_edge
    shard_size: int = 256  # records per cache shard

    def __post_init__(self) -> None:
        _check(self.resolution is None or self.resolution > 0, "data.resolution", "a positive number", self.resolution)
        _check(self.shard_size > 0, "data.shard_size", "a positive number", self.shard_size)


@dataclass(frozen=True)
class TrainSection:
    """The loop: steps, batch, optimizer, precision, logging and checkpoints."""

    output: Path
    steps: int = 1000
    stop_at: int | None = None  # end the run after this step, the lr schedule still laid out over steps; None: steps
    batch_size: int = 1  # the global batch of one optimizer micro-step, over all processes
    gradient_accumulation: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    loss_weighting: LossWeighting = LossWeighting.UNIFORM
    p2_gamma: float | None = None  # the exponent of the P2 weighting (the paper's 1 or 0.5); None: 1
    max_grad_norm: float = 1.0  # 0 turns clipping off
    optimizer: Optimizer = Optimizer.ADAMW
    mixed_precision: MixedPrecision = MixedPrecision.NO
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard over GPU processes with FSDP (base, controlnet) instead of DDP: training/sharding.py
    seed: int = 0
    caption_dropout: float | None = None  # chance a caption trains as the null caption; None: Method.caption_dropout
    checkpoint_every: int = 500
    log_every: int = 1
    validate_every: int = 0  # 0: no validation images
    validation_prompts: tuple[str, ...] = ()
    validation_seed: int = 0
    cpu: bool = False  # run on the CPU even where a GPU is present

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every", "log_every"):
            _check(getattr(self, name) > 0, f"train.{name}", "a positive number", getattr(self, name))
        for name in ("warmup_steps", "validate_every"):
            _check(getattr(self, name) >= 0, f"train.{name}", "zero or more", getattr(self, name))
        _check(
            not self.validate_every or bool(self.validation_prompts),
            "train.validation_prompts",
            "at least one prompt when train.validate_every is set",
            self.validation_prompts,
        )
        stop, steps = self.stop_at, self.steps
        _check(stop is None or 1 <= stop <= steps, "train.stop_at", f"between 1 and train.steps ({steps})", stop)
        _check(self.learning_rate > 0, "train.learning_rate", "a positive number", self.learning_rate)
        _check(self.weight_decay >= 0, "train.weight_decay", "zero or more", self.weight_decay)
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", "zero or more", self.max_grad_norm)
        gamma = self.p2_gamma
        _check(gamma is None or 0 < gamma <= 10, "train.p2_gamma", "a number in (0, 10]", gamma)
        dropout = self.caption_dropout
        _check(dropout is None or 0 <= dropout < 1, "train.caption_dropout", "in [0, 1)", dropout)

    @property
    def last_step(self) -> int:
        """The step the run ends after: ``stop_at``, or ``steps``."""
        return self.steps if self.stop_at is None else self.stop_at


@dataclass(frozen=True)
class LcmSection:
    """LCM distillation (PixArt-δ §3, docs/REFERENCE.md §6): DDIM solver, fixed guidance, EMA target."""

    guidance: float = 4.5  # w in cond + w (cond - uncond), uncond = the learned null caption
    ema_decay: float = 0.95
    loss: LcmLoss = LcmLoss.HUBER
    huber_c: float = 0.001
    ddim_steps: int = 50  # of the 1000 training timesteps (skip 20)

    def __post_init__(self) -> None:
        _check(self.guidance >= 0, "lcm.guidance", "zero or more", self.guidance)
        _check(0 <= self.ema_decay < 1, "lcm.ema_decay", "in [0, 1)", self.ema_decay)
        _check(self.huber_c > 0, "lcm.huber_c", "a positive number", self.huber_c)
        _check(0 < self.ddim_steps <= 1000 and 1000 % self.ddim_steps == 0, "lcm.ddim_steps", "a divisor of 1000",
               self.ddim_steps)  # fmt: skip


@dataclass(frozen=True)
class ControlNetSection:
    """ControlNet-Transformer training (PixArt-δ §4): N copies of the first base blocks."""

    copies: int = 13

    def __post_init__(self) -> None:
        _check(self.copies > 0, "controlnet.copies", "a positive number", self.copies)


LORA_TARGETS = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                "mlp.fc1", "mlp.fc2", "t_block.1")  # fmt: skip


@dataclass(frozen=True)
class LoraSection:
    """PEFT LoRA on the transformer's linear layers; ``lcm``: LCM-LoRA, distilled into the adapter."""

    rank: int = 32
    alpha: float = 32.0
    targets: tuple[str, ...] = LORA_TARGETS  # module names (suffixes) in the reference layout
    lcm: bool = False

    def __post_init__(self) -> None:
        _check(self.rank > 0, "lora.rank", "a positive number", self.rank)
        _check(self.alpha > 0, "lora.alpha", "a positive number", self.alpha)
        _check(bool(self.targets), "lora.targets", "at least one module name", self.targets)


@dataclass(frozen=True)
class ArchitectureSection:
    """A new transformer's shape (``base`` training without ``model.transformer``), initialised as the reference
    initialises PixArt (``models/initialization.py``). The caption width is T5's, the latent size the data's.
    """

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    caption_length: int = 120
    micro_conditions: bool = False
    # "reference": the timestep, caption and micro-condition MLPs start N(0, 0.02^2), as PixArt's; "xavier":
    # like every other linear layer, so a short run learns the timestep and the caption sooner.
    embedder_init: EmbedderInit = EmbedderInit.REFERENCE

    def __post_init__(self) -> None:
        for name in ("depth", "hidden_size", "num_heads", "patch_size", "caption_length"):
            _check(getattr(self, name) > 0, f"architecture.{name}", "a positive number", getattr(self, name))
        _check(self.hidden_size % self.num_heads == 0, "architecture.hidden_size", "a multiple of num_heads",
               self.hidden_size)  # fmt: skip
        _check(self.mlp_ratio > 0, "architecture.mlp_ratio", "a positive number", self.mlp_ratio)


@dataclass(frozen=True)
class AutoencoderSection:
    """Autoencoder training (``training/autoencoder.py``): crops, latent noise, the latent scaling it serves."""

    crop_size: int = 32  # px, a multiple of 8
    latent_noise: float = 0.1  # std of the Gaussian noise added to the latents before decoding
    scaling_factor: float = 0.18215  # the transformer family's (PixArt-α/δ); scaled latents get unit std
    train_encoder: bool = True  # False: only the decoder learns (from model.vae), so its latent space stays
    # The standard deviation of the scaled latents over the data set; None: 1, as the family's VAE gives (and a
    # decoder run keeps its file's scale and shift). Larger latents keep a picture's layout above the noise up
    # to later timesteps: at 128 px (16 x 16 latents) PixArt's schedule buries flat shapes by t = 500 at unit
    # spread. This is the input scaling of Chen 2023 ("On the Importance of Noise Scheduling for Diffusion
    # Models", §2), without its normalisation of x_t: PixArt's samplers feed x_t as it is. That paper scales
    # large pictures down; scaling up for small ones is the same idea the other way.
    latent_std: float | None = None

    def __post_init__(self) -> None:
        _check(self.crop_size > 0 and self.crop_size % 8 == 0, "autoencoder.crop_size", "a positive multiple of 8",
               self.crop_size)  # fmt: skip
        _check(self.latent_noise >= 0, "autoencoder.latent_noise", "zero or more", self.latent_noise)
        _check(self.scaling_factor > 0, "autoencoder.scaling_factor", "a positive number", self.scaling_factor)
        spread = self.latent_std
        _check(spread is None or 0 < spread < 1000, "autoencoder.latent_std", "a number in (0, 1000)", spread)


@dataclass(frozen=True)
class TrainingConfig:
    """A whole run: what to train and everything it needs."""

    method: Method
    model: ModelSection
    data: DataSection
    train: TrainSection
    lcm: LcmSection = field(default_factory=LcmSection)
    controlnet: ControlNetSection = field(default_factory=ControlNetSection)
    lora: LoraSection = field(default_factory=LoraSection)
    architecture: ArchitectureSection = field(default_factory=ArchitectureSection)
    autoencoder: AutoencoderSection = field(default_factory=AutoencoderSection)

    def __post_init__(self) -> None:
        if self.train.caption_dropout is None:  # the method's recipe, so that to_toml prints what the run uses
            object.__setattr__(self, "train", replace(self.train, caption_dropout=self.method.caption_dropout))
        if self.train.fsdp and self.method not in (Method.BASE, Method.CONTROLNET):
            raise InputError(
                f"train.fsdp shards base and controlnet training only; {self.method.value} training runs on DDP "
                f"(LCM updates an EMA copy of the whole student every step, LoRA's adapters are small, the autoencoder "
                f"has no transformer blocks): set train.fsdp = false"
            )
        distilled = self.method is Method.LCM or (self.method is Method.LORA and self.lora.lcm)
        own_loss = "autoencoder training" if self.method is Method.AUTOENCODER else None
        own_loss = "LCM distillation" if distilled else own_loss
        if self.train.p2_gamma is not None and self.train.loss_weighting is not LossWeighting.P2:
            raise InputError('train.p2_gamma shapes train.loss_weighting = "p2" only: drop it, or set that weighting')
        if own_loss and self.train.loss_weighting is not LossWeighting.UNIFORM:
            raise InputError(
                f"train.loss_weighting weighs the diffusion loss (base, controlnet and lora training); {own_loss} has "
                f"a loss of its own: drop it"
            )
        if self.method is Method.CONTROLNET and self.data.control is None:
            raise InputError("controlnet training needs data.control: 'given', 'canny' or 'soft_edge'")
        if self.method is not Method.AUTOENCODER and self.autoencoder != AutoencoderSection():
            raise InputError(
                f"[autoencoder] settings are for autoencoder training; this run trains {self.method.value}: drop "
                "them (a transformer's latents come from model.vae)"
            )
        files = {name: getattr(self.model, name) for name in ("transformer", "t5", "vae")}
        if self.method is Method.AUTOENCODER:
            given = [f"model.{name}" for name in ("transformer", "t5") if files[name] is not None]
            if given:
                raise InputError(f"autoencoder training reads no transformer or T5 files: drop {given}")
            if not self.autoencoder.train_encoder and files["vae"] is None:
                raise InputError(
                    "autoencoder.train_encoder = false trains the decoder of an existing autoencoder: set model.vae "
                    "to its TAESD file"
                )
            if self.train.validate_every:
                raise InputError("autoencoder training makes no validation images: set train.validate_every = 0")
            self._check_controlnet_settings()
            if self.data.cache is not None:
                log.warning("data.cache is ignored: autoencoder training reads the pictures, not cached features")
            return
        if self.data.cache is None:
            raise InputError(f"{self.method.value} training needs data.cache: a folder for the T5 and VAE features")
        needed = ("t5", "vae") if self.method is Method.BASE else ("transformer", "t5", "vae")
        missing = [f"model.{name}" for name in needed if files[name] is None]
        if missing:
            raise InputError(f"{self.method.value} training needs {', '.join(missing)}")
        self._check_controlnet_settings()

    def _check_controlnet_settings(self) -> None:
        """Refuse the ControlNet's own settings in another method's run (they would be ignored)."""
        for name, value in (("data.control", self.data.control), ("model.controlnet", self.model.controlnet)):
            if self.method is not Method.CONTROLNET and value is not None:
                raise InputError(f"{name} is for controlnet training only; {self.method.value} training: drop it")

    def to_toml(self) -> str:
        """The full configuration, defaults included, as TOML (printed at start, saved beside checkpoints);
        ``[architecture]`` only where it applies (a new transformer), as ``config_from_dict`` refuses it elsewhere."""
        lines = [f'method = "{self.method.value}"']
        new_transformer = self.method is Method.BASE and self.model.transformer is None
        for section in SECTIONS if new_transformer else [s for s in SECTIONS if s != "architecture"]:
            lines += ["", f"[{section}]", *section_lines(getattr(self, section))]
        return "\n".join(lines) + "\n"


def section_lines(section: Any) -> list[str]:
    """One section's settings as TOML lines, ``key = value`` (settings left at None are not written)."""
    return [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(section).items() if v is not None]


SECTIONS = ("model", "data", "train", "lcm", "controlnet", "lora", "architecture", "autoencoder")


def _check(ok: bool, name: str, expected: str, found: Any) -> None:
    if not ok:
        raise InputError(f"{name} must be {expected}, found {found!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path | str):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
