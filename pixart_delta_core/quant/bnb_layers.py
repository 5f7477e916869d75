"""bitsandbytes linear layers for LLM.int8() and NF4, filled by streaming and safe from fp16 overflow.

Imported only once ``quant.streaming.quantized_ops`` has found bitsandbytes; nothing else in the engine imports it.

Both layers quantize a weight on the device it was read to (a GPU quantizes on the GPU). LLM.int8()
multiplies in fp16 (its activations are quantized from fp16), and NF4 computes in fp16 when fp16 is
asked: T5-v1.1 has activations and outputs beyond fp16's 65504 (docs/REFERENCE.md §2). Each layer knows a
bound of its weight rows' absolute sums, so it divides an input by the power of two that keeps both
the input and the output inside fp16 and multiplies the output back in the input's dtype: exact in
floating point, and a no-op for ordinary activations. LLM.int8()'s outlier threshold is divided by the
same power, so the same input features go through fp16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import (
    QuantState,
    int8_vectorwise_quant,
    quantize_4bit,
    quantize_blockwise,
)
from torch import Tensor

from ..ops import Ops
from .quantization import Quantization, QuantizedLinear

# LLM.int8()'s outlier threshold: input features with any |value| >= 6 are multiplied in fp16 (the
# paper's value, where its perplexity matched fp16 at every model size; transformers' default too).
# Measured on a random T5 with outlier channels (6 blocks 512 wide, 6 channels; smallest cosine to fp32):
# 0.988 at 6, 0.884 with no split (0), 0.989 at 3, 0.986 at 12: 6 keeps the split's gain, few fp16 features.
INT8_THRESHOLD = 6.0
NF4_BLOCK = 64
# QLoRA's double quantization: the fp32 scale of every 64 weights is itself quantized to 8 bits (blocks of
# 256), 0.5 -> 0.127 bits per weight, about 0.2 GB less for T5-XXL; QLoRA measured no quality loss from it.
NF4_DOUBLE_QUANT = True
_FP16_SAFE = 2.0**15  # inputs and outputs are kept at most this large in fp16 (its largest number: 65504)
# Weights are quantized this many at a time (whole rows): bitsandbytes' quantizers make temporaries of up
# to 14 bytes per weight on CPU, 600 MB for one of T5-XXL's feed-forward matrices if done at once.
CHUNK_WEIGHTS = 1 << 20


def _row_chunks(weight: Tensor, multiple: int = 1) -> Iterator[slice]:
    """Slices of whole rows of ``weight`` [out, in], about ``CHUNK_WEIGHTS`` weights each, each holding a
    multiple of ``multiple`` weights (else the whole matrix at once)."""
    rows, width = weight.shape
    step = max(1, CHUNK_WEIGHTS // max(width, 1))
    if (step * width) % multiple or width % multiple:
        step = rows
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor, float]:
    """LLM.int8() weights of ``weight`` [out, in] on its device: int8 codes [out, in] and fp32 row scales [out]
    (a row is codes * scale / 127); and a bound of the dequantized rows' absolute sums."""
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for rows in _row_chunks(weight):  # the rows are independent: the same result as all at once
        codes[rows], scales[rows], _ = int8_vectorwise_quant(weight[rows].to(torch.float16))
    return codes, scales, _row_sum_bound(weight.shape[1], scales)


def quantize_nf4(weight: Tensor) -> tuple[Tensor, QuantState, float]:
    """NF4 weights of ``weight`` [out, in] on its device, as bitsandbytes' ``quantize_4bit`` makes them (packed
    [out * in / 2, 1] uint8 and the quantization state) but a few rows at a time; and a bound of the dequantized
    rows' absolute sums."""
    packed, absmax, code = [], [], None
    for rows in _row_chunks(weight, NF4_BLOCK):  # blocks of 64 never straddle chunks: the same blocks
        part, state = quantize_4bit(weight[rows], blocksize=NF4_BLOCK, quant_type="nf4")
        packed.append(part)
        absmax.append(state.absmax)
        code = state.code
    scales = torch.cat(absmax)  # [out * in / 64]
    bound = _row_sum_bound(weight.shape[1], scales)
    state = QuantState(scales, weight.shape, code, NF4_BLOCK, "nf4", weight.dtype)
    if NF4_DOUBLE_QUANT:  # as quantize_4bit(compress_statistics=True) does, over the whole matrix's scales
        offset = scales.mean()
        quantized, nested = quantize_blockwise(scales - offset, blocksize=256)
        state = QuantState(quantized, weight.shape, code, NF4_BLOCK, "nf4", weight.dtype, offset, nested)
    return torch.cat(packed), state, bound


def _row_sum_bound(width: int, scales: Tensor) -> float:
    """A bound of a dequantized matrix's absolute row sums: no weight exceeds the largest scale (int8 codes are
    at most 127/127 of their row's scale, NF4 codes at most 1 of their block's; NF4's quantized block scales can
    round up by a fraction of a percent, which ``_FP16_SAFE``'s factor of 2 covers)."""
    return width * scales.max().item() if scales.numel() else 0.0


