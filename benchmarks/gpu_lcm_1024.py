"""1024 px, 4 LCM steps, batch 1 on a GPU: ours vs diffusers, real-size models with random weights.

    python benchmarks/gpu_lcm_1024.py [--dtype fp16] [--runs 5] [--no-diffusers]

The transformer is PixArt-XL-2-1024-MS sized (depth 28, 1152 wide, micro-conditions), the VAE is
the SD VAE config, both in ``--dtype``; the caption is a random [1, 120, 4096] T5 embedding with
a 20-token mask (T5 itself is measured by the low-memory benchmarks). A run is 4 LCM steps plus
the VAE decode, timed with CUDA synchronisation after warm-up runs; runs alternate between ours
and diffusers' PixArtAlphaPipeline holding the same weights. Prints one JSON line (the paper:
0.5 s on an A100 for PixArt-δ at 1024 px, 4 steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pixart_delta_core.demo.files import demo_vae
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.devices import parse_dtype
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers
from pixart_delta_core.sampling.samplers import SamplingSettings, generate_latents, make_scheduler
from pixart_delta_core.text.encoder import TextEmbedding

XL_1024_MS = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}


def timed(run, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script runs")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (--smoke runs it on tiny models on the CPU)")
    device, dtype = torch.device("cpu" if args.smoke else "cuda"), parse_dtype(args.dtype)
    config = replace(XL_1024_MS, depth=1) if args.smoke else XL_1024_MS
    model = randomize_(PixArtTransformer(config)).to(device, dtype)
    vae = demo_vae(**({} if args.smoke else SD_VAE)).to(device, dtype)
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 120, dtype=torch.long)
    mask[:, :20] = 1
    caption = TextEmbedding(torch.randn(1, 120, 4096, generator=generator) * mask[..., None], mask)
    settings = SamplingSettings(steps=4)

    def ours() -> torch.Tensor:
        with torch.inference_mode():
            latents = generate_latents(model, caption, settings, seed=0, batch=1, height=128, width=128)
            return vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample

    runs: dict[str, list[float]] = {"ours": []}
    contenders = {"ours": ours}
    if not args.no_diffusers:
        from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

        twin = PixArtTransformer2DModel(num_layers=config.depth, sample_size=128, caption_channels=4096)
        weights = {k: v for k, v in to_diffusers(model.state_dict()).items() if k not in REFERENCE_ONLY}
        twin.load_state_dict(weights)
        scheduler, timesteps = make_scheduler(settings)
        pipe = PixArtAlphaPipeline(
            tokenizer=None, text_encoder=None, vae=vae, transformer=twin.to(device, dtype), scheduler=scheduler
        )
        pipe.set_progress_bar_config(disable=True)
        embeds, embeds_mask = caption.embeddings.to(device, dtype), caption.mask.to(device)

        def theirs() -> torch.Tensor:
            return pipe(
                negative_prompt=None,
                prompt_embeds=embeds,
                prompt_attention_mask=embeds_mask,
                timesteps=timesteps.tolist(),
                num_inference_steps=None,
                guidance_scale=0.0,
                height=1024,
                width=1024,
                generator=torch.Generator().manual_seed(0),
                use_resolution_binning=False,
                output_type="pt",
            ).images

        runs["diffusers"] = []
        contenders["diffusers"] = theirs
    for _ in range(args.warmup):
        for run in contenders.values():
            timed(run, device)
    for _ in range(args.runs):
        for name, run in contenders.items():
            runs[name].append(timed(run, device))
    result = {
        "benchmark": "gpu_lcm_1024",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run)",
        "dtype": args.dtype,
        "seconds": {k: round(statistics.median(v), 4) for k, v in runs.items()},
        "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "paper_a100_seconds": 0.5,
    }
    if "diffusers" in runs:
        result["time_ratio"] = round(statistics.median(runs["ours"]) / statistics.median(runs["diffusers"]), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
