"""The PixArt-α/δ/Σ diffusion transformer (docs/REFERENCE.md §1), reference key layout."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from ..checkpoints.detection import DetectedCheckpoint
from ..checkpoints.files import folder_config
from ..checkpoints.loading import Place, as_source, load_strict, place_tensor
from ..checkpoints.sources import TensorSource
from ..devices import parse_dtype
from ..errors import InputError
from ..ops import Ops
from ..quant.quantization import Quantization, parse_quantization
from ..quant.streaming import quantize_linears_, quantized_ops, quantizing_place
from .layers import (
    Block,
    BlockContext,
    CaptionEmbedder,
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed,
)
from .transformer_config import TransformerConfig, detect_transformer, vae_defaults_for

log = logging.getLogger(__name__)

# Called once per forward with the tokens after block 0; returns residuals for blocks 1..len.
ControlHook = Callable[[Tensor, BlockContext], Sequence[Tensor]]


class PixArtTransformer(nn.Module):
    """PixArt transformer: patch tokens, adaLN-single blocks, learned-sigma output."""

    def __init__(
        self,
        config: TransformerConfig,
        ops: type[Ops] = Ops,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        c = config
        f: dict[str, Any] = {"device": device, "dtype": dtype}
        self.x_embedder = PatchEmbed(c.in_channels, c.hidden_size, c.patch_size, ops, **f)
        self.t_embedder = TimestepEmbedder(c.hidden_size, ops, **f)
        self.t_block = nn.Sequential(nn.SiLU(), ops.Linear(c.hidden_size, 6 * c.hidden_size, **f))
        self.y_embedder = CaptionEmbedder(c.caption_channels, c.hidden_size, c.caption_length, c.null_caption, ops, **f)
        if c.micro_conditions:
            self.csize_embedder = TimestepEmbedder(c.hidden_size // 3, ops, **f)
            self.ar_embedder = TimestepEmbedder(c.hidden_size // 3, ops, **f)
        self.blocks = nn.ModuleList(Block(c.hidden_size, c.num_heads, c.mlp_hidden, ops, **f) for _ in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size**2 * c.out_channels, ops, **f)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the patch embedding is never quantized)."""
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def check_latent_size(self, height: int, width: int) -> None:
        p = self.config.patch_size
        if height <= 0 or width <= 0 or height % p or width % p:
            raise InputError(
                f"latent size {height}x{width} must be positive multiples of the patch size {p} "
                f"(images: multiples of {vae_defaults_for(self.config).downscale * p} px)"
            )

    def embed_latent(self, latent: Tensor) -> Tensor:
        """Latent [B, 4, H, W] -> patch tokens with positions [B, H/p * W/p, C]."""
        c = self.config
        _, _, height, width = latent.shape
        self.check_latent_size(height, width)
        h, w = height // c.patch_size, width // c.patch_size
        pos = sincos_pos_embed(c.hidden_size, h, w, c.base_size, c.interpolation_scale)
        return self.x_embedder(latent.to(self.dtype)) + pos.to(latent.device, self.dtype)

    def embed_time(self, timestep: Tensor, batch: int, image_size: tuple[int, int]) -> Tensor:
        """Timestep (+ micro-conditions: image height, width, and height/width) -> t [B, C]."""
        t = self.t_embedder(timestep.to(self.device).reshape(-1).expand(batch))
        if self.config.micro_conditions:
            height, width = image_size
            size = torch.tensor([[height, width]], dtype=torch.float32, device=self.device).expand(batch, 2)
            ratio = torch.tensor([[height / width]], dtype=torch.float32, device=self.device).expand(batch, 1)
            t = t + torch.cat([self.csize_embedder(size), self.ar_embedder(ratio)], dim=1)
        return t

    def embed_caption(self, caption: Tensor, mask: Tensor | None, batch: int) -> tuple[Tensor, Tensor | None]:
        """T5 features [B, L, 4096] (+ mask [B, L]) -> projected tokens, dropping all-padding columns."""
        if caption.ndim != 3 or caption.shape[-1] != self.config.caption_channels:
            raise InputError(
                f"caption features must be [batch, tokens, {self.config.caption_channels}], found {list(caption.shape)}"
            )
        caption = caption.to(self.device, self.dtype).expand(batch, -1, -1)
        if mask is not None:
            mask = mask.to(self.device).bool().expand(batch, -1)
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise InputError(
                    f"caption mask of batch item(s) {empty} selects no token; a caption needs at least one"
                )
            keep = mask.any(dim=0)  # columns that some caption attends to
            if not keep.all():
                caption, mask = caption[:, keep], mask[:, keep]
            if mask.all():
                mask = None
        return self.y_embedder.y_proj(caption), mask

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        caption: Tensor,
        caption_mask: Tensor | None = None,
        image_size: tuple[int, int] | None = None,
        control: ControlHook | None = None,
    ) -> Tensor:
        """Latents [B, 4, H, W] at ``timestep`` -> model output [B, out, H, W] (noise, then sigma).

        ``image_size`` (pixels) feeds the micro-conditions; without it, it is the latent size times the
        downscale of the VAE this model pairs with (``vae_defaults_for``).
        ``control`` supplies residuals added before blocks 1..N (the ControlNet-Transformer).
        """
        batch, _, height, width = x.shape
        tokens = self.embed_latent(x)  # [B, N, C]
        downscale = vae_defaults_for(self.config).downscale
        t = self.embed_time(timestep, batch, image_size or (height * downscale, width * downscale))  # [B, C]
        caption, caption_mask = self.embed_caption(caption, caption_mask, batch)  # [B, L, C]
        p = self.config.patch_size
        ctx = BlockContext(caption, caption_mask, self.t_block(t), (height // p, width // p))
        tokens = self.blocks[0](tokens, ctx)
        residuals = control(tokens, ctx) if control is not None else ()
        if len(residuals) >= self.config.depth:
            raise InputError(f"{len(residuals)} control residuals for a transformer of depth {self.config.depth}")
        for index, block in enumerate(self.blocks[1:]):
            if index < len(residuals):
                tokens = tokens + residuals[index]
            tokens = block(tokens, ctx)
        out = self.final_layer(tokens, t)  # [B, N, p*p*out]
        return self.unpatchify(out, height, width)

    def reference_state_dict(self, weights: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The weights as the reference saves them: with the ``pos_embed`` buffer of the training size.

        ``weights``: this model's state dict gathered elsewhere (from the shards of an FSDP run); default: its own.
        """
        c = self.config
        pos = sincos_pos_embed(c.hidden_size, c.base_size, c.base_size, c.base_size, c.interpolation_scale)
        return {**(self.state_dict() if weights is None else weights), "pos_embed": pos.to(self.dtype)[None]}

    def unpatchify(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """[B, h*w, p*p*c] -> [B, c, h*p, w*p]."""
        p = self.config.patch_size
        return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=height // p, p=p, q=p)


RECOMPUTED = ("pos_embed",)  # the reference saves its training-size positions; they are recomputed


def inspect_transformer(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None
) -> DetectedCheckpoint[TransformerConfig]:
    """Detect a transformer checkpoint's layout and config without reading its weights."""
    source = as_source(checkpoint)
    return detect_transformer(source, hints, folder_config(source))


def load_transformer(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor] | DetectedCheckpoint[TransformerConfig],
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hints: Mapping[str, Any] | None = None,
    ops: type[Ops] = Ops,
    quantization: Quantization | str = Quantization.NONE,
) -> PixArtTransformer:
    """Load a PixArt transformer from any supported layout, strictly, in ``dtype`` on ``device``.

    ``quantization`` int8 or nf4 quantizes the linear layers of its blocks as the weights stream in
    (``quantize_blocks_`` below); ``dtype`` is then the compute dtype and that of every other layer.
    """
    if isinstance(checkpoint, DetectedCheckpoint):
        detected = checkpoint.expect(TransformerConfig)
    else:
        detected = inspect_transformer(checkpoint, hints)
    log.info("loading %s", detected.describe())
    model = PixArtTransformer(detected.config, ops=ops, device="meta")
    place = quantize_blocks_(model, quantization, device, place_tensor)
    load_strict(model, detected.tensors, parse_dtype(dtype), torch.device(device), ignore=RECOMPUTED, place=place)
    return model


def quantize_blocks_(
    model: nn.Module, quantization: Quantization | str, device: torch.device | str, fallback: Place
) -> Place:
    """Quantize the linear layers inside every transformer ``Block`` of a meta-device PixArt transformer or
    ControlNet; returns the ``Place`` step to load it with (``fallback`` itself for 'none').

    Only the blocks: the timestep and micro-condition embedders, ``t_block``, the caption projection, the
    final layer and the ControlNet's zero projections keep the compute dtype. They hold 2.6% of XL's linear
    weights, but quantizing ``t_block``, the caption projection and the final layer too doubled the largest
    error of the prediction (int8: 0.040 -> 0.079, NF4: 0.27 -> 0.52) and made 1 - cosine 4x larger, on
    random weights at XL's width (benchmarks/quant_quality.py): ``t_block`` modulates every block and the
    final layer writes the prediction itself.
    """
    quantization = parse_quantization(quantization)
    if quantization is Quantization.NONE:
        return fallback
    ops = quantized_ops(quantization, device)
    replaced = [name for block in model.modules() if isinstance(block, Block) for name in quantize_linears_(block, ops)]
    if not replaced:
        raise InputError(
            f"{type(model).__name__} has no plain linear layers in its blocks to quantize (built with other ops?)"
        )
    return quantizing_place(fallback)
