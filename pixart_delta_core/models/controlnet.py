"""The ControlNet-Transformer of PixArt-δ (docs/REFERENCE.md §4): trainable copies of the first base blocks.

It never runs the base model: ``hook`` returns the ``control`` argument of ``PixArtTransformer.forward``,
which the base calls once per forward with its tokens after block 0; the residuals it returns are
added before base blocks 1..N.

From a sampler: build ``hook = controlnet.hook(base, vae_latent * scaling_factor, strength)`` once
per generation (it embeds the control once), then at each step pass ``control=hook`` to the base's
forward when the step lies inside the chosen start/end fraction of the schedule, and nothing
otherwise (the plain forward, no ControlNet cost). A CFG batch [uncond; cond] of 2B takes a control
latent of batch 1 or B as it is; both halves see the same control, image i's two passes control i.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints.detection import DetectedCheckpoint
from ..checkpoints.files import folder_config
from ..checkpoints.loading import as_source, load_strict, place_tensor
from ..checkpoints.sources import TensorSource
from ..devices import parse_dtype
from ..errors import InputError
from ..ops import Ops
from ..quant.quantization import Quantization
from .controlnet_config import DEFAULT_COPIES, ControlNetConfig, detect_controlnet
from .layers import Block, BlockContext
from .strengths import MAX_CONTROL_STRENGTH
from .transformer import PixArtTransformer, quantize_blocks_
from .transformer_config import TransformerConfig

log = logging.getLogger(__name__)


def check_control_strength(strength: object) -> float:
    """``strength`` as a float: the factor on the ControlNet's residuals (1.0 = the reference, 0 = none). Raises
    InputError unless it is a real number (not a bool) with |strength| <= ``MAX_CONTROL_STRENGTH``."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
        raise InputError(f"ControlNet strength must be a finite number, found {strength!r}")
    if abs(strength) > MAX_CONTROL_STRENGTH:
        raise InputError(
            f"ControlNet strength must be from {-MAX_CONTROL_STRENGTH:g} to {MAX_CONTROL_STRENGTH:g}, "
            f"found {strength!r}"
        )
    return float(strength)


