"""PixArt's building blocks (docs/REFERENCE.md §1), named like the reference checkpoint's modules."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops import Ops

FREQUENCY_DIM = 256  # sinusoidal width of timestep and size embeddings
NORM_EPS = 1e-6


def timestep_embedding(t: Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) scalars, cosines first: [N] -> [N, dim] fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


@lru_cache(maxsize=16)
def sincos_pos_embed(dim: int, grid_h: int, grid_w: int, base_size: int, scale: float) -> Tensor:
    """2-D sin-cos positions of a grid_h x grid_w patch grid: [grid_h * grid_w, dim], float64.

    Each axis is stretched to ``base_size`` patches and divided by the interpolation ``scale``;
    the first half of the channels encodes the column, the second half the row.
    """
    rows = torch.arange(grid_h, dtype=torch.float64) / (grid_h / base_size) / scale
    cols = torch.arange(grid_w, dtype=torch.float64) / (grid_w / base_size) / scale
    row, col = torch.meshgrid(rows, cols, indexing="ij")  # [h, w] each
    return torch.cat([_sincos_1d(dim // 2, col.reshape(-1)), _sincos_1d(dim // 2, row.reshape(-1))], dim=1)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos[:, None] * omega[None]  # [N, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)


class BlockContext(NamedTuple):
    """What every block sees besides the image tokens."""

    caption: Tensor  # [B, L, C] projected caption tokens
    caption_mask: Tensor | None  # [B, L] bool, True = attend; None = attend to all
    modulation: Tensor  # [B, 6C] t_block(t), shared by all blocks
    grid: tuple[int, int]  # (h, w) patch grid of the image tokens: N = h * w


class PatchEmbed(nn.Module):
    """Latent -> patch tokens: a p x p convolution with stride p."""

    def __init__(self, in_channels: int, hidden: int, patch: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.proj = ops.Conv2d(in_channels, hidden, patch, stride=patch, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.fc1 = ops.Linear(dim_in, hidden, **factory)
        self.fc2 = ops.Linear(hidden, dim_out, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    """Scalar -> sinusoid -> MLP; also the micro-condition (size, aspect ratio) embedder."""

    def __init__(self, hidden: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            ops.Linear(FREQUENCY_DIM, hidden, **factory), nn.SiLU(), ops.Linear(hidden, hidden, **factory)
        )

    def forward(self, values: Tensor) -> Tensor:
        """[B] -> [B, hidden], or [B, n] -> [B, n * hidden] (each value embedded on its own)."""
        batch = values.shape[0]
        emb = timestep_embedding(values.reshape(-1)).to(self.mlp[0].weight.dtype)
        return self.mlp(emb).reshape(batch, -1)


class CaptionEmbedder(nn.Module):
    """T5 features -> transformer width; ``y_embedding`` is the learned null caption."""

    def __init__(
        self, channels: int, hidden: int, tokens: int, null_caption: bool, ops: type[Ops], **factory: Any
    ) -> None:
        super().__init__()
        self.y_proj = Mlp(channels, hidden, hidden, ops, **factory)
        if null_caption:
            self.register_buffer("y_embedding", torch.empty(tokens, channels, **factory))


class Attention(nn.Module):
    """Self-attention over image tokens with a fused qkv projection."""

    def __init__(self, hidden: int, heads: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = ops.Linear(hidden, 3 * hidden, **factory)
        self.proj = ops.Linear(hidden, hidden, **factory)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, D]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens; padding tokens are masked out."""

    def __init__(self, hidden: int, heads: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.heads = heads
        self.q_linear = ops.Linear(hidden, hidden, **factory)
        self.kv_linear = ops.Linear(hidden, 2 * hidden, **factory)
        self.proj = ops.Linear(hidden, hidden, **factory)

    def forward(self, x: Tensor, caption: Tensor, mask: Tensor | None) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q_linear(x).view(b, n, self.heads, d).transpose(1, 2)  # [B, H, N, D]
        k, v = self.kv_linear(caption).view(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 x [B, H, L, D]
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """adaLN-single block: self-attention, cross-attention, MLP (PixArt-α §2.3).

    ``gradient_checkpointing`` (off by default; ``set_gradient_checkpointing`` sets it for a whole model):
    while gradients are recorded, the block keeps only its input and recomputes its activations in the
    backward pass (``torch.utils.checkpoint``), as the reference trains with; inference is unaffected.
    """

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.empty(6, hidden, **factory))
        self.attn = Attention(hidden, heads, ops, **factory)
        self.cross_attn = CrossAttention(hidden, heads, ops, **factory)
        self.mlp = Mlp(hidden, mlp_hidden, hidden, ops, **factory)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, ctx: BlockContext) -> Tensor:
        """Tokens [B, N, C] -> [B, N, C]."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, ctx, use_reentrant=False)
        return self._forward(x, ctx)

    def _forward(self, x: Tensor, ctx: BlockContext) -> Tensor:
        b = x.shape[0]
        mod = self.scale_shift_table[None] + ctx.modulation.reshape(b, 6, -1)  # [B, 6, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # [B, 1, C] each
        x = x + gate_msa * self.attn(modulate(layer_norm(x), shift_msa, scale_msa))
        x = x + self.cross_attn(x, ctx.caption, ctx.caption_mask)
        return x + gate_mlp * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Turn gradient checkpointing on or off for every ``Block`` inside ``model`` (a transformer, a
    ControlNet-Transformer, or a module holding them)."""
    for block in model.modules():
        if isinstance(block, Block):
            block.gradient_checkpointing = enabled


class FinalLayer(nn.Module):
    """adaLN modulation by the timestep embedding, then tokens -> patch pixels."""

    def __init__(self, hidden: int, out_features: int, ops: type[Ops], **factory: Any) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.empty(2, hidden, **factory))
        self.linear = ops.Linear(hidden, out_features, **factory)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # [B, 1, C] each
        return self.linear(modulate(layer_norm(x), shift, scale))
