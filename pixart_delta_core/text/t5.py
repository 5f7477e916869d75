"""The T5-v1.1 encoder (REFERENCE.md §2): recognised in the files users hold, built on the meta device,
filled tensor by tensor.

Single files (``t5xxl_fp16.safetensors``, bf16, fp8 e4m3fn/e5m2) carry HF key names and no config:
the config is T5-v1.1-XXL with its sizes read from the tensors' shapes, so smaller T5-v1.1 encoders
load too. HF folders bring their ``config.json``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

from ..checkpoints.detection import count_numbered, identify, shape_of
from ..checkpoints.files import Shape, TensorSource, open_checkpoint
from ..checkpoints.layouts import KeyTable, RenamedSource, Rule
from ..checkpoints.loading import Place, as_source, load_strict, place_tensor
from ..devices import parse_dtype
from ..errors import CheckpointError
from ..quant.quantization import Quantization, parse_quantization
from ..quant.streaming import quantize_linears_, quantized_ops, quantizing_place

log = logging.getLogger(__name__)

Checkpoint = str | Path | TensorSource | Mapping[str, torch.Tensor]

# google/t5-v1_1-xxl, the encoder every PixArt model was trained with (fields that shape the encoder).
T5_V1_1_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
SIZE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")

_ANCHOR = "block.0.layer.0.SelfAttention.q.weight"
TIED = {"encoder.embed_tokens.weight": "shared.weight"}
# Key prefixes of the parts of a full T5 (encoder-decoder) that the encoder does not use.
UNUSED_PARTS = ("decoder.", "lm_head.")

# A bare encoder stack saved on its own (``block.N...``, ``embed_tokens``) -> T5EncoderModel names.
_STACK_TABLE = KeyTable(
    (
        Rule(("block.{i}",), "encoder.block.{i}"),
        Rule(("final_layer_norm",), "encoder.final_layer_norm"),
        Rule(("embed_tokens",), "shared"),
    )
)
# Files that keep the embedding only under the encoder's name.
_EMBED_ONLY_TABLE = KeyTable((Rule(("encoder.embed_tokens",), "shared"),))


@dataclass(frozen=True)
class T5Checkpoint:
    """A recognised T5 encoder: its config, where its keys live, and its tensors in T5EncoderModel names."""

    config: Mapping[str, Any]
    tensors: TensorSource
    prefix: str
    layout: str
    ignored: tuple[str, ...]

    def describe(self) -> str:
        c = self.config
        size = "T5-v1.1-XXL" if all(c[k] == T5_V1_1_XXL[k] for k in SIZE_FIELDS) else "T5-v1.1"
        where = f", keys under {self.prefix!r}" if self.prefix else ""
        dtypes = sorted({str(d).removeprefix("torch.") for d in self.tensors.dtypes.values()})
        params = sum(math.prod(self.tensors.shapes[k]) for k in self.tensors.shapes if k not in self.ignored)
        return (
            f"{size} encoder ({self.layout}{where}): {c['num_layers']} layers, width {c['d_model']}, "
            f"{c['num_heads']} heads of {c['d_kv']}, feed-forward {c['d_ff']}, vocabulary {c['vocab_size']}; "
            f"{_count(params)} parameters stored as {', '.join(dtypes)}"
        )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def weights_folder(path: Path) -> Path | None:
    """The folder holding a T5's HF weights: ``path`` itself or a pipeline's ``text_encoder/``; None for a file."""
    if not path.is_dir():
        return None
    for folder in (path, path / "text_encoder"):
        if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
            return folder
    raise CheckpointError(
        f"{path}: a folder, but no T5 weights in it: expected model.safetensors (or model-0000x-of-0000y.safetensors "
        f"with model.safetensors.index.json) and config.json, in the folder or in its text_encoder/ subfolder"
    )


def inspect_t5(checkpoint: Checkpoint) -> T5Checkpoint:
    """Recognise a T5 encoder in a file, an HF folder, a source or a state dict, reading no weights."""
    config_json: dict[str, Any] | None = None
    if isinstance(checkpoint, (str, Path)):
        folder = weights_folder(Path(checkpoint))
        if folder is not None:
            checkpoint = folder
            if (folder / "config.json").is_file():
                config_json = json.loads((folder / "config.json").read_text())
        source = open_checkpoint(checkpoint)
    else:
        source = as_source(checkpoint)
    return detect_t5(source, config_json)


def detect_t5(source: TensorSource, config_json: Mapping[str, Any] | None = None) -> T5Checkpoint:
    """Find the T5 encoder in ``source`` (any prefix, HF or bare-stack names) and its config."""
    found: dict[str, bool] = {}  # prefix -> whether the blocks sit under ``encoder.`` (HF names)
    for key in source.shapes:
        head = key.removesuffix(_ANCHOR)
        if head != key and not head.endswith("decoder."):
            found[head.removesuffix("encoder.")] = head.endswith("encoder.")
    if not found:
        raise CheckpointError(f"{source.origin}: not a T5 text encoder: {_what_it_is(source)}")
    if len(found) > 1:
        raise CheckpointError(
            f"{source.origin}: ambiguous: it holds several T5 encoders (under {sorted(found)}); expected one"
        )
    prefix, hf_names = next(iter(found.items()))
    view = dequantized(source.without_prefix(prefix))
    others = len(source) - len(view)
    if others:
        log.info("%s: using the %d tensors under %r, ignoring %d others", source.origin, len(view), prefix, others)
    if not hf_names:
        layout = "bare encoder stack"
        view = RenamedSource(view, _STACK_TABLE)
    elif "shared.weight" not in view.shapes and "encoder.embed_tokens.weight" in view.shapes:
        layout = "HF names"
        view = RenamedSource(view, _EMBED_ONLY_TABLE)
    else:
        layout = "HF names"
    _refuse_other_t5_kinds(view)
    ignored = tuple(k for k in view.shapes if k.startswith(UNUSED_PARTS))
    if ignored:
        log.info(
            "%s: a full T5: ignoring its %d decoder tensors, only the encoder is used", source.origin, len(ignored)
        )
    config = _config_from_json(config_json, source.origin) if config_json else _config_from_shapes(view)
    return T5Checkpoint(config, view, prefix, layout, ignored)


# ComfyUI's scaled fp8 files (its t5xxl_fp8_e4m3fn_scaled): each linear weight stored in fp8 with a per-tensor
# ``<layer>.scale_weight`` (the weight is fp8 value x scale), optionally ``<layer>.scale_input`` (used only by fp8
# matrix products, not needed once the weight is dequantized), and a ``scaled_fp8`` marker tensor.
SCALED_FP8_MARKER = "scaled_fp8"
_SCALE_WEIGHT, _SCALE_INPUT = ".scale_weight", ".scale_input"
# Auxiliary per-tensor keys of other quantization schemes, named in the refusal.
_OTHER_SCHEMES = {
    ".weight_scale_inv": "block-scaled fp8 (weight_scale_inv)",
    ".weight_scale": "a per-tensor scaled format (weight_scale, e.g. ComfyUI's comfy_quant)",
    ".comfy_quant": "ComfyUI's comfy_quant format",
    ".input_scale": "a scaled fp8 format with input scales (input_scale)",
    ".SCB": "bitsandbytes int8 (SCB)",
    ".absmax": "bitsandbytes 4-bit (absmax, quant_map)",
    ".quant_map": "bitsandbytes 4-bit (absmax, quant_map)",
}


class ScaledFp8Source(TensorSource):
    """A scaled fp8 file seen as plain weights: each scaled weight read as fp8 value x ``scale_weight`` (fp32)."""

    def __init__(self, inner: TensorSource) -> None:
        scales = {k.removesuffix(_SCALE_WEIGHT) + ".weight": k for k in inner.shapes if k.endswith(_SCALE_WEIGHT)}
        missing = sorted(w for w in scales if w not in inner.shapes)
        if missing:
            raise CheckpointError(f"{inner.origin}: scale_weight without its weight for {missing[:3]}")
        hidden = {SCALED_FP8_MARKER, *scales.values()}
        hidden |= {k for k in inner.shapes if k.endswith(_SCALE_INPUT)}
        shapes: dict[str, Shape] = {k: v for k, v in inner.shapes.items() if k not in hidden}
        dtypes = {k: torch.float32 if k in scales else inner.dtypes[k] for k in shapes}
        super().__init__(shapes, dtypes, inner.origin, inner.metadata)
        self._inner, self._scales = inner, scales

    def _read(self, key: str) -> torch.Tensor:
        scale = self._scales.get(key)
        if scale is None:
            return self._inner[key]
        return self._inner[key].float() * self._inner[scale].float()  # [out, in] x per-tensor scale

    def read_into(self, key: str, out: torch.Tensor) -> None:
        if key in self._scales:
            out.copy_(self[key])
        else:
            self._inner.read_into(key, out)

    def mapped(self, key: str) -> torch.Tensor | None:
        return None if key in self._scales else self._inner.mapped(key)


def dequantized(view: TensorSource) -> TensorSource:
    """``view`` with ComfyUI's scaled fp8 read as plain weights; other quantization schemes refused by name."""
    for suffix, scheme in _OTHER_SCHEMES.items():
        keys = [k for k in view.shapes if k.endswith(suffix)]
        if keys:
            raise CheckpointError(
                f"{view.origin}: a T5 stored in {scheme}, e.g. {keys[0]!r}: not read by this pack; use the "
                f"fp16, bf16, fp8 or ComfyUI scaled fp8 T5 files"
            )
    if SCALED_FP8_MARKER in view.shapes or any(k.endswith(_SCALE_WEIGHT) for k in view.shapes):
        log.info("%s: ComfyUI scaled fp8: weights read as fp8 value x scale_weight", view.origin)
        return ScaledFp8Source(view)
    return view


