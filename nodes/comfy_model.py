"""The pack's PixArt transformer as ComfyUI's own ``MODEL``, and its ControlNet as a core control.

Part of the host bridge: only this module and ``host`` know ComfyUI's model classes. The ``MODEL`` is a
``comfy.model_base.PixArt`` whose ``diffusion_model`` is the engine's ``PixArtTransformer`` (so int8/NF4
layers, strict loading and the reference module names carry over: core LoRA loaders find the weights by the
names ComfyUI's own PixArt port uses), wrapped in a ``ModelPatcher``. Core samplers then run it with the
model's noise schedule (linear betas 1e-4..0.02, epsilon; ComfyUI's PixArt settings), the latent format of
its VAE (SD 1.x for PixArt-α/δ, SDXL for Σ), micro-conditions from the latent's size, and the caption mask
PixArt-δ T5 Text Encode puts in the conditioning. The ControlNet-Transformer reaches core samplers as a
``comfy.controlnet.ControlBase`` in the conditioning's ``control`` entry, applied with its strength and
start/end.

Outside ComfyUI, or on a ComfyUI without these classes, ``CORE_MODEL`` is False, the loaders' ``MODEL``
output is None and the pack's own sampler remains (the log says so once, in ComfyUI).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.transformer import ControlHook, PixArtTransformer
from ..pixart_delta_core.models.transformer_config import TransformerConfig, vae_defaults_for
from ..pixart_delta_core.vae.vae_config import SDXL_VAE
from . import host
from .conditioning import MASK_KEY, caption_from

log = logging.getLogger(__name__)

try:
    import comfy.conds
    import comfy.controlnet
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
except ImportError:  # outside ComfyUI
    CORE_MODEL = False
else:
    CORE_MODEL = all(
        hasattr(module, name)
        for module, name in (
            (comfy.model_base, "PixArt"),
            (comfy.supported_models, "PixArtAlpha"),
            (comfy.supported_models, "PixArtSigma"),
            (comfy.controlnet, "ControlBase"),
            (comfy.conds, "CONDRegular"),
        )
    )
if host.IN_COMFYUI and not CORE_MODEL:
    log.warning(
        "PixArt-δ: this ComfyUI has no PixArt model classes (comfy.model_base.PixArt, supported_models.PixArtAlpha): "
        "the loaders' MODEL output is empty; use the PixArt-δ Sampler, or update ComfyUI for KSampler"
    )

MASK_COND = "caption_mask"  # the model_conds key of the caption mask [B, L]


def image_model(config: TransformerConfig) -> str:
    """ComfyUI's name for the family: ``pixart_sigma`` for models on the SDXL VAE, else ``pixart_alpha``."""
    return "pixart_sigma" if vae_defaults_for(config) == SDXL_VAE else "pixart_alpha"


def unet_config(config: TransformerConfig) -> dict[str, Any]:
    """The ``unet_config`` of the core model: ComfyUI's PixArt names for the shape (its LoRA key maps read
    ``depth`` and ``hidden_size``), and no network of its own (the engine's transformer is set in its place)."""
    return {
        "image_model": image_model(config),
        "disable_unet_model_creation": True,
        "depth": config.depth,
        "hidden_size": config.hidden_size,
        "num_heads": config.num_heads,
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "caption_channels": config.caption_channels,
        "model_max_length": config.caption_length,
        "micro_condition": config.micro_conditions,
    }


def image_size(c_size: torch.Tensor | None) -> tuple[int, int] | None:
    """(height, width) in pixels for the micro-conditions from the conditioning's ``c_size`` [B, 2] (core puts the
    latent's size x 8 there unless the conditioning names one); None without it, and the transformer takes the
    latent's size times its VAE's downscale."""
    if c_size is None:
        return None
    height, width = c_size.reshape(-1, 2)[0].tolist()
    return round(height), round(width)


def caption_conds(config: TransformerConfig, cross_attn: torch.Tensor, entry: dict) -> tuple:
    """(embeddings [1, L, C], mask [1, L]) of one conditioning entry (its embeddings and dict) as the transformer
    reads them: the mask PixArt-δ T5 Text Encode puts in the dict (none from core CLIPTextEncode: every token
    real), trailing padding dropped, cut to the model's caption length (``conditioning.caption_from``)."""

    mask = entry.get(MASK_KEY)
    caption = caption_from([[cross_attn, {} if mask is None else {MASK_KEY: mask}]], config, "conditioning")
    return caption.embeddings, caption.mask


