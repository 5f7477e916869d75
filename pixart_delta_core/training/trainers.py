"""Trainers as small strategies over one loop: what is trained, its loss, and how it is saved.

``Trainer`` holds the models of a method; the loop hands ``module`` to accelerate (which may wrap it
for DDP), calls ``loss`` with the wrapped module, ``after_step`` after each optimizer step, and
``save`` to write the weights in the layouts the engine's loaders read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import InputError
from ..models.controlnet import ControlNetTransformer
from ..models.controlnet_config import ControlNetConfig
from ..models.transformer import PixArtTransformer
from ..models.transformer_config import TransformerConfig
from .cache import Batch
from .config import LossWeighting
from .diffusion import diffusion_loss, noise_schedule
from .draws import Draws

TRAIN_TIMESTEPS = 1000


def heads_metadata(config: TransformerConfig | ControlNetConfig) -> dict[str, str]:
    """What detection cannot read from widths that are not multiples of 72 (tiny models)."""
    return {"num_heads": str(config.num_heads)}


def with_null_captions(model: PixArtTransformer, batch: Batch, drop: Tensor) -> Tensor:
    """``batch.caption`` with the samples where ``drop`` is true replaced by the learned null caption."""
    if not drop.any():
        return batch.caption
    if not model.config.null_caption:
        raise InputError("caption dropout needs the learned null caption, which diffusers-layout weights lack")
    null = model.y_embedder.y_embedding[: batch.caption.shape[1]].to(batch.caption)  # [L, C]
    return torch.where(drop.reshape(-1, 1, 1), null[None], batch.caption)


def training_latents(batch: Batch, draws: Draws, scaling_factor: float) -> Tensor:
    """A sample of each record's VAE posterior, scaled as the transformer sees latents [B, 4, h, w]."""
    return (batch.mean + batch.std * draws.latent_noise) * scaling_factor


def timestep_weights(weighting: LossWeighting, p2_gamma: float | None = None) -> Tensor | None:
    """The epsilon MSE's weight at each timestep 0..999 [1000] (None: uniform; see ``LossWeighting``);
    ``p2_gamma`` None: 1."""
    if weighting is LossWeighting.UNIFORM:
        return None
    abar = noise_schedule().alphas_cumprod
    weights = (1 + abar / (1 - abar)) ** -(p2_gamma or 1.0)  # P2 with k = 1: 1 / (k + SNR_t)^gamma
    return (weights / weights.mean()).float()


class Trainer:
    """The base strategy: the whole transformer trained with the PixArt-α diffusion loss."""

    def __init__(
        self,
        transformer: PixArtTransformer,
        scaling_factor: float,
        caption_dropout: float,
        loss_weights: Tensor | None = None,
    ) -> None:
        """``loss_weights``: the epsilon MSE's weight per timestep [1000] (``timestep_weights``); None: 1."""
        self.transformer = transformer
        self.scaling_factor = scaling_factor
        self.caption_dropout = caption_dropout
        self.loss_weights = loss_weights

    @property
    def module(self) -> nn.Module:
        """What the optimizer trains and accelerate prepares."""
        return self.transformer

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def base(self, module: nn.Module) -> PixArtTransformer:
        """The transformer inside the (possibly wrapped) trained module."""
        return self.transformer

    def loss(self, module: nn.Module, batch: Batch, draws: Draws) -> Tensor:
        latents = training_latents(batch, draws, self.scaling_factor)
        t = draws.timesteps(TRAIN_TIMESTEPS)
        x_t = noise_schedule().add_noise(latents, draws.noise, t)
        caption = with_null_captions(self.base(module), batch, draws.dropout < self.caption_dropout)
        output = module(x_t, t, caption, batch.mask, batch.size, *self.extra_inputs(batch))
        weights = None if self.loss_weights is None else self.loss_weights.to(t.device)[t]
        return diffusion_loss(output, latents, x_t, draws.noise, t, weights).mean()

    def extra_inputs(self, batch: Batch) -> tuple[Tensor, ...]:
        return ()

    def after_step(self) -> None:
        """Called after every optimizer step (the LCM target's EMA update)."""

    def state(self) -> dict[str, Tensor]:
        """Training state beyond the module and optimizer (the EMA target), saved with each checkpoint."""
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore what ``state`` returned."""

    def save(self, folder: Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """Write the trained weights in a layout the loaders read; returns the file.

        ``weights``: the whole state dict of ``module`` (accelerate's ``get_state_dict``, which gathers it from
        the shards of an FSDP run); default: read from the models.
        """
        path = folder / "transformer.safetensors"
        model = self.transformer
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.reference_state_dict(weights).items()}
        save_file(tensors, str(path), metadata=heads_metadata(model.config))
        return path

    @property
    def saved_transformer(self) -> PixArtTransformer:
        """The transformer ``save`` writes."""
        return self.transformer


class ControlledTransformer(nn.Module):
    """The frozen base steered by a trainable ControlNet: what ControlNet training runs (and DDP wraps)."""

    def __init__(self, base: PixArtTransformer, controlnet: ControlNetTransformer) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.controlnet = controlnet

    def forward(
        self, x: Tensor, t: Tensor, caption: Tensor, mask: Tensor, size: tuple[int, int], control: Tensor
    ) -> Tensor:
        """``control``: the control image's scaled latent [B, 4, h, w]; returns the base's output."""
        return self.base(x, t, caption, mask, size, self.controlnet.hook(self.base, control))


class ControlNetTrainer(Trainer):
    """ControlNet-Transformer training (PixArt-δ §4): base frozen, only the copies and projections train."""

    def __init__(
        self,
        base: PixArtTransformer,
        controlnet: ControlNetTransformer,
        scaling_factor: float,
        dropout: float,
        loss_weights: Tensor | None = None,
    ) -> None:
        super().__init__(base, scaling_factor, dropout, loss_weights)
        controlnet.config.check_fits(base.config, InputError)
        self.controlled = ControlledTransformer(base, controlnet)

    @property
    def module(self) -> nn.Module:
        return self.controlled

    def extra_inputs(self, batch: Batch) -> tuple[Tensor, ...]:
        if batch.control is None:
            raise InputError("ControlNet training needs control latents: the cache was built without data.control")
        return (batch.control * self.scaling_factor,)

    def save(self, folder: Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        controlnet = self.controlled.controlnet
        path = folder / "controlnet.safetensors"
        if weights is None:
            weights = controlnet.state_dict()
        else:  # the whole ControlledTransformer's: its ControlNet part
            weights = {k.removeprefix("controlnet."): v for k, v in weights.items() if k.startswith("controlnet.")}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        save_file(tensors, str(path), metadata=heads_metadata(controlnet.config))
        return path
