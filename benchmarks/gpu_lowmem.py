"""Memory of a whole 1024 px generation in the paper's low-memory recipe, one stage on the device at a time.

    python benchmarks/gpu_lowmem.py                         # CUDA, real sizes (needs ~12 GB of disk once)
    python benchmarks/gpu_lowmem.py --device cpu --small    # a quick smoke run anywhere

Stages, each loaded, run and freed before the next (REFERENCE.md §5: "T5 in 8-bit, prompt encoded,
T5 freed, then the fp16 transformer, then the VAE"):
  text:    T5-XXL in int8 (a synthetic single file with the real key layout and random weights,
           see t5_quant_memory.py), one prompt encoded;
  denoise: PixArt-XL-2-1024-MS with random weights in fp16, one LCM step at 1024 px;
  decode:  the SD VAE (real config, random weights) in fp16, tiled decode.
Every model is read from a file written once into the cache (about 11 GB in all), so on the CPU too
a stage's peak holds only what that stage loaded.
Reports, per stage and overall, the peak of ``torch.cuda.max_memory_allocated`` (on CPU: the process's
peak resident memory, with what the previous stage freed handed back to the system first) and the
seconds taken, as one JSON line. Targets: the paper says under 8 GB of
GPU memory; issue 6 aims at 6 GB.

Random weights give meaningless images: only memory and time are measured. The tokenizer is the
shared fixture when found, else ``--tokenizer``, else a stand-in built in memory (the memory figure does
not depend on it).
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
    """The T5 tokenizer folder given, or the shared fixture, or else a stand-in built in memory."""
    from pixart_delta_core.text import load_tokenizer

    if given is not None:
        return load_tokenizer(given)
    for parent in ROOT.parents:
        folder = parent / "shared" / "fixtures" / "t5_tokenizer"
        if folder.is_dir():
            return load_tokenizer(folder)
    return stand_in_tokenizer()


def stand_in_tokenizer():
    """A word-level tokenizer for the prompt's words, with T5's padding (0) and end-of-text (1) tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROMPT.replace(",", " ").split()))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def transformer_file(cache: Path, small: bool, dtype) -> tuple[Path, object]:
    """PixArt-XL-2-1024-MS (or a small one reading ``SMALL_T5``'s width) with random weights, written once."""
    import torch
    from safetensors.torch import save_file

    from pixart_delta_core.config import TransformerConfig
    from pixart_delta_core.random_weights import randomize_
    from pixart_delta_core.transformer import PixArtTransformer

    config = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)
    if small:
        config = TransformerConfig(
            depth=2, hidden_size=144, num_heads=2, mlp_hidden=576, caption_channels=SMALL_T5["d_model"],
            sample_size=32, micro_conditions=True,
        )  # fmt: skip
    path = cache / f"pixart-{'small' if small else 'xl-1024-ms'}-random-{str(dtype).removeprefix('torch.')}.safetensors"
    if not path.is_file():
        with torch.device("cpu"):
            weights = randomize_(PixArtTransformer(config, dtype=dtype)).state_dict()
        save_file(weights, str(path.with_suffix(".partial")))
        path.with_suffix(".partial").rename(path)
    return path, config


def vae_file(cache: Path, small: bool) -> tuple[Path, object]:
    """The SD VAE (or a small one) with random weights in diffusers names, written once."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from pixart_delta_core.random_weights import randomize_
    from pixart_delta_core.vae_layout import SD_VAE, VaeConfig

    config = VaeConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8) if small else SD_VAE
    path = cache / f"vae-{'small' if small else 'sd'}-random.safetensors"
    if not path.is_file():
        save_file(randomize_(AutoencoderKL(**config.diffusers_kwargs())).state_dict(), str(path))
    return path, config


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

            from pixart_delta_core.quant import return_free_heap

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

        from pixart_delta_core.quant import return_free_heap

        return_free_heap()
        return round(rss_bytes("VmRSS") / GB, 3)


def run(args: argparse.Namespace) -> dict:
    import torch
    from t5_quant_memory import synthetic_t5, t5_config, write_t5_file

    from pixart_delta_core.loading import load_transformer
    from pixart_delta_core.sampling import SamplingSettings, generate_latents
    from pixart_delta_core.text import load_text_encoder
    from pixart_delta_core.vae import Vae, load_vae

    device = torch.device(args.device)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    dtype, t5_dtype = dtypes[args.dtype], dtypes[args.t5_dtype or args.dtype]
    size = 256 if args.small else args.size
    prepared = time.perf_counter()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.small:
        t5_path = args.cache / "t5-small-synthetic.safetensors"
        if not t5_path.is_file():
            write_t5_file(t5_path, {**t5_config("xxl"), **SMALL_T5})
    else:
        t5_path = synthetic_t5(args.cache, "xxl")
    tokenizer = stand_in_tokenizer() if args.stand_in_tokenizer else tokenizer_for_run(args.tokenizer)
    transformer_path, transformer_config = transformer_file(args.cache, args.small, dtype)
    vae_path, vae_config = vae_file(args.cache, args.small)
    result: dict = {"benchmark": "gpu_lowmem", "device": str(device), "small": args.small, "size_px": size}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result |= {"dtype": args.dtype, "t5": f"{args.t5_quantization}, computing in {args.t5_dtype or args.dtype}"}
    result["prepare_s"] = round(time.perf_counter() - prepared, 1)
    meter = Meter(device)
    stages: dict = {}

    meter.start()
    encoder = load_text_encoder(t5_path, t5_dtype, device, tokenizer=tokenizer, quantization=args.t5_quantization)
    loaded = time.perf_counter() - meter.began
    cond = encoder.encode([PROMPT], transformer_config.caption_length)
    stages["text"] = {**meter.stop(), "load_s": round(loaded, 2), "tokens": int(cond.mask.sum())}
    del encoder
    stages["text"]["held_after_gb"] = meter.held_gb()

    meter.start()
    hints = {"sample_size": transformer_config.sample_size}
    transformer = load_transformer(transformer_path, dtype, device, hints=hints)
    loaded = time.perf_counter() - meter.began
    settings = SamplingSettings.defaults("lcm", steps=args.steps)
    latent = size // 8
    latents = generate_latents(
        transformer, cond, settings, seed=0, batch=1, height=latent, width=latent, image_size=(size, size)
    )
    stages["denoise"] = {**meter.stop(), "load_s": round(loaded, 2), "steps": args.steps}
    del transformer, cond
    stages["denoise"]["held_after_gb"] = meter.held_gb()

    meter.start()
    vae = load_vae(vae_path, dtype, device, defaults=vae_config)
    vae = Vae(vae.model, vae.config, tile_size=128 if args.small else 512)
    loaded = time.perf_counter() - meter.began
    image = vae.decode(vae.unscale(latents), tiled=True)
    stages["decode"] = {**meter.stop(), "load_s": round(loaded, 2), "image": list(image.shape)}
    del vae, image, latents
    stages["decode"]["held_after_gb"] = meter.held_gb()

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
