"""Random LoRAs made by peft on diffusers' PixArt transformer, and the same adapters written in every layout users
share: the independent side of the LoRA parity tests."""

from __future__ import annotations

import torch

from pixart_delta_core.models.transformer_config import DIFFUSERS_TABLE

# diffusers module names peft adapts (the reference LCM-LoRA's set: attention, feed-forward, embedders, adaLN,
# output; ``pos_embed.proj`` is the patch-embedding convolution).
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out", "linear_1", "linear_2"]
TARGETS += ["linear", "pos_embed.proj"]
RANK, ALPHA = 4, 8.0
RANKS = {"to_k": 2}  # per-module ranks and alphas: the readers must take them per module
ALPHAS = {"ff.net.2": 3.0}
FULL_LINEARS = [t for t in TARGETS if t != "pos_embed.proj"]  # LyCORIS adapters of linear layers only


def peft_adapter(twin, kind: str = "lora", seed: int = 5) -> dict[str, torch.Tensor]:
    """Inject a random adapter into the diffusers ``twin`` (in place) and return peft's state dict of it, its keys
    ``<diffusers module>.<adapter tensor>``. LoRA gets per-module ranks and alphas."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    if kind == "lora":
        config = LoraConfig(
            r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False, rank_pattern=RANKS,
            alpha_pattern=ALPHAS,
        )  # fmt: skip
    elif kind == "loha":
        config = LoHaConfig(r=RANK, alpha=ALPHA, target_modules=FULL_LINEARS, init_weights=False)
    else:
        config = LoKrConfig(r=RANK, alpha=ALPHA, target_modules=FULL_LINEARS, init_weights=False)
    inject_adapter_in_model(config, twin)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(twin).items()}


def scales(twin) -> dict[str, float]:
    """peft's alpha / rank of every adapted module of ``twin``, by diffusers module name."""
    return {name: m.scaling["default"] for name, m in twin.named_modules() if hasattr(m, "scaling")}


def modules_of(state: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """module -> {suffix: tensor}."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        suffix = next(s for s in suffixes if key.endswith("." + s))
        found.setdefault(key[: -len(suffix) - 1], {})[suffix] = value
    return found


def peft_layout(state, twin, prefix: str, with_alpha: bool) -> dict[str, torch.Tensor]:
    """PEFT/diffusers names under ``prefix``; without alpha keys the scale is folded into lora_B (alpha = rank)."""
    out = {}
    s = scales(twin)
    for module, t in modules_of(state, ("lora_A.weight", "lora_B.weight")).items():
        out[f"{prefix}{module}.lora_A.weight"] = t["lora_A.weight"]
        up = t["lora_B.weight"]
        if with_alpha:
            out[f"{prefix}{module}.alpha"] = torch.tensor(s[module] * t["lora_A.weight"].shape[0])
        out[f"{prefix}{module}.lora_B.weight"] = up if with_alpha else up * s[module]
    return out


def kohya_layout(state, twin, prefix: str = "lora_transformer_") -> dict[str, torch.Tensor]:
    """kohya/OneTrainer: underscore-joined diffusers paths, lora_down/lora_up and an alpha per module."""
    out = {}
    s = scales(twin)
    for module, t in modules_of(state, ("lora_A.weight", "lora_B.weight")).items():
        name = prefix + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = t["lora_A.weight"]
        out[f"{name}.lora_up.weight"] = t["lora_B.weight"]
        out[f"{name}.alpha"] = torch.tensor(s[module] * t["lora_A.weight"].shape[0])
    return out


def reference_layout(state, twin, prefix: str, joiner: str) -> dict[str, torch.Tensor]:
    """Reference module names (fused qkv / kv_linear: the parts' down matrices stacked, their scaled up
    matrices block-diagonal, alpha = the fused rank), joined with ``joiner`` ('.' ComfyUI, '_' kohya)."""
    s = scales(twin)
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, t in modules_of(state, ("lora_A.weight", "lora_B.weight")).items():
        ours, part, _ = DIFFUSERS_TABLE.locate(module)
        fused.setdefault(ours, {})[part] = (t["lora_A.weight"], t["lora_B.weight"] * s[module])
    out = {}
    for ours, parts in fused.items():
        downs = [parts[p][0].flatten(1) for p in sorted(parts)]
        ups = [parts[p][1].flatten(1) for p in sorted(parts)]
        down, up = torch.cat(downs), torch.block_diag(*ups)
        if ours == "x_embedder.proj":  # a convolution keeps its 4-D shapes
            down, up = parts[0][0], parts[0][1]
        name = prefix + (ours.replace(".", "_") if joiner == "_" else ours)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def lycoris_layout(state, twin, kind: str) -> dict[str, torch.Tensor]:
    """LyCORIS LoHa/LoKr in kohya naming; a LoKr with both halves full carries its scale in w1 (LyCORIS applies
    none to it)."""
    s = scales(twin)
    prefix = "hada_" if kind == "loha" else "lokr_"
    suffixes = tuple(f"{prefix}{r}" for r in ("w1_a", "w1_b", "w2_a", "w2_b", "w1", "w2"))
    out = {}
    for module, t in modules_of(state, suffixes).items():
        name = "lora_transformer_" + module.replace(".", "_")
        factored = t.get(f"{prefix}w2_b", t.get(f"{prefix}w1_b"))
        for suffix, value in t.items():
            if kind == "lokr" and factored is None and suffix == "lokr_w1":
                value = value * s[module]
            out[f"{name}.{suffix}"] = value
        rank = factored.shape[0] if factored is not None else 1
        out[f"{name}.alpha"] = torch.tensor(s[module] * rank)
    return out


def pair(prefix: str, rank: int = 2, width: int = 48, out: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """One random LoRA module under ``prefix`` (kohya names: lora_down/lora_up)."""
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}.lora_down.weight": torch.randn(rank, width, generator=g) * 0.1,
        f"{prefix}.lora_up.weight": torch.randn(out or width, rank, generator=g) * 0.1,
    }
