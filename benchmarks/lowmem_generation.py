"""Memory of a whole 1024 px generation in the pipeline's low-memory mode, real-size models.

    python benchmarks/lowmem_generation.py --device cpu --dtype bf16 --vae-dtype fp32  # peak process memory, here
    python benchmarks/lowmem_generation.py                             # CUDA: max_memory_allocated
    python benchmarks/lowmem_generation.py --device cpu --small        # a quick smoke run anywhere

``PixArtPipeline(low_memory=True)`` runs the paper's recipe (docs/REFERENCE.md §5: "T5 in 8-bit, prompt
encoded, T5 freed, then the fp16 transformer, then the VAE"), one stage in memory at a time:
  text:    T5-XXL in int8 (a synthetic single file with the real key layout and random weights,
           see t5_quant_memory.py), one prompt encoded;
  denoise: PixArt-XL-2-1024-MS with random weights, one LCM step at 1024 px;
  decode:  the SD VAE (real config, random weights), tiled decode.
Every model is read from a file written once into the cache (about 11 GB in all).
Reports, per stage and overall, the peak of ``torch.cuda.max_memory_allocated`` (on CPU: the process's
peak resident memory, with what the previous stage freed handed back to the system first), what is
still held after each stage, and the seconds taken, as one JSON line. Targets: the paper says under
8 GB of GPU memory; issue 6 aims at 6 GB.

Random weights give meaningless images: only memory and time are measured. The tokenizer is the
shared fixture when found, else ``--tokenizer``, else a stand-in built in memory: the demo's character-level
tokenizer with T5's special tokens (the memory figure does not depend on it).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine, even where another copy is installed
sys.path.insert(1, str(Path(__file__).resolve().parent))

GB = 1e9
PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
SMALL_T5 = {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2}


def tokenizer_for_run(given: Path | None):
    """The T5 tokenizer folder given, or the shared fixture, or else the demo's stand-in built in memory."""
    from pixart_delta_core.demo.files import demo_tokenizer
    from pixart_delta_core.text.encoder import load_tokenizer

    if given is not None:
        return load_tokenizer(given)
    for parent in ROOT.parents:
        folder = parent / "shared" / "fixtures" / "t5_tokenizer"
        if folder.is_dir():
            return load_tokenizer(folder)
    return demo_tokenizer()


def transformer_file(cache: Path, small: bool) -> Path:
    """PixArt-XL-2-1024-MS (or a small one reading ``SMALL_T5``'s width) with random weights, written once."""
    from safetensors.torch import save_file

    from pixart_delta_core.demo.random_weights import randomize_
    from pixart_delta_core.models.transformer import PixArtTransformer
    from pixart_delta_core.models.transformer_config import TransformerConfig

    config = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)
    if small:
        config = TransformerConfig(
            depth=2, hidden_size=144, num_heads=2, mlp_hidden=576, caption_channels=SMALL_T5["d_model"],
            sample_size=32, micro_conditions=True,
        )  # fmt: skip
    path = cache / f"pixart-{'small' if small else 'xl-1024-ms'}-random.safetensors"
    if not path.is_file():
        weights = randomize_(PixArtTransformer(config)).reference_state_dict()
        save_file(weights, str(path.with_suffix(".partial")), metadata={"num_heads": str(config.num_heads)})
        path.with_suffix(".partial").rename(path)
    return path


def vae_files(cache: Path, small: bool) -> Path:
    """The SD VAE (or a small one) with random weights as a diffusers folder, written once."""
    from pixart_delta_core.demo.files import demo_vae
    from pixart_delta_core.demo.random_weights import randomize_

    folder = cache / f"vae-{'small' if small else 'sd'}-random"
    if not (folder / "config.json").is_file():
        blocks = (32, 32, 32, 32) if small else (128, 256, 512, 512)
        vae = randomize_(
            demo_vae(block_out_channels=blocks, layers_per_block=1 if small else 2, norm_num_groups=8 if small else 32)
        )
        vae.save_pretrained(folder)
    return folder


