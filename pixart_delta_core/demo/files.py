"""The built-in demo models: tiny, random, built in memory (no weights can be downloaded).

``write_demo_models`` saves a transformer, a T5 encoder with its tokenizer, and a VAE in the
layouts users hold, so the demo runs the same loading and generation code as real checkpoints.
Random weights make noise, not pictures: the demo shows the engine working end to end.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from ..models.transformer import PixArtTransformer
from ..models.transformer_config import TransformerConfig
from ..text.t5 import TIED
from .random_weights import randomize_

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

DEMO_TRANSFORMER = TransformerConfig(
    depth=2,
    hidden_size=144,
    num_heads=2,
    mlp_hidden=576,
    caption_channels=64,
    sample_size=128,
    micro_conditions=True,
    interpolation_scale=2.0,
)
DEMO_T5 = {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2, "vocab_size": 128}
DEMO_VAE = {"block_out_channels": (16, 32, 64, 64), "layers_per_block": 1, "norm_num_groups": 8}


@dataclass(frozen=True)
class DemoFiles:
    """Where ``write_demo_models`` put each model."""

    transformer: Path
    t5: Path
    tokenizer: Path
    vae: Path


def demo_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with T5's special tokens (pad 0, end 1, unknown 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in string.printable[:-5]:  # without the control whitespace
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def demo_transformer(seed: int = 0, config: TransformerConfig = DEMO_TRANSFORMER) -> PixArtTransformer:
    """A random transformer (72-wide heads like every PixArt, so its head count is detectable)."""
    return randomize_(PixArtTransformer(config), seed)


def demo_t5(seed: int = 0, **overrides: int) -> T5EncoderModel:
    """A random T5-v1.1-style encoder (gated GELU feed-forward)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(**{**DEMO_T5, **overrides}, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return T5EncoderModel(config).eval()


def demo_vae(seed: int = 0, **overrides: object) -> AutoencoderKL:
    """A random SD-style VAE (4 latent channels, 8x downscale)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    blocks = len(DEMO_VAE["block_out_channels"])
    return AutoencoderKL(
        **{**DEMO_VAE, **overrides},
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        scaling_factor=0.18215,
    ).eval()


def write_demo_models(
    folder: Path,
    transformer: PixArtTransformer | None = None,
    t5: T5EncoderModel | None = None,
    vae: AutoencoderKL | None = None,
) -> DemoFiles:
    """Save the models as users hold them: a reference-layout transformer file, a single-file T5
    (with its tokenizer folder beside it) and a diffusers VAE folder."""
    folder.mkdir(parents=True, exist_ok=True)
    transformer = transformer or demo_transformer()
    t5 = t5 or demo_t5()
    vae = vae or demo_vae()
    files = DemoFiles(
        folder / "demo-transformer.safetensors",
        folder / "demo-t5.safetensors",
        folder / "demo-tokenizer",
        folder / "demo-vae",
    )
    heads = {"num_heads": str(transformer.config.num_heads)}  # detection reads it where widths are not 72k
    save_file(transformer.reference_state_dict(), str(files.transformer), metadata=heads)
    t5_weights = {k: v for k, v in t5.state_dict().items() if k not in TIED}  # tied to shared.weight
    save_file({k: v.contiguous() for k, v in t5_weights.items()}, str(files.t5))
    demo_tokenizer().save_pretrained(files.tokenizer)
    files.vae.mkdir(exist_ok=True)
    save_file(vae.state_dict(), str(files.vae / "diffusion_pytorch_model.safetensors"))
    (files.vae / "config.json").write_text(json.dumps(dict(vae.config)))
    return files
