"""LoRA and LCM-LoRA training with PEFT, saved in the PEFT/diffusers layout users share.

The adapter is injected by ``peft`` into the reference-layout transformer; on saving, each LoRA is
renamed to diffusers' module names (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``...).
A LoRA on a fused layer (``attn.qkv``, ``cross_attn.kv_linear``) becomes one LoRA per diffusers layer:
the same ``lora_A`` and the matching rows of ``lora_B``, which is exact. The alpha / rank scale is
multiplied into ``lora_B`` and the file declares alpha = rank, so every reader applies it once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import InputError
from ..models.lora_config import DIFFUSERS_LORA_FILE
from ..models.transformer import PixArtTransformer
from ..models.transformer_config import to_diffusers
from .cache import Batch
from .config import LcmSection, LoraSection
from .draws import Draws
from .lcm import lcm_loss, noise_of, with_learned_null
from .trainers import Trainer, training_latents

LORA_FILE = DIFFUSERS_LORA_FILE  # with its adapter_config.json beside it, which the pack's LoRA reader takes
PREFIX = "transformer."  # the model a diffusers pipeline's LoRA file addresses


def lora_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The linear layers of ``model`` whose names end in one of ``targets``; ``InputError`` for a target
    that names none."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    found = {t: [n for n in linears if n == t or n.endswith("." + t)] for t in targets}
    unmatched = [t for t, names in found.items() if not names]
    if unmatched:
        raise InputError(f"lora.targets {unmatched} name no linear layer of the transformer (e.g. {linears[:4]})")
    return sorted({n for names in found.values() for n in names})


class LoraTrainer(Trainer):
    """A PEFT LoRA on the frozen transformer: diffusion loss, or LCM distillation into the adapter."""

    def __init__(
        self,
        transformer: PixArtTransformer,
        scaling_factor: float,
        caption_dropout: float,
        settings: LoraSection,
        lcm: LcmSection,
        loss_weights: Tensor | None = None,
    ) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ModuleNotFoundError:
            raise InputError(
                "LoRA training needs peft, which is not installed: pip install peft (the pack's requirements list it)"
            ) from None
        super().__init__(transformer, scaling_factor, 0.0 if settings.lcm else caption_dropout, loss_weights)
        self.settings, self.lcm = settings, lcm
        self.layers = lora_targets(transformer, settings.targets)
        self.teacher = copy.deepcopy(transformer).requires_grad_(False).eval() if settings.lcm else None
        transformer.requires_grad_(False)
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=self.layers)
        inject_adapter_in_model(config, transformer)

    def loss(self, module: nn.Module, batch: Batch, draws: Draws) -> Tensor:
        if self.teacher is None:
            return super().loss(module, batch, draws)
        channels = self.transformer.config.in_channels
        latents = training_latents(batch, draws, self.scaling_factor)
        null = with_learned_null(self.transformer, batch)
        student = noise_of(module, batch.size, channels)
        teacher, target = (noise_of(m, batch.size, channels) for m in (self.teacher, self.transformer))
        return lcm_loss(student, teacher, target, latents, batch.caption, null, batch.mask, draws, self.lcm)

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The adapter in the PEFT/diffusers layout (see the module docstring), fp32 on the CPU."""
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(self.transformer)
        scale = self.settings.alpha / self.settings.rank
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            down = weights[f"{layer}.lora_A.weight"].detach().float().cpu()  # [r, in]
            up = weights[f"{layer}.lora_B.weight"].detach().float().cpu() * scale  # [out, r]
            for name, part in to_diffusers({f"{layer}.weight": up}).items():
                module = PREFIX + name.removesuffix(".weight")
                out[f"{module}.lora_A.weight"] = down.clone()  # one copy per layer: files share no storage
                out[f"{module}.lora_B.weight"] = part.contiguous()
        return out

    def save(self, folder: Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """The adapter alone, read from the model (``weights`` unused: LoRA runs unsharded)."""
        path = folder / LORA_FILE
        weights = self.lora_state_dict()
        save_file(weights, str(path), metadata={"format": "pt"})
        from peft import LoraConfig

        modules = sorted({k.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for k in weights})
        rank = self.settings.rank  # alpha = rank: the scale is already in lora_B
        LoraConfig(r=rank, lora_alpha=rank, target_modules=modules).save_pretrained(str(folder))
        return path