def fp16_scale(x: Tensor, row_sum_bound: float) -> float:
    """The power of two that brings ``x`` (not fp16) and any weight row times ``x`` inside fp16's range; 1 if
    they already are. An fp16 input stays as it is: its output overflows exactly when an fp16 ``nn.Linear``'s
    would."""
    if x.dtype == torch.float16 or x.numel() == 0:
        return 1.0
    need = x.detach().abs().amax().item() * max(1.0, row_sum_bound) / _FP16_SAFE
    if not 1.0 < need < math.inf:  # also NaN: let it propagate unscaled
        return 1.0
    return 2.0 ** math.ceil(math.log2(need))


def _finish(out: Tensor, dtype: torch.dtype, scale: float, bias: Tensor | None) -> Tensor:
    """The layer output in ``dtype``: undo the input scaling, add the bias."""
    out = out.to(dtype)
    if scale != 1.0:
        out = out * scale
    return out if bias is None else out + bias.to(dtype)


class Int8Linear(QuantizedLinear, bnb.nn.Linear8bitLt):
    """LLM.int8() linear layer (Dettmers et al. 2022): int8 weights with one scale per output row; input
    features holding outliers (|x| >= threshold) are multiplied in fp16, the rest in int8."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        threshold: float = INT8_THRESHOLD,
    ) -> None:
        super().__init__(in_features, out_features, bias, has_fp16_weights=False, threshold=threshold, device=device)
        self.outlier_threshold = threshold
        self.row_sum_bound = math.inf  # set when the weight is quantized

    def read_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        return torch.float16  # LLM.int8() quantizes weights from fp16

    def quantize_weight(self, weight: Tensor, compute_dtype: torch.dtype) -> None:
        codes, scales, self.row_sum_bound = quantize_int8(weight)
        self.weight = bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=scales)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Int8Linear:
        """Move the layer as ``nn.Module`` does, then point bitsandbytes' references at the moved int8 weight.

        bitsandbytes keeps the int8 weight and its row scales a second time (``weight.CB``/``SCB`` until the
        first forward, the matmul state after), and only its own ``Linear8bitLt.to`` moves those; a parent
        module's ``.to()`` (ComfyUI moving a model on and off the GPU) does not call it, so a moved model would
        compute with, and keep alive, the weights where they were.
        """
        super()._apply(fn, recurse)
        codes = self.weight.data
        for holder in (self.weight, self.state):
            if holder.CB is not None:
                holder.CB = codes
            if holder.SCB is not None:
                holder.SCB = holder.SCB.to(codes.device)
        self.state.idx = None  # the last input's outlier columns: recomputed by every forward
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.CB is not None:
            self.init_8bit_state()  # bitsandbytes keeps the int8 weight and its scales in the matmul state
        self.state.is_training = self.training
        scale = fp16_scale(x, self.row_sum_bound)
        self.state.threshold = self.outlier_threshold / scale
        inputs = (x if scale == 1.0 else x / scale).to(torch.float16)
        out = bnb.matmul(inputs, self.weight, state=self.state)  # [..., out] fp16
        return _finish(out, x.dtype, scale, self.bias)


class Nf4Linear(QuantizedLinear, bnb.nn.Linear4bit):
    """QLoRA's 4-bit NormalFloat linear layer (Dettmers et al. 2023): weights in blocks of 64, each block's scale
    quantized again; computed in the model's dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias,
            compute_dtype=dtype,
            compress_statistics=NF4_DOUBLE_QUANT,
            quant_type="nf4",
            device=device,
        )
        self.row_sum_bound = math.inf

    def read_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        return compute_dtype

    def quantize_weight(self, weight: Tensor, compute_dtype: torch.dtype) -> None:
        packed, state, self.row_sum_bound = quantize_nf4(weight)
        self.weight = bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=NF4_BLOCK,
            compress_statistics=NF4_DOUBLE_QUANT,
            quant_type="nf4",
            module=self,
            bnb_quantized=True,
        )
        self.quant_state = state
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = True

    def forward(self, x: Tensor) -> Tensor:
        scale = fp16_scale(x, self.row_sum_bound) if self.compute_dtype == torch.float16 else 1.0
        inputs = (x if scale == 1.0 else x / scale).to(self.compute_dtype)
        out = bnb.matmul_4bit(inputs, self.weight, quant_state=self.weight.quant_state)  # [..., out]
        return _finish(out, x.dtype, scale, self.bias)


class Int8Ops(Ops):
    """Layers whose ``Linear`` stores LLM.int8() weights."""

    Linear = Int8Linear  # type: ignore[assignment]


class Nf4Ops(Ops):
    """Layers whose ``Linear`` stores NF4 weights."""

    Linear = Nf4Linear  # type: ignore[assignment]


OPS: dict[Quantization, type[Ops]] = {Quantization.INT8: Int8Ops, Quantization.NF4: Nf4Ops}


def probe(quantization: Quantization, device: torch.device) -> None:
    """Quantize and run one small layer on ``device`` the way loading will; raises what bitsandbytes raises."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=generator).to(device)
    x = torch.randn(2, 128, generator=generator).to(device)
    layer = OPS[quantization].Linear(128, 64, bias=False, device="meta")
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    layer.quantize_weight(weight.to(layer.read_dtype(dtype)), dtype)
    with torch.no_grad():
        out = layer.eval()(x.to(dtype)).float()
    expected = x @ weight.t()
    if not torch.isfinite(out).all() or (out - expected).abs().max() > 0.25 * expected.abs().max():
        raise RuntimeError(
            f"a probe layer computed wrong values on {device} (error {(out - expected).abs().max():.3g})"
        )