if CORE_MODEL:

    class PixArtDeltaModel(comfy.model_base.PixArt):
        """ComfyUI's PixArt model running the engine's transformer (``diffusion_model``)."""

        def __init__(self, transformer: PixArtTransformer, device: torch.device) -> None:
            config = transformer.config
            sigma = image_model(config) == "pixart_sigma"
            family = comfy.supported_models.PixArtSigma if sigma else comfy.supported_models.PixArtAlpha
            model_config = family(unet_config(config))
            super().__init__(model_config, device=device)
            self.diffusion_model = transformer

        def extra_conds(self, **kwargs: Any) -> dict:
            out = super().extra_conds(**kwargs)  # c_crossattn, and c_size/c_ar from the latent's size
            cross_attn = kwargs.get("cross_attn")
            if cross_attn is not None:
                embeddings, mask = caption_conds(self.diffusion_model.config, cross_attn, kwargs)
                out["c_crossattn"] = comfy.conds.CONDRegular(embeddings)
                out[MASK_COND] = comfy.conds.CONDRegular(mask)
            return out

        def _apply_model(
            self,
            x: torch.Tensor,
            t: torch.Tensor,
            c_concat: torch.Tensor | None = None,
            c_crossattn: torch.Tensor | None = None,
            control: Any = None,
            transformer_options: dict | None = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            """Denoised latents [B, 4, h, w] from noisy ``x`` [B, 4, h, w] at sigmas ``t`` [B]: the transformer's
            noise half through the model sampling (which ModelSamplingDiscrete and similar nodes replace).
            ``c_crossattn`` [B, L, C] and ``caption_mask`` [B, L] come from ``extra_conds``, ``control`` from
            ``PixArtDeltaControl``. Patches that replace attention or blocks inside a network
            (``transformer_options``) do not reach this transformer; wrappers of the model function and CFG
            functions do. Raises InputError without a caption or with a core ControlNet's output."""
            if c_crossattn is None:
                raise InputError("the PixArt model needs a text conditioning (cross attention) and found none")
            if control is not None and not callable(control):
                raise InputError(
                    "a core ControlNet reached the PixArt-δ model: steer it with PixArt-δ ControlNet Loader and "
                    "PixArt-δ Apply ControlNet"
                )
            transformer: PixArtTransformer = self.diffusion_model
            xc = self.model_sampling.calculate_input(t, x)
            timestep = self.model_sampling.timestep(t).float()
            size = image_size(kwargs.get("c_size"))
            out = transformer(xc, timestep, c_crossattn, kwargs.get(MASK_COND), size, control)
            eps = out[:, : transformer.config.in_channels].float()  # learned sigma: keep the noise half
            return self.model_sampling.calculate_denoised(t, eps, x)

    class PixArtDeltaPatcher(comfy.model_patcher.ModelPatcher):
        """ComfyUI's ModelPatcher, refusing weight patches (LoRAs) on 8-bit/4-bit layers: ComfyUI adds them to
        full-precision weights and would read the packed integers as numbers."""

        def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
            state = self.model.state_dict()
            keys = (key if isinstance(key, str) else key[0] for key in patches)
            packed = sorted({key for key in keys if key in state and not state[key].is_floating_point()})
            if packed:
                raise InputError(
                    f"this LoRA changes {len(packed)} quantized weight(s) (e.g. {packed[0]}): ComfyUI applies LoRAs "
                    f"to full-precision weights; load the model with quantization none to use it"
                )
            return super().add_patches(patches, strength_patch, strength_model)

    class PixArtDeltaControl(comfy.controlnet.ControlBase):
        """The pack's ControlNet as a core control: ``get_control`` gives the transformer's control hook."""

        def __init__(self, control: Any) -> None:
            super().__init__()
            self.control = control  # controlnet.ControlImage: network, image, VAE, strength, start, end
            self.strength = control.strength
            self.timestep_percent_range = (control.start, control.end)
            self.base: PixArtTransformer | None = None
            self.hooks: dict[tuple[int, int], ControlHook] = {}

        def pre_run(self, model: Any, percent_to_timestep_function: Any) -> None:
            super().pre_run(model, percent_to_timestep_function)
            self.base = model.diffusion_model

        def get_control(
            self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int, transformer_options: dict
        ) -> ControlHook | None:
            if self.timestep_range is not None and not self.timestep_range[1] <= t[0] <= self.timestep_range[0]:
                return None
            size = (x_noisy.shape[-2], x_noisy.shape[-1])
            if size not in self.hooks:  # encoded once per latent size and run
                base = self.base
                vae = vae_defaults_for(base.config)
                latent = self.control.latent(size[0] * vae.downscale, size[1] * vae.downscale, vae.scaling_factor)
                self.hooks[size] = self.control.schedule(base, latent).hook
            return self.hooks[size]

        def get_models(self) -> list:
            return [self.control.controlnet.managed.patcher]

        def cleanup(self) -> None:
            super().cleanup()
            self.base = None
            self.hooks = {}

        def copy(self) -> PixArtDeltaControl:
            return PixArtDeltaControl(self.control)


def model_patcher(transformer: PixArtTransformer, load_device: torch.device, offload_device: torch.device) -> Any:
    """The transformer as a core ``MODEL`` (a ``PixArtDeltaPatcher`` over ``PixArtDeltaModel``); None without
    one."""
    if not CORE_MODEL:
        return None
    model = PixArtDeltaModel(transformer, host.weights_device(transformer, offload_device))
    return PixArtDeltaPatcher(
        model, load_device=load_device, offload_device=offload_device, size=host.stored_bytes(transformer)
    )


def core_control(control: Any, extra: dict) -> dict[str, Any]:
    """The conditioning entries that carry ``control`` (a ``controlnet.ControlImage``) to core samplers: none
    without core models. A core ControlNet already there is refused: it cannot steer a PixArt transformer."""
    if extra.get("control") is not None:
        raise InputError(
            "this conditioning already carries a core ControlNet (Apply ControlNet): it cannot steer PixArt; use only "
            "PixArt-δ Apply ControlNet"
        )
    if not CORE_MODEL:
        return {}
    # Also to the unconditional pass when the negative carries none, as the pack's sampler applies it.
    return {"control": PixArtDeltaControl(control), "control_apply_to_uncond": True}
