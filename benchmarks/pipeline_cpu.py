"""Files to image: our staged pipeline vs diffusers' PixArtAlphaPipeline, side by side on the CPU.

    python benchmarks/pipeline_cpu.py [--depth 4] [--t5-layers 4] [--rounds 5]

Both read the same diffusers pipeline folder (random weights written once into a cache folder):
a PixArt-XL-width transformer at 512 px (1152 wide, 16 heads, ``--depth`` blocks), a T5 at the
real width (4096, 64 heads, feed-forward 10240) with ``--t5-layers`` of T5-XXL's 24 layers (4 of 24
beside 4 of the transformer's 28 blocks keeps the real models' proportions), and a
light SD-architecture VAE (its cost is the same on both sides and would only dilute the ratio;
``--full-vae`` uses the real SD VAE config). Each run loads the models from the folder and makes
one image with 4 LCM steps; runs alternate, fp32. Prints one JSON line: median seconds per run
and the peak resident-memory growth of each run, their ratios (ours / diffusers), and how far the
outputs differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.load_memory import reset_peak, rss_bytes
from pixart_delta_core.demo.files import demo_t5, demo_tokenizer, demo_vae
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.sampling.samplers import SamplingSettings, make_scheduler

PROMPT = "A small cactus with a happy face in the Sahara desert, watercolour"
SHARED_TOKENIZER = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "t5_tokenizer"
T5_XXL_WIDTH = {"d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240}
LIGHT_VAE = {"block_out_channels": (32, 64, 128, 128), "layers_per_block": 2, "norm_num_groups": 32}
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}


def write_folder(folder: Path, depth: int, t5_layers: int, full_vae: bool) -> None:
    """A diffusers pipeline folder with random weights, written once."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import AutoTokenizer

    config = TransformerConfig(depth=depth, sample_size=64)
    ours = randomize_(PixArtTransformer(config), seed=0)
    transformer = PixArtTransformer2DModel(num_layers=depth, sample_size=64, caption_channels=4096)
    transformer.load_state_dict({k: v for k, v in to_diffusers(ours.state_dict()).items() if k not in REFERENCE_ONLY})
    del ours
    real_tokenizer = SHARED_TOKENIZER.is_dir()
    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER) if real_tokenizer else demo_tokenizer()
    vocab = 32128 if real_tokenizer else 128
    t5 = demo_t5(seed=1, **T5_XXL_WIDTH, num_layers=t5_layers, vocab_size=vocab)
    vae = demo_vae(seed=2, **(SD_VAE if full_vae else LIGHT_VAE))
    scheduler, _ = make_scheduler(SamplingSettings())
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    (folder / "done").write_text("")


def run_ours(folder: Path, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    pipeline = PixArtPipeline(
        folder, folder / "text_encoder", folder, folder / "tokenizer", device="cpu", dtype="fp32", t5_dtype="fp32"
    )
    result = pipeline(PROMPT, width=512, height=512, resolution_binning=False, steps=4, seed=seed)
    return np.asarray(result.images[0]), result.latents


def run_diffusers(folder: Path, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    _, timesteps = make_scheduler(SamplingSettings())
    common = {"height": 512, "width": 512, "timesteps": timesteps.tolist(), "guidance_scale": 0.0}
    common |= {"use_resolution_binning": False, "clean_caption": False, "num_inference_steps": None}
    latents = pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    pixels = pipe.image_processor.postprocess(image, output_type="np")[0]
    return (pixels * 255).round().astype(np.uint8), latents


def measure(run, folder: Path) -> tuple[float, int, tuple[np.ndarray, torch.Tensor]]:
    gc.collect()
    before = rss_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    with torch.inference_mode():
        out = run(folder, seed=0)
    seconds = time.perf_counter() - start
    return seconds, rss_bytes("VmHWM") - before, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--t5-layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-vae", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pixart-delta-bench")
    args = parser.parse_args()
    folder = args.cache / f"pipeline-d{args.depth}-t5l{args.t5_layers}-{'sdvae' if args.full_vae else 'lightvae'}"
    if not (folder / "done").exists():
        write_folder(folder, args.depth, args.t5_layers, args.full_vae)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    peaks: dict[str, list[int]] = {"ours": [], "diffusers": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in (("ours", run_ours), ("diffusers", run_diffusers)):
            seconds, peak, outputs[name] = measure(run, folder)
            times[name].append(seconds)
            peaks[name].append(peak)
    (ours_image, ours_latents), (their_image, their_latents) = outputs["ours"], outputs["diffusers"]
    scale = their_latents.abs().max().item()
    result = {
        "benchmark": "pipeline_cpu",
        "config": {"depth": args.depth, "t5_layers": args.t5_layers, "px": 512, "lcm_steps": 4, "dtype": "fp32"},
        "vae": "sd" if args.full_vae else "light",
        "threads": torch.get_num_threads(),
        "seconds": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "peak_growth_mib": {k: round(max(v) / 2**20) for k, v in peaks.items()},
        "time_ratio": round(statistics.median(times["ours"]) / statistics.median(times["diffusers"]), 3),
        "memory_ratio": round(max(peaks["ours"]) / max(peaks["diffusers"]), 3),
        "latents_max_diff_relative": (ours_latents - their_latents).abs().max().item() / max(scale, 1.0),
        "image_max_diff_255": int(np.abs(ours_image.astype(int) - their_image.astype(int)).max()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
