"""Cost of one transformer forward with the ControlNet-Transformer, relative to a plain forward.

    python benchmarks/controlnet_step.py [--size 256] [--batch 1] [--repeats 3] [--threads 1] [--device cpu]

Builds the real configuration (PixArt-XL-2 1024-MS base: depth 28, width 1152, 16 heads; 13 copies)
with random weights, then times plain and controlled forwards in alternation (after one warm-up
each) and prints one JSON line. ``ratio`` compares median CPU times of this process on the CPU
(other work on a shared machine disturbs them far less than wall time) and median wall times on
a GPU; ``wall_ratio`` and the wall times are always given too. The copies add 13 blocks to 28,
plus 14 small projections: expect about 1.45-1.5x. The control hook is built inside each timed
controlled forward, so its one patch embedding counts too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.devices import parse_dtype
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.controlnet_config import DEFAULT_COPIES, ControlNetConfig
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import TransformerConfig

BASE = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)


def timed(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one run."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards of each kind")
    parser.add_argument("--copies", type=int, default=DEFAULT_COPIES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)

    # built on the meta device, then filled once by randomize_ (no default initialisation to throw away)
    base = randomize_(PixArtTransformer(BASE, device="meta").to_empty(device="cpu"), seed=0).to(device, dtype)
    config = ControlNetConfig.for_base(BASE, args.copies)
    net = randomize_(ControlNetTransformer(config, device="meta").to_empty(device="cpu"), seed=1).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    latent = args.size // 8
    x = torch.randn(args.batch, 4, latent, latent, generator=g).to(device)
    control = torch.randn(1, 4, latent, latent, generator=g).to(device)
    caption = torch.randn(args.batch, BASE.caption_length, BASE.caption_channels, generator=g).to(device)
    t = torch.full((args.batch,), 500.0, device=device)

    runs = {
        "plain": lambda: base(x, t, caption),
        "controlnet": lambda: base(x, t, caption, control=net.hook(base, control)),
    }
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            timed(run, device)  # warm-up
        for _ in range(args.repeats):
            for name, run in runs.items():
                wall, cpu = timed(run, device)
                walls[name].append(wall)
                cpus[name].append(cpu)
    plain, controlled = (statistics.median(walls[name]) for name in runs)
    wall_ratio = controlled / plain
    cpu_ratio = statistics.median(cpus["controlnet"]) / statistics.median(cpus["plain"])
    result = {
        "benchmark": "controlnet_step",
        "ratio": round(cpu_ratio if device.type == "cpu" else wall_ratio, 3),
        "wall_ratio": round(wall_ratio, 3),
        "plain_s": round(plain, 4),
        "controlnet_s": round(controlled, 4),
        "block_ratio": round((BASE.depth + args.copies) / BASE.depth, 3),
        "size_px": args.size,
        "tokens": (latent // BASE.patch_size) ** 2,
        "batch": args.batch,
        "depth": BASE.depth,
        "copies": args.copies,
        "width": BASE.hidden_size,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "wall_s": {name: [round(v, 3) for v in values] for name, values in walls.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
