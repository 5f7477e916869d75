"""T5-v1.1's feed-forward made safe in fp16 (docs/REFERENCE.md §2).

A module of its own because it subclasses a transformers layer: ``t5.py`` imports it only when it
builds a T5, so importing the pack does not import transformers.
"""

from __future__ import annotations

import torch
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5DenseGatedActDense


class Fp32ProductFeedForward(T5DenseGatedActDense):
    """T5-v1.1's gated-GELU feed-forward with its gated product formed in fp32 (docs/REFERENCE.md §2).

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
