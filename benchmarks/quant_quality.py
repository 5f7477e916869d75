"""Quality of int8 (LLM.int8) and NF4 weights against bf16 and fp32, on random weights at real widths (CPU).

    python benchmarks/quant_quality.py [--t5-layers 6] [--depth 4]

T5: a T5-v1.1 encoder 1024 wide (T5-v1.1-large's widths, XXL's vocabulary) drawn at T5's own initial
scales, once plain and once "trained-looking" (a few residual channels carrying the large systematic
features of trained language models, which LLM.int8()'s outlier threshold exists for); the embeddings
of random token ids are compared per token. Transformer: PixArt-XL's width (1152, 16 heads) with
``--depth`` blocks, one forward at a 32x32 latent with a half-masked caption; its noise prediction is
compared. Each comparison gives the per-token (per-sample) cosine similarity, mean and minimum, the
largest absolute error and that error over the reference's largest value. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine, even where another copy is installed
sys.path.insert(1, str(Path(__file__).resolve().parent))
from load_memory import T5_SIZES  # noqa: E402


def compare(ours, reference, mask=None) -> dict:
    """Cosine per row (token or sample) and largest errors of ``ours`` against ``reference`` (both [N, C])."""
    import torch

    ours, reference = ours.float(), reference.float()
    if mask is not None:
        ours, reference = ours[mask], reference[mask]
    cos = torch.nn.functional.cosine_similarity(ours, reference, dim=-1)
    err = (ours - reference).abs().max().item()
    return {
        "cos_mean": round(cos.mean().item(), 6),
        "cos_min": round(cos.min().item(), 6),
        "max_abs_err": round(err, 4),
        "max_rel_err": round(err / reference.abs().max().item(), 4),
    }


def t5_quality(layers: int, outlier_channels: int) -> dict:
    import torch

    from pixart_delta_core.demo.random_weights import t5_weights
    from pixart_delta_core.quant.bnb_layers import Int8Linear
    from pixart_delta_core.text.t5 import load_t5
    from pixart_delta_core.text.t5_config import T5_V1_1_XXL

    config = replace(T5_V1_1_XXL, **T5_SIZES, num_layers=layers)
    weights = t5_weights(config, seed=0, outlier_channels=outlier_channels)
    ids = torch.randint(2, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))

    def embed(dtype: str, quantization: str = "none", threshold: float | None = None):
        model = load_t5(weights, dtype, "cpu", quantization)
        if threshold is not None:
            for layer in model.modules():
                if isinstance(layer, Int8Linear):
                    layer.outlier_threshold = threshold
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state.flatten(0, 1)  # [tokens, C]

    fp32, bf16 = embed("fp32"), embed("bf16")
    int8, nf4 = embed("bf16", "int8"), embed("bf16", "nf4")
    result = {"vs_fp32": {"bf16": compare(bf16, fp32), "int8": compare(int8, fp32), "nf4": compare(nf4, fp32)}}
    result["vs_bf16"] = {"int8": compare(int8, bf16), "nf4": compare(nf4, bf16)}
    result["vs_fp32"]["int8_fp16"] = compare(embed("fp16", "int8"), fp32)
    result["vs_fp32"]["int8_no_outlier_split"] = compare(embed("bf16", "int8", threshold=0.0), fp32)
    return result


def transformer_quality(depth: int) -> dict:
    import torch

    from pixart_delta_core.checkpoints.loading import load_strict, place_tensor
    from pixart_delta_core.checkpoints.sources import StateDictSource
    from pixart_delta_core.demo.random_weights import randomize_
    from pixart_delta_core.models.transformer import (
        RECOMPUTED,
        PixArtTransformer,
        inspect_transformer,
        load_transformer,
    )
    from pixart_delta_core.models.transformer_config import TransformerConfig
    from pixart_delta_core.quant.quantization import Quantization
    from pixart_delta_core.quant.streaming import quantize_linears_, quantized_ops, quantizing_place

    config = TransformerConfig(depth=depth, sample_size=32, micro_conditions=True, interpolation_scale=2.0)
    weights = randomize_(PixArtTransformer(config)).state_dict()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 32, 32, generator=generator)
    caption = torch.randn(2, 120, 4096, generator=generator) * 0.3
    mask = torch.ones(2, 120, dtype=torch.long)
    mask[1, 60:] = 0
    hints = {"sample_size": 32}

    def predict(model) -> torch.Tensor:
        with torch.no_grad():
            return model(x, torch.tensor([500.0]), caption, mask)[:, :4].flatten(1)  # [B, 4 * 32 * 32]

    def all_but_time_embedders(quantization: Quantization) -> PixArtTransformer:
        """Also t_block, the caption projection and the final layer quantized (the time embedders read their
        weight's dtype, so they cannot be)."""
        model = PixArtTransformer(inspect_transformer(weights, hints).config, device="meta")
        ops = quantized_ops(quantization, "cpu")
        for part in (model.blocks, model.t_block, model.y_embedder, model.final_layer):
            quantize_linears_(part, ops)
        load_strict(model, StateDictSource(weights), torch.float32, torch.device("cpu"), ignore=RECOMPUTED,
                    place=quantizing_place(place_tensor))  # fmt: skip
        return model

    fp32 = predict(load_transformer(weights, "fp32", hints=hints))
    result = {"bf16": compare(predict(load_transformer(weights, "bf16", hints=hints)), fp32)}
    for mode in (Quantization.INT8, Quantization.NF4):
        for dtype in ("fp32", "bf16"):
            model = load_transformer(weights, dtype, hints=hints, quantization=mode)
            result[f"{mode.value}_{dtype}"] = compare(predict(model), fp32)
        result[f"{mode.value}_fp32_all_but_time_embedders"] = compare(predict(all_but_time_embedders(mode)), fp32)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t5-layers", type=int, default=6)
    parser.add_argument("--outlier-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks")
    args = parser.parse_args()
    t5 = {"widths": T5_SIZES, "layers": args.t5_layers, "random": t5_quality(args.t5_layers, 0)}
    t5[f"outliers_{args.outlier_channels}"] = t5_quality(args.t5_layers, args.outlier_channels)
    result = {
        "benchmark": "quant_quality",
        "t5": t5,
        "transformer": {"depth": args.depth, **transformer_quality(args.depth)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
