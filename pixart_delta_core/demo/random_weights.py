"""Random weights with sensible scales, for tests, benchmarks and the built-in demo model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..text.t5_config import T5EncoderConfig


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and buffer of ``module`` in place from ``seed`` (on the CPU generator).

    Matrices get N(0, 1/fan_in), biases N(0, 0.02^2), modulation tables and null captions
    N(0, 1/width): activations keep unit scale through any depth.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        if tensor.ndim >= 2:
            std = (tensor[0].numel() if "scale_shift_table" not in name else tensor.shape[-1]) ** -0.5
        else:
            std = 0.02
        values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std
        with torch.no_grad():
            tensor.copy_(values.to(tensor.dtype))
    return module


def t5_tensor(key: str, shape: tuple[int, ...], config: T5EncoderConfig, generator: torch.Generator) -> Tensor:
    """One tensor of a T5-v1.1 encoder (HF name) drawn at T5's own initial scales, in fp32.

    q: N(0, 1/(d_model d_kv)) (T5 does not scale its attention logits); k, v, wi: N(0, 1/d_model);
    o: N(0, 1/(heads d_kv)); wo: N(0, 1/d_ff); embedding and position bias: N(0, 1); RMS-norm gains:
    1 + N(0, 0.1^2).
    """
    d_model, d_kv, heads, d_ff = config.d_model, config.d_kv, config.num_heads, config.d_ff
    layer = key.rsplit(".", 2)[-2]
    variance = {"q": d_model * d_kv, "k": d_model, "v": d_model, "o": heads * d_kv}
    variance |= {"wi_0": d_model, "wi_1": d_model, "wo": d_ff}
    values = torch.randn(shape, generator=generator)
    if "layer_norm" in key:
        return values.mul_(0.1).add_(1.0)
    if layer in variance:
        return values.mul_(variance[layer] ** -0.5)
    return values  # shared (the embedding), relative_attention_bias


def t5_weights(config: T5EncoderConfig, seed: int = 0, outlier_channels: int = 0) -> dict[str, Tensor]:
    """A T5-v1.1 encoder's tensors as a single file holds them (HF names, embedding once), fp32, from ``seed``.

    ``outlier_channels`` residual channels carry the large, systematic features trained language models develop
    (LLM.int8(), Dettmers et al. 2022, §3): 20x larger in the embedding and 8x larger RMS-norm gains before
    attention and feed-forward, so those input features of every linear layer pass LLM.int8()'s threshold.
    """
    from ..text.t5 import TIED, build_t5

    generator = torch.Generator().manual_seed(seed)
    shapes = {k: tuple(v.shape) for k, v in build_t5(config, torch.float32).state_dict().items() if k not in TIED}
    weights = {key: t5_tensor(key, shape, config, generator) for key, shape in shapes.items()}
    if outlier_channels:
        channels = torch.randperm(config.d_model, generator=generator)[:outlier_channels]
        weights["shared.weight"][:, channels] *= 20.0
        for key, value in weights.items():
            if key.endswith("layer_norm.weight") and "final" not in key:
                value[channels] *= 8.0
    return weights