def _what_it_is(source: TensorSource) -> str:
    if any(k.endswith("shared.weight") or "SelfAttention" in k for k in source.shapes):
        return "it has T5 names but no encoder block 0 (a decoder only, or a partial file?)"
    return identify(source, expected="T5 keys such as encoder.block.0.layer.0.SelfAttention.q.weight")


def _refuse_other_t5_kinds(view: TensorSource) -> None:
    keys = view.shapes
    if "encoder.block.0.layer.1.DenseReluDense.wi.weight" in keys:
        raise CheckpointError(
            f"{view.origin}: a T5 with a plain ReLU feed-forward (wi, as in the original T5); PixArt uses "
            f"T5-v1.1 (gated-GELU, wi_0 and wi_1)"
        )
    if any(re.match(r"encoder\.block\.[1-9]\d*\.layer\.0\.SelfAttention\.relative_attention_bias", k) for k in keys):
        raise CheckpointError(
            f"{view.origin}: every block has its own relative position bias, as in UMT5; PixArt uses T5-v1.1, "
            f"whose bias lives in block 0 only"
        )
    if "shared.weight" not in keys:
        raise CheckpointError(f"{view.origin}: a T5 encoder without its token embedding (shared.weight is missing)")


def _shape(view: TensorSource, key: str) -> tuple[int, ...]:
    return shape_of(view, key, 2, "a T5 encoder")  # the tensors that sizes are read from are all matrices


