"""Peak memory while loading a checkpoint: ours vs diffusers/transformers, each in a fresh process.

    python benchmarks/load_memory.py [--depth 4] [--format pth] [--file-dtype fp32] [--dtype bf16]
    python benchmarks/load_memory.py --model t5 [--depth 4] [--format safetensors] [--file-dtype fp8_e4m3fn]

Writes a synthetic checkpoint (random weights, real key layout) into a cache folder once: a
PixArt-XL-width transformer, or a T5-v1.1 encoder 1024 wide with T5-XXL's vocabulary. Then loads it
in child processes and prints one JSON line: for each loader, the growth of the process's resident
memory while loading (peak minus before) over the size of the loaded weights. 1.0 means no copy
beyond the model itself. diffusers runs only for the diffusers folder format (its own layout),
transformers only for the T5 HF folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine, even where another copy is installed
FORMATS = {"transformer": ("pth", "safetensors", "diffusers"), "t5": ("safetensors", "hf-folder")}
FILE_DTYPES = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")
T5_SIZES = {"d_model": 1024, "d_kv": 64, "num_heads": 16, "d_ff": 2816}  # T5-v1.1-large's widths


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

    from pixart_delta_core.demo.random_weights import randomize_
    from pixart_delta_core.devices import parse_dtype
    from pixart_delta_core.models.transformer import PixArtTransformer
    from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers

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


def write_t5(folder: Path, depth: int, fmt: str, file_dtype: str) -> Path:
    """A T5-v1.1 encoder in HF names, random at T5's own scales: a single file (as ComfyUI users hold them) or an
    HF folder."""
    from safetensors.torch import save_file

    from pixart_delta_core.demo.random_weights import t5_weights
    from pixart_delta_core.text.t5_config import T5_V1_1_XXL

    config = replace(T5_V1_1_XXL, **T5_SIZES, num_layers=depth)
    dtype = _file_dtype(file_dtype)
    weights = {key: value.to(dtype) for key, value in t5_weights(config, seed=0).items()}
    if fmt == "safetensors":
        path = folder / f"t5_{file_dtype}.safetensors"
        save_file(weights, str(path))
    else:
        path = folder / "text_encoder"
        path.mkdir()
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps({**asdict(config), "model_type": "t5"}))
    return path


def _file_dtype(name: str):
    import torch

    from pixart_delta_core.devices import parse_dtype

    return getattr(torch, name.replace("fp8", "float8")) if name.startswith("fp8") else parse_dtype(name)


def model_bytes(model) -> int:
    """Bytes held by a model's tensors, each shared (tied) tensor counted once."""
    held = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
    return sum(held.values())


def child(model_kind: str, loader: str, path: Path, dtype: str) -> dict:
    """Runs in a fresh process: load once, report memory growth and model size."""
    from pixart_delta_core.devices import parse_dtype
    from pixart_delta_core.models.transformer import load_transformer
    from pixart_delta_core.text.t5 import load_t5

    if loader == "diffusers":
        from diffusers import PixArtTransformer2DModel
    if loader == "transformers" or model_kind == "t5":  # our T5 loader imports transformers on first use
        from transformers import T5EncoderModel
    before = rss_bytes("VmRSS")
    reset_peak()
    if loader == "ours":
        model = load_t5(path, dtype=dtype) if model_kind == "t5" else load_transformer(path, dtype=dtype)
    elif loader == "transformers":
        model = T5EncoderModel.from_pretrained(path, dtype=parse_dtype(dtype), local_files_only=True)
    else:
        model = PixArtTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=parse_dtype(dtype))
    for tensor in model.state_dict().values():  # a loader may leave weights memory-mapped: touch them all
        tensor.sum()
    peak = rss_bytes("VmHWM")
    size = model_bytes(model)
    return {"growth_bytes": peak - before, "model_bytes": size, "ratio": round((peak - before) / size, 3)}


def measure(model_kind: str, loader: str, path: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--model", model_kind, "--child", loader, "--path", str(path), "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(FORMATS), default="transformer")
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks or T5 layers")
    parser.add_argument(
        "--format", default=None, help="transformer: pth, safetensors, diffusers; t5: safetensors, hf-folder"
    )
    parser.add_argument("--file-dtype", default=None, choices=FILE_DTYPES, help="transformer default fp32, t5 fp16")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--ours-only", action="store_true", help="skip the diffusers/transformers loader")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pixart-delta-bench")
    parser.add_argument("--child", choices=("ours", "diffusers", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.path, args.dtype)))
        return
    fmt = args.format or FORMATS[args.model][0]
    if fmt not in FORMATS[args.model]:
        parser.error(f"--format for {args.model}: one of {', '.join(FORMATS[args.model])}")
    file_dtype = args.file_dtype or ("fp16" if args.model == "t5" else "fp32")
    folder = args.cache / f"load-{args.model}-{fmt}-{file_dtype}-d{args.depth}"
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write = write_t5 if args.model == "t5" else write_checkpoint
        write(folder, args.depth, fmt, file_dtype)
        done.write_text("")
    path = next(p for p in folder.iterdir() if p.name != "done")
    result = {"benchmark": "load_memory", "model": args.model, "format": fmt, "file_dtype": file_dtype}
    result |= {"dtype": args.dtype, "ours": measure(args.model, "ours", path, args.dtype)}
    other = {"diffusers": "diffusers", "hf-folder": "transformers"}.get(fmt)
    if other and not args.ours_only:
        result[other] = measure(args.model, other, path, args.dtype)
        result[f"ours_over_{other}"] = round(result["ours"]["growth_bytes"] / result[other]["growth_bytes"], 3)
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(result))


if __name__ == "__main__":
    main()
