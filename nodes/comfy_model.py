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

Low VRAM: ComfyUI streams a model's weights to the GPU layer by layer (its low-VRAM mode, or when the
model does not fit) only for layers that can cast their weights on the fly (``comfy_cast_weights``). The loaders
therefore build an unquantized transformer with ``layer_ops``: ComfyUI's own cast-capable ``Linear``
(``comfy.ops.disable_weight_init``, what ComfyUI's PixArt uses when weights are in the compute dtype). The few
tensors the transformer reads directly (its patch embedding, the blocks' ``scale_shift_table``, the null caption)
are kept on the compute device by ``PixArtDeltaPatcher`` (about 0.1% of PixArt-XL's weights). 8-bit and 4-bit
(bitsandbytes) layers cannot be streamed: they are quantized on the compute device and stay there, so ComfyUI
loads such a model whole.

Outside ComfyUI, or on a ComfyUI without these classes, ``CORE_MODEL`` is False, the loaders' ``MODEL``
output is None and the pack's own sampler remains (the log says so once, in ComfyUI, naming what is missing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch

from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.transformer import ControlHook, PixArtTransformer
from ..pixart_delta_core.models.transformer_config import TransformerConfig, vae_defaults_for
from ..pixart_delta_core.ops import Ops
from ..pixart_delta_core.quant.quantization import Quantization
from ..pixart_delta_core.vae.vae_config import SDXL_VAE
from . import host
from .conditioning import MASK_KEY, caption_from

log = logging.getLogger(__name__)


def missing_pieces(required: Iterable[tuple[ModuleType, str]]) -> list[str]:
    """The ``module.dotted.path`` names (``comfy.model_base.BaseModel._apply_model``) of the ``(module, path)``
    pairs that module lacks: an older ComfyUI."""
    missing = []
    for module, path in required:
        found: object = module
        for name in path.split("."):
            if not hasattr(found, name):
                missing.append(f"{module.__name__}.{path}")
                break
            found = getattr(found, name)
    return missing


try:
    import comfy.conds
    import comfy.controlnet
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
except ImportError:  # outside ComfyUI
    MISSING: list[str] = ["ComfyUI"]
else:
    # What the bridge relies on: the model classes, the model function core samplers call (``_apply_model``),
    # and the cast-capable layers ComfyUI streams in low-VRAM mode.
    MISSING = missing_pieces(
        (
            (comfy.model_base, "PixArt"),
            (comfy.model_base, "BaseModel._apply_model"),
            (comfy.model_base, "BaseModel.extra_conds"),
            (comfy.supported_models, "PixArtAlpha"),
            (comfy.supported_models, "PixArtSigma"),
            (comfy.controlnet, "ControlBase"),
            (comfy.conds, "CONDRegular"),
            (comfy.model_patcher, "ModelPatcher.patch_weight_to_device"),
            (comfy.ops, "disable_weight_init.Linear.comfy_cast_weights"),
        )
    )
CORE_MODEL = not MISSING
if host.IN_COMFYUI and not CORE_MODEL:
    log.warning(
        "PixArt-δ: this ComfyUI lacks %s: the loaders' MODEL output is empty (KSampler cannot use it); use the "
        "PixArt-δ Sampler, or update ComfyUI for KSampler",
        ", ".join(MISSING),
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

    class CastOps(Ops):
        """The engine's layers as ComfyUI's cast-capable ones, which its low-VRAM mode streams to the GPU one layer
        at a time. The patch embedding stays a plain convolution: the transformer reads its device and dtype from
        it, so ``PixArtDeltaPatcher`` keeps it on the compute device (about 20K weights in PixArt-XL)."""

        Linear = comfy.ops.disable_weight_init.Linear

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
        full-precision weights and would read the packed integers as numbers. Under low VRAM it keeps the tensors
        the transformer reads directly on the compute device, and loads whole a model it cannot stream."""

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

        def load(
            self,
            device_to: torch.device | None = None,
            lowvram_model_memory: int = 0,
            force_patch_weights: bool = False,
            full_load: bool = False,
        ) -> None:
            """ComfyUI's load, whole when a linear layer cannot be streamed (int8/NF4 layers stay on the device they
            were quantized on), then the tensors the transformer reads directly placed on ``device_to``."""
            linears = (m for m in self.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear))
            streamable = all(hasattr(m, "comfy_cast_weights") for m in linears)
            super().load(device_to, lowvram_model_memory, force_patch_weights, full_load or not streamable)
            if device_to is not None:
                self.place_direct_tensors(device_to)

        def partially_unload(
            self, device_to: torch.device, memory_to_free: int = 0, force_patch_weights: bool = False
        ) -> int:
            """ComfyUI's partial unload (it may take the plain patch embedding along), then the directly read
            tensors back on the compute device; bytes freed."""
            freed = super().partially_unload(device_to, memory_to_free, force_patch_weights)
            self.place_direct_tensors(self.load_device)
            return freed

        def place_direct_tensors(self, device: torch.device) -> None:
            """Put on ``device`` every tensor of the transformer not held by a cast-capable layer: the patch
            embedding, the blocks' and final layer's ``scale_shift_table``, the null caption, on-the-fly LoRA
            factors. A partial load leaves them where they were (ComfyUI places only layers, and casts only
            cast-capable ones); weight patches on them are applied as ComfyUI applies them to a loaded layer."""
            for name, module in self.model.diffusion_model.named_modules():
                if hasattr(module, "comfy_cast_weights"):
                    continue
                prefix = f"diffusion_model.{name}." if name else "diffusion_model."
                for leaf, param in list(module.named_parameters(recurse=False)):
                    if prefix + leaf in self.patches and prefix + leaf not in self.backup:
                        self.patch_weight_to_device(prefix + leaf, device_to=device)
                    elif param.device != device:
                        param.data = param.data.to(device)  # in place, as Module.to moves parameters
                for leaf, buffer in list(module.named_buffers(recurse=False)):
                    if buffer is not None and buffer.device != device:
                        module._buffers[leaf] = buffer.to(device)

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


def layer_ops(quantization: Quantization) -> type[Ops]:
    """The layers the loaders build a transformer with: ComfyUI's cast-capable ones (``CastOps``) for an unquantized
    transformer in a ComfyUI with core models, else the engine's plain ones (quantization replaces the blocks' plain
    linear layers with bitsandbytes' int8/NF4 layers, which ComfyUI cannot stream)."""
    return CastOps if CORE_MODEL and quantization is Quantization.NONE else Ops


def forget_load_state(model: torch.nn.Module, original: torch.nn.Module) -> None:
    """Clear ComfyUI's per-layer loading marks from the layers of ``model`` that are not ``original``'s own (a LoRA
    merged into a copy of a loaded layer): copied along, they would tell ComfyUI that the new weight is already
    patched on the device, or carry ``original``'s low-VRAM weight patches into ``model``."""
    shared = {id(layer) for layer in original.modules()}
    for layer in model.modules():
        if id(layer) in shared:
            continue
        streamed_before = layer.__dict__.pop("prev_comfy_cast_weights", None)
        if streamed_before is not None:
            layer.comfy_cast_weights = streamed_before
        for mark in ("comfy_patched_weights", "weight_function", "bias_function"):
            layer.__dict__.pop(mark, None)  # back to the class's defaults: not patched, no functions


HIDDEN_INPUTS = {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}  # the workflow and the node's id, from ComfyUI


def refuse_missing_core_model(prompt: dict | None, unique_id: str | None, output: int) -> None:
    """Raise InputError, before anything loads, when a loader's ``MODEL`` output (its index ``output``) is wired to
    another node on a ComfyUI that cannot give one: that node would otherwise get None and fail with a bare
    NoneType error. ``prompt`` is the workflow as ComfyUI runs it (the ``PROMPT`` hidden input: node id ->
    ``{"class_type", "inputs"}``, a link being ``[node id, output index]``), ``unique_id`` the loader's node id;
    without them (a script calling the node) nothing is checked."""
    if CORE_MODEL or not prompt or unique_id is None:
        return
    readers = sorted(
        f"{node.get('class_type', '?')} (node {node_id})"
        for node_id, node in prompt.items()
        for value in node.get("inputs", {}).values()
        if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(unique_id) and value[1] == output
    )
    if readers:
        raise InputError(
            f"the MODEL output is connected to {', '.join(readers)}, but this ComfyUI cannot give a core MODEL "
            f"(it lacks {', '.join(MISSING)}): connect the 'model' output to PixArt-δ Sampler, or update ComfyUI"
        )


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
