"""T5-v1.1 with quantized linear layers (REFERENCE.md §2, §5: the paper's 8-bit T5).

Every linear layer of the encoder blocks (attention q, k, v, o; feed-forward wi_0, wi_1, wo) is
quantized; the token embedding, the RMS-norm gains and the relative position bias stay in the compute
dtype. The feed-forward forms its gated product in fp32, as the fp16 guard does: the quantized ``wo``
scales it into fp16's range itself, so every dtype is safe from T5-v1.1's overflow.
"""

from __future__ import annotations

import torch
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

from .loading import Place
from .quant import Quantization, quantize_linears_, quantized_ops, quantizing_place


class QuantizedFeedForward(T5DenseGatedActDense):
    """T5-v1.1's gated-GELU feed-forward for quantized layers: product in fp32, output in ``out_dtype``.

    In fp16 the output stays fp32 and carries the residual stream from then on, as the unquantized fp16 guard
    (``t5_loading.Fp16SafeFeedForward``) does; in bf16 and fp32 it returns to the model's dtype.
    """

    def __init__(self, config: T5Config, dtype: torch.dtype) -> None:
        super().__init__(config)
        self.out_dtype = torch.float32 if dtype == torch.float16 else dtype

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.act(self.wi_0(hidden_states).float())  # [B, L, d_ff] fp32
        value = self.wi_1(hidden_states).float()  # [B, L, d_ff] fp32
        return self.wo(gate * value).to(self.out_dtype)  # [B, L, d_model]


def quantize_t5_(
    model: T5EncoderModel, quantization: Quantization, dtype: torch.dtype, device: torch.device | str, fallback: Place
) -> Place:
    """Give a meta-device T5 encoder the quantized feed-forward and empty quantized layers in its blocks; returns
    the ``Place`` step to load it with."""
    ops = quantized_ops(quantization, device)
    with torch.device("meta"):
        for block in model.encoder.block:
            block.layer[-1].DenseReluDense = QuantizedFeedForward(model.config, dtype)
    quantize_linears_(model.encoder.block, ops)
    return quantizing_place(fallback)
