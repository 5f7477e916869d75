"""Peak process memory while loading a T5-XXL single file into int8, NF4 (and bf16 for reference), CPU.

    python benchmarks/t5_quant_memory.py [--size xxl|mid] [--modes int8,nf4,bf16] [--dtype bf16] [--cache DIR]

Writes a synthetic ``t5xxl_fp16.safetensors`` once into the cache folder (default: under the system
temp dir): T5-v1.1-XXL's real key layout (24 blocks, width 4096, feed-forward 10240, vocabulary 32128;
checked against the shared manifest when it is there), random values at T5's own scales, fp16, about
9.5 GB. It is written tensor by tensor, so the writer never holds more than one tensor. ``--size mid``
writes a 4-layer, 1024-wide one with a 4096-token vocabulary for tests.

Each mode loads the file in a fresh process with ``load_t5(..., quantization=...)`` and reports the peak
resident memory of that process (``peak_rss_gb``, VmHWM: everything, Python, torch and bitsandbytes
included), the loader's own growth (from after bitsandbytes was imported and checked to the peak), the
bytes the loaded model holds and the load time. Targets (issue 6): int8 <= 6 GB, NF4 <= 4 GB.
Prints one JSON line. Run one at a time: the bf16 reference needs about 10 GB of RAM and is skipped,
saying so, when the machine has less available.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine, even where another copy is installed
sys.path.insert(1, str(Path(__file__).resolve().parent))
from load_memory import T5_SIZES, model_bytes, reset_peak, rss_bytes  # noqa: E402

if TYPE_CHECKING:
    from pixart_delta_core.text.t5_config import T5EncoderConfig

MODES = ("int8", "nf4", "bf16")
TARGET_GB = {"int8": 6.0, "nf4": 4.0}
SIZES = {"xxl": {}, "mid": {**T5_SIZES, "num_layers": 4, "vocab_size": 4096}}  # mid: linear layers dominate
MANIFEST = "t5xxl_fp16.safetensors.json"
GB = 1e9


def t5_config(size: str) -> T5EncoderConfig:
    from pixart_delta_core.text.t5_config import T5_V1_1_XXL

    return replace(T5_V1_1_XXL, **SIZES[size])


def t5_layout(config: T5EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a single-file T5 encoder of ``config`` (HF names, the embedding once)."""
    import torch

    from pixart_delta_core.text.t5 import TIED, build_t5

    return {k: tuple(v.shape) for k, v in build_t5(config, torch.float32).state_dict().items() if k not in TIED}


def check_against_manifest(layout: dict[str, tuple[int, ...]]) -> None:
    """The synthetic XXL file has the released file's keys and shapes (when the shared manifest is at hand)."""
    found = [p / "shared/fixtures/manifests" / MANIFEST for p in ROOT.parents]
    manifest = next((m for m in found if m.is_file()), None)
    if manifest is None:
        return
    real = {k: tuple(v["shape"]) for k, v in json.loads(manifest.read_text())["keys"].items()}
    if real != layout:
        raise SystemExit(f"the synthetic T5-XXL layout differs from {manifest}: {sorted(real.keys() ^ layout.keys())}")


def write_t5_file(path: Path, config: T5EncoderConfig, file_dtype: str = "fp16", seed: int = 0) -> None:
    """Stream a safetensors file to ``path``: header first, then one random tensor at a time."""
    import torch

    from pixart_delta_core.demo.random_weights import t5_tensor

    dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[file_dtype])
    code = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]
    layout = t5_layout(config)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in layout.items():
        size = dtype.itemsize
        for n in shape:
            size *= n
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    needed = 8 + len(raw) + offset
    free = shutil.disk_usage(path.parent).free
    if free < needed + 2 * GB:
        raise SystemExit(f"{path.parent}: {needed / GB:.1f} GB needed for the synthetic T5, {free / GB:.1f} GB free")
    generator = torch.Generator().manual_seed(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape in layout.items():
            tensor = t5_tensor(key, shape, config, generator).to(dtype)
            f.write(memoryview(tensor.view(torch.uint8).numpy()))
            del tensor
    partial.rename(path)


def synthetic_t5(cache: Path, size: str, file_dtype: str = "fp16") -> Path:
    """The cached synthetic T5 file of ``size``, written on first use."""
    config = t5_config(size)
    if size == "xxl":
        check_against_manifest(t5_layout(config))
    folder = cache / f"t5-{size}-synthetic"
    path = folder / f"t5{size}_{file_dtype}.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_t5_file(path, config, file_dtype)
    return path


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, path: Path, dtype: str) -> dict:
    """Runs in a fresh process: load once, report the process's peak memory and the model's size."""
    from transformers import T5EncoderModel  # noqa: F401  (load_t5 imports it on first use: not the loader's growth)

    from pixart_delta_core.quant.quantization import parse_quantization
    from pixart_delta_core.quant.streaming import quantized_ops
    from pixart_delta_core.text.t5 import load_t5

    quantization = mode if mode in ("int8", "nf4") else "none"
    if quantization != "none":  # growth is the loader's own: bitsandbytes imported and checked before
        quantized_ops(parse_quantization(quantization), "cpu")
    before = rss_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    model = load_t5(path, dtype=mode if quantization == "none" else dtype, device="cpu", quantization=quantization)
    seconds = time.perf_counter() - start
    peak = rss_bytes("VmHWM")
    return {
        "peak_rss_gb": round(peak / GB, 3),
        "growth_gb": round((peak - before) / GB, 3),
        "before_gb": round(before / GB, 3),
        "model_gb": round(model_bytes(model) / GB, 3),
        "load_s": round(seconds, 1),
    }


def measure(mode: str, path: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--path", str(path), "--dtype", dtype],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode:
        raise SystemExit(f"loading in {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="xxl")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)}")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"), help="compute dtype")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pixart-delta-bench")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.dtype)))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}: choose among {', '.join(MODES)}")
    start = time.perf_counter()
    path = synthetic_t5(args.cache, args.size)
    result: dict = {"benchmark": "t5_quant_memory", "size": args.size, "file": str(path)}
    result |= {"file_gb": round(path.stat().st_size / GB, 3), "file_ready_s": round(time.perf_counter() - start, 1)}
    result["dtype"] = args.dtype
    for mode in modes:
        needed = 1.15 * path.stat().st_size * (2 if args.dtype == "fp32" else 1)
        if mode == "bf16" and available_bytes() < needed:
            result[mode] = {"skipped": f"needs about {needed / GB:.1f} GB, {available_bytes() / GB:.1f} GB available"}
            continue
        result[mode] = measure(mode, path, args.dtype)
        if mode in TARGET_GB:
            result[mode]["target_gb"] = TARGET_GB[mode]
    reference = result.get("bf16", {}).get("peak_rss_gb")
    for mode in ("int8", "nf4"):
        if reference and mode in result:
            result[f"{mode}_over_bf16"] = round(result[mode]["peak_rss_gb"] / reference, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
