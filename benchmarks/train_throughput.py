"""Training step throughput of our LoRA trainer against a plain diffusers + peft loop on the same model.

    python benchmarks/train_throughput.py [--depth 4] [--width 288] [--size 256] [--batch 2] [--steps 6]

Both train a rank-``--rank`` LoRA (PEFT) on the same random transformer (ours in the reference layout,
diffusers' ``PixArtTransformer2DModel`` holding the same weights), with AdamW, on the same latents,
captions, noise and timesteps. One step = forward, loss, backward, optimizer step. Ours computes the
PixArt-α loss (epsilon MSE + the learned-sigma bound); the plain loop the epsilon MSE that diffusers'
training examples use. Steps alternate between the two after one warm-up each; medians of this
process's CPU time (steadier than wall time on a shared machine; wall on a GPU). One JSON line.
Trainable counts differ by design: our fused ``attn.qkv`` / ``cross_attn.kv_linear`` carry one LoRA each
(one ``lora_A`` shared by the parts once saved), where diffusers' separate q, k, v layers carry one each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers
from pixart_delta_core.training.cache import Batch
from pixart_delta_core.training.config import LcmSection, LoraSection
from pixart_delta_core.training.diffusion import noise_schedule
from pixart_delta_core.training.draws import draw
from pixart_delta_core.training.lora import LoraTrainer

# diffusers' LoRA targets matching ours (LORA_TARGETS), fused layers as their parts
DIFFUSERS_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "adaln_single.linear"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=288, help="hidden size (4 heads of 72)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    latent = args.size // 8
    config = TransformerConfig(depth=args.depth, hidden_size=args.width, num_heads=args.width // 72,
                               mlp_hidden=4 * args.width, caption_channels=256, caption_length=32,
                               sample_size=latent)  # fmt: skip
    ours_model = randomize_(PixArtTransformer(config), seed=0).to(device)
    weights = {k: v for k, v in to_diffusers(ours_model.state_dict()).items() if k not in REFERENCE_ONLY}

    generator = torch.Generator().manual_seed(0)
    caption = torch.randn(args.batch, 32, 256, generator=generator).to(device)
    mask = torch.ones(args.batch, 32, dtype=torch.long, device=device)
    mean = torch.randn(args.batch, 4, latent, latent, generator=generator).to(device)
    batch = Batch(caption, mask, mean, torch.zeros_like(mean), None, (args.size, args.size))

    lora = LoraSection(rank=args.rank, alpha=float(args.rank))
    trainer = LoraTrainer(ours_model, 1.0, 0.0, lora, LcmSection())
    ours_optimizer = torch.optim.AdamW(trainer.trainable_parameters(), lr=1e-4)

    from diffusers import PixArtTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    twin = PixArtTransformer2DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.head_dim, in_channels=4, out_channels=8,
        num_layers=config.depth, sample_size=latent, caption_channels=256, cross_attention_dim=config.hidden_size,
        use_additional_conditions=False,
    )  # fmt: skip
    twin.load_state_dict(weights)
    twin.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=DIFFUSERS_TARGETS), twin)
    twin.to(device).train()
    theirs_optimizer = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-4)
    trainable = {"ours": sum(p.numel() for p in trainer.trainable_parameters()),
                 "diffusers": sum(p.numel() for p in twin.parameters() if p.requires_grad)}  # fmt: skip

    def ours(step: int) -> None:
        loss = trainer.loss(trainer.module, batch, draw(0, step, 0, args.batch, (4, latent, latent)).to(device))
        ours_optimizer.zero_grad()
        loss.backward()
        ours_optimizer.step()

    def theirs(step: int) -> None:
        draws = draw(0, step, 0, args.batch, (4, latent, latent)).to(device)
        t = draws.timesteps(1000)
        x_t = noise_schedule().add_noise(mean, draws.noise, t)
        out = twin(x_t, encoder_hidden_states=caption, encoder_attention_mask=mask, timestep=t,
                   added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample  # fmt: skip
        loss = torch.nn.functional.mse_loss(out[:, :4].float(), draws.noise)
        theirs_optimizer.zero_grad()
        loss.backward()
        theirs_optimizer.step()

    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for step in range(args.steps + 1):
        for name, run in (("ours", ours), ("diffusers", theirs)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:  # the first step of each warms up
                times[name].append(time.perf_counter() - wall if device.type == "cuda" else time.process_time() - cpu)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "benchmark": "train_throughput", "device": str(device), "depth": args.depth, "width": args.width,
        "size": args.size, "batch": args.batch, "rank": args.rank, "trainable": trainable,
        "ours_s_per_step": round(median["ours"], 4), "diffusers_peft_s_per_step": round(median["diffusers"], 4),
        "ours_samples_per_s": round(args.batch / median["ours"], 3),
        "ratio": round(median["diffusers"] / median["ours"], 3),  # > 1: ours is faster
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
