"""Peak memory while loading a transformer checkpoint: ours vs diffusers, each in a fresh process.

    python benchmarks/load_memory.py [--depth 4] [--format pth] [--file-dtype fp32] [--dtype bf16]

Writes a synthetic PixArt-XL-width checkpoint (random weights, real key layout) into a cache
folder once, then loads it in child processes and prints one JSON line: for each loader, the
growth of the process's resident memory while loading (peak minus before) over the size of the
loaded weights. 1.0 means no copy beyond the model itself. diffusers runs only for the diffusers
folder format (its own layout).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("pth", "safetensors", "diffusers")


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def write_checkpoint(folder: Path, depth: int, fmt: str, file_dtype: str) -> Path:
    import torch
    from safetensors.torch import save_file

    from pixart_delta_core.config import TransformerConfig
    from pixart_delta_core.layouts import REFERENCE_ONLY, to_diffusers
    from pixart_delta_core.loading import parse_dtype
    from pixart_delta_core.random_weights import randomize_
    from pixart_delta_core.transformer import PixArtTransformer

    config = TransformerConfig(depth=depth, sample_size=128, micro_conditions=True, interpolation_scale=2.0)
    model = randomize_(PixArtTransformer(config).to(parse_dtype(file_dtype)))
    sd = model.state_dict()
    if fmt == "pth":
        path = folder / "model.pth"
        torch.save({"state_dict": sd}, path)
    elif fmt == "safetensors":
        path = folder / "model.safetensors"
        save_file(sd, str(path))
    else:
        path = folder / "diffusers"
        (path / "transformer").mkdir(parents=True)
        weights = {k: v for k, v in to_diffusers(sd).items() if k not in REFERENCE_ONLY}
        save_file(weights, str(path / "transformer" / "diffusion_pytorch_model.safetensors"))
        diffusers_config = {"_class_name": "PixArtTransformer2DModel", "num_layers": depth, "sample_size": 128}
        diffusers_config |= {"caption_channels": 4096, "out_channels": 8, "use_additional_conditions": True}
        (path / "transformer" / "config.json").write_text(json.dumps(diffusers_config))
        (path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    return path


def child(loader: str, path: Path, dtype: str) -> dict:
    """Runs in a fresh process: load once, report memory growth and model size."""
    import torch

    from pixart_delta_core.loading import load_transformer, parse_dtype

    if loader == "diffusers":
        from diffusers import PixArtTransformer2DModel
    before = rss_bytes("VmRSS")
    reset_peak()
    if loader == "ours":
        model = load_transformer(path, dtype=dtype)
    else:
        model = PixArtTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=parse_dtype(dtype))
    for tensor in model.state_dict().values():  # a loader may leave weights memory-mapped: touch them all
        tensor.float().sum()
    peak = rss_bytes("VmHWM")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    del torch
    return {"growth_bytes": peak - before, "model_bytes": size, "ratio": round((peak - before) / size, 3)}


def measure(loader: str, path: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", loader, "--path", str(path), "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--format", choices=FORMATS, default="pth")
    parser.add_argument("--file-dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--ours-only", action="store_true", help="skip the diffusers loader")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pixart-delta-bench")
    parser.add_argument("--child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.dtype)))
        return
    folder = args.cache / f"load-{args.format}-{args.file_dtype}-d{args.depth}"
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_checkpoint(folder, args.depth, args.format, args.file_dtype)
        done.write_text("")
    path = next(p for p in folder.iterdir() if p.name != "done")
    result = {"benchmark": "load_memory", "format": args.format, "file_dtype": args.file_dtype, "dtype": args.dtype}
    result["ours"] = measure("ours", path, args.dtype)
    if args.format == "diffusers" and not args.ours_only:
        result["diffusers"] = measure("diffusers", path, args.dtype)
        result["ours_over_diffusers"] = round(result["ours"]["growth_bytes"] / result["diffusers"]["growth_bytes"], 3)
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(result))


if __name__ == "__main__":
    main()
