"""ComfyUI's scaled fp8 T5 (its ``t5xxl_fp8_e4m3fn_scaled``) read as plain weights, and other quantized T5
storage schemes refused by name."""

from __future__ import annotations

import logging

import torch

from ..checkpoints.sources import Shape, TensorSource
from ..errors import CheckpointError

log = logging.getLogger(__name__)

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