class ControlBlock(nn.Module):
    """Copy ``index`` of a base block with zero-initialised linear projections (``before_proj``: copy 0 only)."""

    def __init__(self, config: ControlNetConfig, index: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        width = config.hidden_size
        self.copied_block = Block(width, config.num_heads, config.mlp_hidden, ops, **factory)
        if index == 0:
            self.before_proj = _zero_linear(width, ops, **factory)
        self.after_proj = _zero_linear(width, ops, **factory)


def _zero_linear(width: int, ops: type[Ops], **factory: Any) -> nn.Module:
    """A width -> width linear layer that starts at zero (ControlNet's zero convolution, made linear)."""
    layer = ops.Linear(width, width, **factory)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ControlNetTransformer(nn.Module):
    """N trainable copies of base blocks 0..N-1 whose outputs steer base blocks 1..N (PixArt-δ §4)."""

    def __init__(
        self,
        config: ControlNetConfig,
        ops: type[Ops] = Ops,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.controlnet = nn.ModuleList(ControlBlock(config, i, ops, **factory) for i in range(config.copies))

    @classmethod
    def from_base(
        cls, base: PixArtTransformer, copies: int = DEFAULT_COPIES, ops: type[Ops] = Ops
    ) -> ControlNetTransformer:
        """A fresh ControlNet for ``base``: its first ``copies`` blocks copied, all projections zero."""
        model = cls(ControlNetConfig.for_base(base.config, copies), ops=ops, device=base.device, dtype=base.dtype)
        for control, block in zip(model.controlnet, base.blocks, strict=False):
            control.copied_block.load_state_dict(block.state_dict())
        return model

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the modulation table is never quantized)."""
        return self.controlnet[0].copied_block.scale_shift_table.dtype

    @property
    def device(self) -> torch.device:
        return self.controlnet[0].copied_block.scale_shift_table.device

    def forward(self, x0: Tensor, control_tokens: Tensor, ctx: BlockContext, strength: float = 1.0) -> list[Tensor]:
        """Tokens after base block 0 and the embedded control -> residuals for base blocks 1..N."""
        c = x0 + self.controlnet[0].before_proj(control_tokens)  # [B, N, C] input of copy 0
        residuals = []
        for copy in self.controlnet:
            c = copy.copied_block(c, ctx)  # [B, N, C] input of the next copy
            residuals.append(copy.after_proj(c) * strength)  # [B, N, C] added before base block i + 1
        return residuals

    def hook(self, base: PixArtTransformer, control: Tensor, strength: float = 1.0) -> ControlResiduals:
        """The ``control`` argument of ``base``'s forward for one control latent.

        ``control`` is the control image's VAE latent times the VAE scaling factor, [1 or B, 4, H, W],
        at the size of the latent being denoised. It is embedded once here by the base's own patch
        embedder and positions. Each call expands it to the batch it is given (a CFG batch of 2B gets
        the same control in its unconditional and conditional halves) and returns the residuals
        scaled by ``strength`` (1.0 = the reference). Raises InputError for a base it does not fit,
        a dtype/device mismatch or a latent of the wrong shape.
        """
        self.config.check_fits(base.config, InputError)
        check_control_strength(strength)
        if (self.dtype, self.device) != (base.dtype, base.device):
            raise InputError(
                f"the ControlNet is {self.dtype} on {self.device} but the base transformer is {base.dtype} on "
                f"{base.device}: load both in the same dtype on the same device"
            )
        channels = base.config.in_channels
        if control.ndim != 4 or control.shape[1] != channels:
            raise InputError(
                f"a control latent must be [batch, {channels}, height, width], found {list(control.shape)}"
            )
        height, width = control.shape[-2:]
        p = base.config.patch_size
        control_tokens = base.embed_latent(control.to(base.device))  # [b, N, C]
        return ControlResiduals(self, control_tokens, (height // p, width // p), p, strength)


class ControlResiduals:
    """The ``control`` argument of a base's forward: embedded control tokens [count, N, C] and strength.

    Called with the base's tokens [B, N, C] after block 0, it returns the residuals for blocks 1..N.
    ``count`` control latents serve a batch of one image per control, or a CFG batch [uncond; cond]
    of twice that (image i's two passes get control i); one control latent serves any batch.
    """

    def __init__(
        self, net: ControlNetTransformer, tokens: Tensor, grid: tuple[int, int], patch: int, strength: float
    ) -> None:
        self.net, self.tokens, self.grid, self.patch, self.strength = net, tokens, grid, patch, strength

    @property
    def count(self) -> int:
        """How many control latents were given (1, or one per image)."""
        return self.tokens.shape[0]

    def __call__(self, tokens: Tensor, ctx: BlockContext) -> list[Tensor]:
        if ctx.grid != self.grid:
            p = self.patch
            raise InputError(
                f"the control latent is {self.grid[0] * p}x{self.grid[1] * p} but the latent being denoised is "
                f"{ctx.grid[0] * p}x{ctx.grid[1] * p}: encode the control image at the generation size"
            )
        batch, given = tokens.shape[0], self.count
        if given != 1 and batch not in (given, 2 * given):
            raise InputError(
                f"{given} control latents for a batch of {batch}: give one control latent, or one per image"
            )
        return self.net(tokens, self.tokens.repeat(batch // given, 1, 1), ctx, self.strength)


def controlnet_source(checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor]) -> TensorSource:
    """A ControlNet checkpoint as a source (``as_source``): a folder is refused in a ControlNet's terms, its weights
    looked for in it or in a pipeline's ``controlnet/``."""
    return as_source(checkpoint, "ControlNet", "controlnet")


def inspect_controlnet(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    hints: Mapping[str, Any] | None = None,
    base_config: TransformerConfig | None = None,
) -> DetectedCheckpoint[ControlNetConfig]:
    """Detect a ControlNet checkpoint's layout and config without reading its weights."""
    source = controlnet_source(checkpoint)
    return detect_controlnet(source, hints, base_config, folder_config(source))


def load_controlnet(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    base_config: TransformerConfig,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: type[Ops] = Ops,
    hints: Mapping[str, Any] | None = None,
    quantization: Quantization | str = Quantization.NONE,
) -> ControlNetTransformer:
    """Load the ControlNet of any supported layout for a base of ``base_config``, strictly, streaming.

    From a reference full checkpoint only its ControlNet part is read: its base loads through
    ``load_transformer``, or another base that fits (e.g. the LCM transformer) is used instead.
    ``quantization`` as for ``load_transformer``.
    """
    detected = inspect_controlnet(checkpoint, hints, base_config)
    detected.config.check_fits(base_config)
    log.info("loading %s", detected.describe())
    model = ControlNetTransformer(detected.config, ops=ops, device="meta")
    place = quantize_blocks_(model, quantization, device, place_tensor)
    load_strict(model, detected.tensors, parse_dtype(dtype), torch.device(device), place=place)
    return model
