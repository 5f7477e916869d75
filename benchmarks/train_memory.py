"""Peak memory of one real-size training step: LCM distillation or the ControlNet, gradient checkpointing.

    python benchmarks/train_memory.py --method controlnet [--size 512] [--batch 1] [--depth 28] [--device cpu]

PixArt-XL-2 (depth 28, width 1152, 16 heads, 120 caption tokens of 4096) with random weights, fp32,
batch 1 at 512 px by default; one step of our trainer (loss, backward, AdamW step) with gradient
checkpointing, from cached features (T5 and the VAE are never resident). Peak memory: the process's
maximum resident set on the CPU (weights included), ``torch.cuda.max_memory_allocated`` on a GPU.
``static_gb`` is what the step holds besides activations (weights, gradients, AdamW's two moments),
``process_gb`` the process before any model (interpreter and libraries; 0 on a GPU), ``activations_gb``
the rest of the peak. One JSON line. LCM holds three transformers (student,
teacher, EMA target): about 15 GB on the CPU in fp32, so run it only where that much memory is free.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.layers import set_gradient_checkpointing
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.training.cache import Batch
from pixart_delta_core.training.config import LcmSection
from pixart_delta_core.training.draws import draw
from pixart_delta_core.training.lcm import LcmTrainer
from pixart_delta_core.training.trainers import ControlNetTrainer

GB = 2**30


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("lcm", "controlnet"), required=True)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--depth", type=int, default=28, help="fewer blocks for a quick trial run")
    parser.add_argument("--copies", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    process = peak_bytes(device)  # the interpreter and libraries before any model (0 on a GPU)
    latent = args.size // 8
    config = TransformerConfig(depth=args.depth, sample_size=latent)
    transformer = randomize_(PixArtTransformer(config, device="meta").to_empty(device="cpu"), seed=0).to(device)
    if args.method == "lcm":
        trainer = LcmTrainer(transformer.requires_grad_(True), 0.18215, LcmSection())
    else:
        copies = min(args.copies, args.depth - 1)
        trainer = ControlNetTrainer(transformer, ControlNetTransformer.from_base(transformer, copies), 0.18215, 0.5)
    set_gradient_checkpointing(trainer.module)
    parameters = trainer.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=2e-5)
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(args.batch, 120, dtype=torch.long)
    mask[:, :30] = 1
    features = torch.randn(args.batch, 120, 4096, generator=generator) * mask[..., None]
    mean = torch.randn(args.batch, 4, latent, latent, generator=generator)
    control = torch.randn(args.batch, 4, latent, latent, generator=generator)
    batch = Batch(features, mask, mean, torch.full_like(mean, 0.1), control, (args.size, args.size)).to(device)
    held = sum(t.numel() * t.element_size() for m in _models(trainer) for t in m.state_dict().values())
    trained = sum(p.numel() for p in parameters)
    static = held + 3 * trained * 4  # + fp32 gradients and AdamW's two moments
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    loss = trainer.loss(trainer.module, batch, draw(0, 0, 0, args.batch, (4, latent, latent)).to(device))
    loss.backward()
    optimizer.step()
    trainer.after_step()
    seconds = time.perf_counter() - started
    peak = peak_bytes(device)
    result = {
        "benchmark": "train_memory", "method": args.method, "device": str(device), "depth": args.depth,
        "size": args.size, "batch": args.batch, "gradient_checkpointing": True, "trained_params": trained,
        "peak_gb": round(peak / GB, 2), "static_gb": round(static / GB, 2),
        "process_gb": round(process / GB, 2),
        "activations_gb": round(max(peak - static - process, 0) / GB, 2), "step_s": round(seconds, 1),
    }  # fmt: skip
    print(json.dumps(result))


def _models(trainer: object) -> list[torch.nn.Module]:
    """Every model the trainer holds (student, teacher and target for LCM; base and ControlNet otherwise)."""
    return [trainer.module] + [getattr(trainer, name) for name in ("teacher", "target") if hasattr(trainer, name)]


if __name__ == "__main__":
    main()
