"""Cost of a rank-32 LoRA on a real-size PixArt-XL: reading and applying it, merged vs on the fly, and the per-step
overhead of the on-the-fly path.

    python benchmarks/lora_apply.py [--size 256] [--repeats 3] [--threads 1] [--rank 32]

Builds the real configuration (PixArt-XL-2 1024-MS: depth 28, width 1152, 16 heads) with random fp32 weights
and a random rank-32 LoRA in the PEFT layout on what the reference LCM-LoRA adapts (every block's attention and
feed-forward layers, the adaLN linear, the caption and timestep embedders, the output layer), saved as a
safetensors file. Then, for each mode, times ``read_lora`` + ``apply_loras`` and counts the bytes the patched
model holds beyond the base model's (tensors it does not share with it), and times plain, merged and on-the-fly
forwards in alternation (after one warm-up each; CPU time of this process, steadier than wall time on a shared
machine). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.lora import LoraMode, apply_loras
from pixart_delta_core.models.lora_config import read_lora
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import DIFFUSERS_TABLE, TransformerConfig

XL = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)
# diffusers module -> (in, out) for PixArt-XL; blocks' layers get "transformer_blocks.{i}." in front.
BLOCK_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v")
BLOCK_LAYERS += ("attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
OTHER_LAYERS = ("adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2", "proj_out")
OTHER_LAYERS += ("adaln_single.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_2")


def random_lora(model: PixArtTransformer, rank: int) -> dict[str, torch.Tensor]:
    """A random PEFT-layout LoRA of ``rank`` on the layers above, sized from ``model``'s own layers."""
    generator = torch.Generator().manual_seed(1)
    names = [f"transformer_blocks.{i}.{n}" for i in range(model.config.depth) for n in BLOCK_LAYERS]
    weights = {}
    for name in [*names, *OTHER_LAYERS]:
        ours, _, parts = DIFFUSERS_TABLE.locate(name)
        layer = model.get_submodule(ours)
        n_out, n_in = layer.out_features // parts, layer.in_features
        weights[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=generator) * n_in**-0.5
        weights[f"transformer.{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=generator) * 0.01
    return weights


def extra_bytes(patched: torch.nn.Module, base: torch.nn.Module) -> int:
    """Bytes of the tensors ``patched`` holds that ``base`` does not."""
    shared = {t.data_ptr() for t in [*base.parameters(), *base.buffers()]}
    mine = {t.data_ptr(): t.numel() * t.element_size() for t in [*patched.parameters(), *patched.buffers()]}
    return sum(size for ptr, size in mine.items() if ptr not in shared)


def cpu_seconds(run) -> float:
    start = time.process_time()
    with torch.no_grad():
        run()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards of each kind")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = randomize_(PixArtTransformer(XL, device="meta").to_empty(device="cpu"), seed=0).eval()
    result: dict[str, object] = {"config": "PixArt-XL-2 1024-MS, fp32, CPU", "rank": args.rank}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        save_file(random_lora(base, args.rank), str(path))
        result["lora_file_mb"] = round(path.stat().st_size / 2**20, 1)
        patched = {}
        for mode in (LoraMode.MERGE, LoraMode.ON_THE_FLY):
            start = time.perf_counter()
            lora = read_lora(path)
            patched[mode] = apply_loras(base, [(lora, 1.0)], mode)
            result[f"{mode.value}_apply_s"] = round(time.perf_counter() - start, 2)
            result[f"{mode.value}_extra_mb"] = round(extra_bytes(patched[mode], base) / 2**20, 1)
        result["layers_adapted"] = len(lora.targets)
    g = torch.Generator().manual_seed(2)
    latent = args.size // 8
    inputs = (torch.randn(1, 4, latent, latent, generator=g), torch.tensor([500.0]), torch.randn(1, 120, 4096))
    runs = {"plain": base, "merged": patched[LoraMode.MERGE], "on_the_fly": patched[LoraMode.ON_THE_FLY]}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for model in runs.values():
        cpu_seconds(lambda m=model: m(*inputs))  # warm-up
    for _ in range(args.repeats):
        for name, model in runs.items():
            times[name].append(cpu_seconds(lambda m=model: m(*inputs)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result.update({f"{name}_step_cpu_s": round(value, 3) for name, value in medians.items()})
    result["merged_step_ratio"] = round(medians["merged"] / medians["plain"], 3)
    result["on_the_fly_step_ratio"] = round(medians["on_the_fly"] / medians["plain"], 3)
    result.update({"size": args.size, "threads": args.threads, "repeats": args.repeats})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