def _config_from_shapes(view: TensorSource) -> dict[str, Any]:
    """T5-v1.1-XXL with every size the tensors show taken from them."""
    vocab, width = _shape(view, "shared.weight")
    depth = count_numbered(view, "encoder.block.", "encoder blocks")
    inner = _shape(view, "encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    buckets, heads = _shape(view, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if inner % heads:
        raise CheckpointError(f"{view.origin}: attention width {inner} is not a multiple of its {heads} heads")
    d_ff = _shape(view, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0]
    config = {
        **T5_V1_1_XXL,
        "vocab_size": vocab,
        "d_model": width,
        "d_kv": inner // heads,
        "d_ff": d_ff,
        "num_layers": depth,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
    }
    differ = {k: config[k] for k in SIZE_FIELDS if config[k] != T5_V1_1_XXL[k]}
    if differ:
        log.info("%s: a T5-v1.1 smaller than XXL, sizes read from its tensors: %s", view.origin, differ)
    return config


def _config_from_json(config: Mapping[str, Any], origin: str) -> dict[str, Any]:
    kind = config.get("model_type", "t5")
    if kind != "t5":
        raise CheckpointError(f"{origin}: config.json describes a {kind!r} model; expected a T5 encoder ('t5')")
    if config.get("feed_forward_proj", "relu") != "gated-gelu":
        raise CheckpointError(
            f"{origin}: config.json has feed_forward_proj {config.get('feed_forward_proj', 'relu')!r}; PixArt "
            f"uses T5-v1.1 ('gated-gelu')"
        )
    return {**T5_V1_1_XXL, **{k: v for k, v in config.items() if k in T5_V1_1_XXL}}


class Fp32ProductFeedForward(T5DenseGatedActDense):
    """T5-v1.1's gated-GELU feed-forward with its gated product formed in fp32 (REFERENCE.md §2).

    T5-v1.1 overflows fp16 here: the gate times value product and the ``wo`` output pass 65504. In fp16
    the output stays fp32 and carries the residual stream from then on: unquantized, ``wo`` is stored in
    fp32 (as transformers does for fp16); quantized, ``wo`` takes the fp32 product itself. In bf16 and
    fp32 (used for quantized layers only) the output returns to the model's dtype. Only a single
    projection's output above 65504 could still overflow.
    """

    def __init__(self, config: T5Config, dtype: torch.dtype) -> None:
        super().__init__(config)
        self.out_dtype = torch.float32 if dtype == torch.float16 else dtype

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.act(self.wi_0(hidden_states).float())  # [B, L, d_ff] fp32
        value = self.wi_1(hidden_states).float()  # [B, L, d_ff] fp32
        return self.wo(gate * value).to(self.out_dtype)  # [B, L, d_model]


def _use_fp32_product(model: T5EncoderModel, dtype: torch.dtype) -> None:
    with torch.device("meta"):
        for block in model.encoder.block:
            block.layer[-1].DenseReluDense = Fp32ProductFeedForward(model.config, dtype)


def build_t5(config: Mapping[str, Any], dtype: torch.dtype) -> T5EncoderModel:
    """An empty T5EncoderModel on the meta device (no random-init pass); fp16 gets the guarded feed-forward."""
    t5_config = T5Config(**{**config, "is_encoder_decoder": False, "use_cache": False})
    with torch.device("meta"):
        model = T5EncoderModel(t5_config)
    if dtype == torch.float16:
        _use_fp32_product(model, dtype)
    return model


def quantize_t5_(
    model: T5EncoderModel, quantization: Quantization, dtype: torch.dtype, device: torch.device | str, fallback: Place
) -> Place:
    """Quantize a meta-device T5 encoder's blocks (REFERENCE.md §5: the paper's 8-bit T5); returns the ``Place``
    step to load it with.

    Every linear layer of the blocks (attention q, k, v, o; feed-forward wi_0, wi_1, wo) becomes an empty
    quantized layer; the token embedding, the RMS-norm gains and the relative position bias stay in ``dtype``.
    The feed-forward forms its product in fp32 in every dtype: the quantized ``wo`` scales it into fp16's
    range itself.
    """
    ops = quantized_ops(quantization, device)
    _use_fp32_product(model, dtype)
    quantize_linears_(model.encoder.block, ops)
    return quantizing_place(fallback)


def t5_placement(dtype: torch.dtype) -> Place:
    """How each T5 tensor is stored: all in ``dtype``, except ``wo`` kept in fp32 when ``dtype`` is fp16."""
    if dtype != torch.float16:
        return place_tensor

    def place(module: nn.Module, key: str, tensors: TensorSource, dtype: torch.dtype, device: torch.device) -> None:
        place_tensor(module, key, tensors, torch.float32 if key.endswith(".wo.weight") else dtype, device)

    return place


def load_t5(
    checkpoint: Checkpoint | T5Checkpoint,
    dtype: str | torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    quantization: Quantization | str = Quantization.NONE,
) -> T5EncoderModel:
    """Load a T5-v1.1 encoder strictly, streamed tensor by tensor, in ``dtype`` on ``device``.

    With ``quantization`` the blocks' linear layers are quantized as they stream in (``quantize_t5_``);
    ``dtype`` is then the compute dtype and the dtype of the layers that stay unquantized.
    """
    found = checkpoint if isinstance(checkpoint, T5Checkpoint) else inspect_t5(checkpoint)
    torch_dtype = parse_dtype(dtype)
    quantization = parse_quantization(quantization)
    model = build_t5(found.config, torch_dtype)
    place = t5_placement(torch_dtype)
    if quantization is not Quantization.NONE:
        place = quantize_t5_(model, quantization, torch_dtype, device, place)
    log.info("loading %s, in %s, %s", found.describe(), torch_dtype, quantization.label)
    load_strict(
        model,
        found.tensors,
        torch_dtype,
        torch.device(device),
        ignore=found.ignored,
        tied=TIED,
        place=place,
    )
    return model
