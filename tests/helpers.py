"""Test helpers: tiny configs, the fixtures folder, diffusers twins of our models."""

from __future__ import annotations

import builtins
import json
import struct
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import torch

from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers
from pixart_delta_core.text.t5 import TIED
from pixart_delta_core.text.t5_config import T5_V1_1_XXL

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # what each file is: tests/fixtures/README.md
MANIFESTS = FIXTURES / "manifests"
TOKENIZER = ROOT / "pixart_delta_core" / "embedded_model" / "text_encoders" / "shapes-t5"  # T5's own tokenizer
COMFYUI_T5_PREFIX = "text_encoders.t5xxl.transformer."  # T5 keys in a checkpoint saved from ComfyUI

TINY = TransformerConfig(
    depth=2, hidden_size=48, num_heads=4, mlp_hidden=192, caption_channels=32, caption_length=16, sample_size=16
)
REAL_WIDTH = TransformerConfig(  # PixArt-XL's width and heads, 2 blocks
    depth=2,
    hidden_size=1152,
    num_heads=16,
    caption_channels=64,
    sample_size=128,
    micro_conditions=True,
    interpolation_scale=2.0,
)
TINY_MS = TransformerConfig(
    depth=3,
    hidden_size=48,
    num_heads=2,
    mlp_hidden=192,
    caption_channels=24,
    caption_length=16,
    sample_size=32,
    micro_conditions=True,
    interpolation_scale=2.0,
)


# T5-v1.1 sizes for tests; the vocabulary stays T5-XXL's so the real tokenizer fits.
TINY_T5 = {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 2}

# The quantization tests' models. A small T5-v1.1 at T5's own scales; 64 is a multiple of NF4's block, like every
# real width.
SMALL_T5 = replace(T5_V1_1_XXL, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, vocab_size=512)
MID_PIXART = TransformerConfig(
    depth=2, hidden_size=288, num_heads=4, mlp_hidden=1152, caption_channels=128, caption_length=16, sample_size=16
)
PIXART_HINTS = {"sample_size": 16}  # random weights say nothing of the training resolution


def hide_bitsandbytes(monkeypatch, error: Exception | None = None) -> None:
    """Make ``import bitsandbytes`` raise ``error``, as it does where the package is absent (the default,
    ModuleNotFoundError) or broken (say an OSError from a CUDA library it cannot open)."""
    if error is None:
        error = ModuleNotFoundError("No module named 'bitsandbytes'")
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def manifest_source(name: str) -> StateDictSource:
    """A real checkpoint layout rebuilt as meta tensors from its manifest."""
    data = json.loads((MANIFESTS / name).read_text())
    tensors = {
        key: torch.empty(info["shape"], dtype=getattr(torch, info["dtype"]), device="meta")
        for key, info in data["keys"].items()
    }
    return StateDictSource(tensors, origin=name)


def random_transformer(config: TransformerConfig, seed: int = 0) -> PixArtTransformer:
    return randomize_(PixArtTransformer(config), seed)


def diffusers_twin(model: PixArtTransformer):
    """diffusers' PixArtTransformer2DModel holding the same weights (converted by the key table)."""
    from diffusers import PixArtTransformer2DModel

    c = model.config
    twin = PixArtTransformer2DModel(
        num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        num_layers=c.depth,
        sample_size=c.sample_size,
        patch_size=c.patch_size,
        caption_channels=c.caption_channels,
        cross_attention_dim=c.hidden_size,
        use_additional_conditions=c.micro_conditions,
        interpolation_scale=c.interpolation_scale,
    )
    weights = {k: v for k, v in to_diffusers(model.state_dict()).items() if k not in REFERENCE_ONLY}
    twin.load_state_dict(weights, strict=True)
    return twin.eval()


def random_t5(seed: int = 0, **sizes: int):
    """transformers' T5EncoderModel, T5-v1.1 with TINY_T5 sizes (or ``sizes``) and random fp32 weights."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**{**asdict(T5_V1_1_XXL), **TINY_T5, **sizes}, is_encoder_decoder=False, use_cache=False)
    model = randomize_(T5EncoderModel(config), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:  # RMS-norm gains near 1, as trained ones are
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def t5_file_weights(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """What a single-file T5 holds: HF names, the embedding once (as ``shared.weight``), in ``dtype``."""
    return {k: v.to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items() if k not in TIED}


TOLERANCE = 1e-4  # absolute, for O(1) latents
RELATIVE = 1e-5  # relative to the largest latent, for the O(1e3) latents random weights make


def assert_latents_match(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Final latents agree within 1e-4 where they are O(1), else within 1e-5 of their largest value.

    A random transformer does not predict the noise it is given, so its x0 estimate at t = 999 is the
    prediction error divided by sqrt(alpha_bar_999) = 0.0064: text-to-image latents reach O(1e3), where
    one fp32 step is already 6e-5. Measured on such runs: 2e-7 to 6e-7 of the largest latent.
    """
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    bound = TOLERANCE if scale <= 1 else RELATIVE * scale
    assert diff <= bound, f"max abs difference {diff:.3g} > {bound:.3g} (latents up to {scale:.3g})"


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` and holds no pixel data (Pillow reads the size first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


class Encoded(Exception):
    """Raised where a run would encode its prompts (the ``stop_at_encoding`` fixture): its checks and warnings are
    all behind."""