class Meter:
    """Peak memory and time of one stage: CUDA's allocator peak on a GPU, the process's resident peak on CPU."""

    def __init__(self, device) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from load_memory import reset_peak

            from pixart_delta_core.memory import return_free_heap

            return_free_heap()  # what the previous stage freed goes back to the system
            reset_peak()
        self.began = time.perf_counter()

    def stop(self) -> dict:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - self.began
        if self.device.type == "cuda":
            reserved = torch.cuda.max_memory_reserved(self.device)  # what the allocator held from the driver
            peak = torch.cuda.max_memory_allocated(self.device)
            gb = {"peak_gb": round(peak / GB, 3), "reserved_gb": round(reserved / GB, 3)}
            return {**gb, "seconds": round(seconds, 1)}
        from load_memory import rss_bytes

        return {"peak_gb": round(rss_bytes("VmHWM") / GB, 3), "seconds": round(seconds, 1)}

    def held_gb(self) -> float:
        """What is still allocated (CUDA) or resident (CPU) after a stage freed its model."""
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            return round(torch.cuda.memory_allocated(self.device) / GB, 3)
        from load_memory import rss_bytes

        from pixart_delta_core.memory import return_free_heap

        return_free_heap()
        return round(rss_bytes("VmRSS") / GB, 3)


def run(args: argparse.Namespace) -> dict:
    import torch
    from t5_quant_memory import synthetic_t5, t5_config, write_t5_file

    from pixart_delta_core.demo.files import demo_tokenizer
    from pixart_delta_core.pipeline.generation import PixArtPipeline

    device = torch.device(args.device)
    size = 256 if args.small else args.size
    prepared = time.perf_counter()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.small:
        t5_path = args.cache / "t5-small-synthetic.safetensors"
        if not t5_path.is_file():
            write_t5_file(t5_path, {**t5_config("xxl"), **SMALL_T5})
    else:
        t5_path = synthetic_t5(args.cache, "xxl")
    tokenizer = demo_tokenizer() if args.stand_in_tokenizer else tokenizer_for_run(args.tokenizer)
    tokenizer_folder = args.cache / "tokenizer-for-run"
    tokenizer.save_pretrained(tokenizer_folder)
    transformer_path = transformer_file(args.cache, args.small)
    vae_folder = vae_files(args.cache, args.small)
    result: dict = {"benchmark": "lowmem_generation", "device": str(device), "small": args.small, "size_px": size}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result |= {"dtype": args.dtype, "t5": f"{args.t5_quantization}, computing in {args.t5_dtype or args.dtype}"}
    result["vae_dtype"] = args.vae_dtype or args.dtype
    result["prepare_s"] = round(time.perf_counter() - prepared, 1)

    pipeline = PixArtPipeline(
        transformer_path,
        t5_path,
        vae_folder,
        tokenizer_folder,
        device=device,
        dtype=args.dtype,
        t5_dtype=args.t5_dtype or args.dtype,
        vae_dtype=args.vae_dtype or args.dtype,
        low_memory=True,
        t5_quantization=args.t5_quantization,
    )
    meter = Meter(device)
    stages: dict = {}
    current: list[str] = []

    def on_stage(name: str) -> None:
        if current:  # the stage before has run and freed its model
            stages[current.pop()] = {**meter.stop(), "held_after_gb": meter.held_gb()}
        if name != "done":
            current.append(name)
            meter.start()

    pipeline(PROMPT, width=size, height=size, resolution_binning=False, steps=args.steps, seed=0, on_stage=on_stage)
    result["stages"] = stages
    result["peak_gb"] = max(s["peak_gb"] for s in stages.values())
    result["seconds"] = round(sum(s["seconds"] for s in stages.values()), 2)
    result["target_gb"] = {"issue": 6.0, "paper": 8.0}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny models at 256 px: a smoke run of the script")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=1, help="LCM steps (one is enough for the memory figure)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--t5-quantization", default="int8", choices=("int8", "nf4", "none"))
    parser.add_argument("--t5-dtype", choices=("fp16", "bf16", "fp32"), help="T5's compute dtype (default: --dtype)")
    parser.add_argument("--vae-dtype", choices=("fp16", "bf16", "fp32"), help="the VAE's dtype (default: --dtype)")
    parser.add_argument("--tokenizer", type=Path, help="a T5 tokenizer folder (default: the shared fixture)")
    parser.add_argument("--stand-in-tokenizer", action="store_true", help="use the stand-in even if a T5 one is found")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pixart-delta-bench")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("CUDA is not available here: pass --device cpu (with --small for a quick run)")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
