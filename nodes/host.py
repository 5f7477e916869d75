"""The host bridge: with ``comfy_model`` (ComfyUI's model classes), the only module of the pack that imports ComfyUI.

Inside ComfyUI it lists model files with ``folder_paths``, picks devices and dtypes the way ComfyUI
does, hands models to ComfyUI's model management (``ModelPatcher`` + ``load_models_gpu``) so they
move to the GPU when needed and are evicted when other models need the memory, and drives the
progress bar, which is also where the user's Cancel is honoured.

Outside ComfyUI (tests, scripts) each has a plain fallback: model folders under
``$PIXART_DELTA_MODELS`` (``checkpoints/``, ``text_encoders/``... as in ComfyUI's ``models/``), models
loaded straight onto the best device and left there unless ``unload`` moves them to the CPU, no
progress bar, and a cancel flag (``cancel``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..pixart_delta_core.demo.embedded_files import FOLDER as EMBEDDED_FOLDER
from ..pixart_delta_core.devices import pick_dtype
from ..pixart_delta_core.memory import return_free_heap
from ..pixart_delta_core.quant.quantization import Quantization

try:
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
except ImportError:  # not running inside ComfyUI
    IN_COMFYUI = False
else:
    IN_COMFYUI = True

log = logging.getLogger(__name__)

MODELS_ENV = "PIXART_DELTA_MODELS"
# ComfyUI's model kinds and the sub-folders of ``models/`` each one reads (the fallback's layout).
_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "diffusion_models": ("unet", "diffusion_models"),
    "text_encoders": ("text_encoders", "clip"),
    "controlnet": ("controlnet", "t2i_adapter"),
    "diffusers": ("diffusers",),
    "vae": ("vae",),
    "loras": ("loras",),
}
# The embedded model's sub-folders and the ComfyUI kind each is listed under. Its transformers are
# transformer-only files: "diffusion_models" is ComfyUI's kind for those, listed by one core node (Load
# Diffusion Model), where "checkpoints" is read by every core node that expects a whole checkpoint (model,
# CLIP and VAE: Load Checkpoint, its unCLIP and image-only kin, model merging). Core loads neither kind of
# file here (its PixArt detection assumes PixArt-XL's width and refuses the weights with a size mismatch),
# so the kind that offers them to fewer core nodes, and says what they are, is the one.
EMBEDDED_KINDS: dict[str, str] = {
    "diffusion_models": "transformer",
    "controlnet": "controlnet",
    "vae": "vae",
    "text_encoders": "text_encoders",
}
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})


# --- model files -----------------------------------------------------------------------------------


def model_roots(kind: str) -> list[Path]:
    """The folders holding models of ``kind`` (``checkpoints``, ``text_encoders``, ``diffusers``...)."""
    if IN_COMFYUI:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:  # a kind this ComfyUI does not know
            return []
    base = os.environ.get(MODELS_ENV)
    return [Path(base) / name for name in _FOLDERS.get(kind, (kind,))] if base else []


def model_files(kind: str) -> list[str]:
    """Model files of ``kind``: paths relative to their folder, with '/' separators, sorted."""
    if IN_COMFYUI:
        try:
            return list(folder_paths.get_filename_list(kind))
        except KeyError:
            return []
    found = set()
    for root in model_roots(kind):
        for folder, _, files in os.walk(root, followlinks=True):
            for name in files:
                if Path(name).suffix.lower() in MODEL_EXTENSIONS:
                    found.add(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def register_embedded_models(folder: Path = EMBEDDED_FOLDER) -> list[tuple[str, Path]]:
    """In ComfyUI: add the embedded model's sub-folders (``EMBEDDED_KINDS``) of ``folder`` to ``folder_paths``,
    after the user's own folders, so every loader of that kind lists their files where they are (nothing is
    copied). Returns the (kind, folder) pairs added: none outside ComfyUI, none for a missing sub-folder."""
    if not IN_COMFYUI:
        return []
    added = []
    for kind, name in EMBEDDED_KINDS.items():
        path = folder / name
        if path.is_dir():
            folder_paths.add_model_folder_path(kind, str(path), is_default=False)
            added.append((kind, path))
    log.debug("PixArt-δ embedded model folders listed: %s", added)
    return added


def bundled_t5_tokenizer() -> Path | None:
    """ComfyUI's own T5 tokenizer folder (``comfy/text_encoders/t5_tokenizer``), when running in ComfyUI."""
    if not IN_COMFYUI:
        return None
    folder = Path(comfy.utils.__file__).resolve().parent / "text_encoders" / "t5_tokenizer"
    return folder if folder.is_dir() else None


# --- devices and dtypes ----------------------------------------------------------------------------


def torch_device() -> torch.device:
    """Where models compute: ComfyUI's device, else CUDA when present, else the CPU."""
    if IN_COMFYUI:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where a transformer waits between runs (outside ComfyUI: where it computes)."""
    return mm.unet_offload_device() if IN_COMFYUI else torch_device()


def intermediate_device() -> torch.device:
    """Where tensors passed between nodes live (latents, conditioning): the CPU unless ComfyUI says otherwise."""
    return mm.intermediate_device() if IN_COMFYUI else torch.device("cpu")


def text_encoder_devices(cpu_only: bool) -> tuple[torch.device, torch.device]:
    """(compute, offload) devices for a text encoder: ComfyUI's text-encoder devices, or the CPU for both."""
    cpu = torch.device("cpu")
    if cpu_only:
        return cpu, cpu
    if IN_COMFYUI:
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    device = torch_device()
    return device, device


def transformer_dtype(device: torch.device, parameters: int) -> torch.dtype:
    """The dtype ComfyUI gives a PixArt model on ``device`` (fp16, bf16 or fp32); fp16 on CUDA, else fp32."""
    if IN_COMFYUI:
        return mm.unet_dtype(device, parameters, [torch.float16, torch.bfloat16, torch.float32])
    return pick_dtype("auto", device)


def text_encoder_dtype(device: torch.device) -> torch.dtype:
    """bf16 where ``device`` computes it (the CPU, recent GPUs), else fp16 (the engine keeps T5's overflow guard)."""
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


# --- model management ------------------------------------------------------------------------------


class ModelHolder(nn.Module):
    """A plain module around an engine model: ComfyUI's ModelPatcher sets ``device`` on what it manages,
    which the engine's models (like transformers' and diffusers') expose as a read-only property."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.device = device


class ManagedModel:
    """An engine model, handed to ComfyUI's model management when running in ComfyUI.

    ``load_models`` brings it to ``load_device`` before use; ComfyUI moves it back to
    ``offload_device`` when something else needs the memory, or when ``unload`` asks. Outside ComfyUI it
    stays where it was loaded (``load_device``) unless ``unload`` moves it to the CPU. The loader nodes keep
    this object in their output, which keeps the patcher alive (ComfyUI's registry of loaded models holds it
    only weakly). ``patcher``: one made for the model already (the transformer's core MODEL), so that a single
    patcher manages its weights.
    """

    def __init__(
        self, model: nn.Module, load_device: torch.device, offload_device: torch.device, patcher: Any = None
    ) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.offloaded = False  # outside ComfyUI: moved to the CPU by ``unload``, back by ``load_models``
        self.patcher = patcher
        if IN_COMFYUI and patcher is None:
            holder = ModelHolder(model, weights_device(model, offload_device))
            self.patcher = comfy.model_patcher.ModelPatcher(
                holder, load_device=load_device, offload_device=offload_device, size=stored_bytes(model)
            )


def weights_device(module: nn.Module, default: torch.device) -> torch.device:
    """Where a module's weights are (``default`` for a module without any)."""
    first = next(module.parameters(), None)
    return default if first is None else first.device


def manage(
    model: nn.Module, load_device: torch.device, offload_device: torch.device, patcher: Any = None
) -> ManagedModel:
    """``model`` handed to model management; one loaded straight onto its compute device (``make_room``) is
    registered there at once, as ComfyUI does with its own text encoders, so ComfyUI counts its memory and can
    move it off when another model needs the room."""
    managed = ManagedModel(model, load_device, offload_device, patcher)
    if load_device != offload_device and weights_device(model, offload_device) == load_device:
        load_models([managed])
    return managed


def make_room(device: torch.device, nbytes: int) -> None:
    """Before a model loads straight onto ``device``: ComfyUI moves other models off it until ``nbytes`` are free
    (the CPU, and outside ComfyUI: nothing to do)."""
    if IN_COMFYUI and device.type != "cpu":
        mm.free_memory(nbytes + mm.extra_reserved_memory(), device)


# Bytes per weight of a quantized model, with a tenth more for the layers that stay unquantized (embeddings,
# norms, scales) and the one 16-bit layer being read: what ComfyUI is asked to free before one loads on a GPU.
_BYTES_PER_WEIGHT = {Quantization.INT8: 1.1, Quantization.NF4: 0.55}


def parameter_count(shapes: Iterable[Sequence[int]]) -> int:
    """Weights in tensors of these shapes."""
    return sum(math.prod(shape) for shape in shapes)


def placement(
    quantization: Quantization, load_device: torch.device, offload_device: torch.device, parameters: Callable[[], int]
) -> torch.device:
    """Where a model loads. Unquantized: where ComfyUI keeps it between uses (it moves it to the GPU for each use).
    Quantized: straight onto the device it computes on, after ComfyUI has made room there (``parameters`` counts
    its weights), as the paper loads its 8-bit T5: bitsandbytes quantizes there, quickly on a GPU, and is checked
    to run there, so a device it cannot serve is an error at loading, not at the first prompt."""
    if quantization is Quantization.NONE:
        return offload_device
    make_room(load_device, int(parameters() * _BYTES_PER_WEIGHT[quantization]))
    return load_device


def stored_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers, each shared tensor counted once (tied embeddings)."""
    seen: dict[tuple[torch.device, int], int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[(tensor.device, tensor.data_ptr())] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def load_models(models: Sequence[ManagedModel], memory_required: int = 0) -> None:
    """Bring ``models`` fully onto their compute device, freeing ``memory_required`` bytes more for the work."""
    if IN_COMFYUI:
        mm.load_models_gpu([m.patcher for m in models], memory_required=memory_required, force_full_load=True)
        return
    for managed in models:
        if managed.offloaded:
            managed.model.to(managed.load_device)
            managed.offloaded = False


# More bytes than any device has: ``free_memory`` never finds enough free and stops early.
_EVERYTHING = 1e30


def unload(models: Sequence[ManagedModel]) -> None:
    """Take ``models`` off their compute device now: the low-memory recipe, one large model there at a time.

    In ComfyUI its model management unloads exactly these (``free_memory`` keeping every other loaded model),
    moving them to their offload device as it does when it needs the room; the next ``load_models`` brings them
    back. Outside ComfyUI they move to the CPU (nothing to do for models that compute there) and
    ``load_models`` moves them back. Either way the C heap's free pages are then returned to the system.
    """
    names = ", ".join(type(m.model).__name__ for m in models)
    if IN_COMFYUI:
        patchers = [m.patcher for m in models]
        for device in dict.fromkeys(m.load_device for m in models):
            others = [lm for lm in mm.current_loaded_models if all(lm.model is not p for p in patchers)]
            unloaded = mm.free_memory(_EVERYTHING, device, keep_loaded=others)
            log.info("PixArt-δ low memory: %s off %s (ComfyUI unloaded %d model(s))", names, device, len(unloaded))
    else:
        moved = [m for m in models if m.load_device.type != "cpu" and not m.offloaded]
        for managed in moved:
            managed.model.to("cpu")
            managed.offloaded = True
        if moved and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("PixArt-δ low memory: %s off the compute device (%d moved to the CPU)", names, len(moved))
    return_free_heap()


# --- progress and cancel ---------------------------------------------------------------------------


class Interrupted(Exception):
    """Raised outside ComfyUI at the next check after ``cancel()`` (ComfyUI raises its own exception)."""


_cancel_requested = threading.Event()


def cancel() -> None:
    """Outside ComfyUI: ask the running node to stop at its next check (ComfyUI's Cancel button does this there)."""
    _cancel_requested.set()


def check_interrupted() -> None:
    """Raise if the user asked to stop: ComfyUI's ``InterruptProcessingException``, or ``Interrupted``."""
    if IN_COMFYUI:
        mm.throw_exception_if_processing_interrupted()
    elif _cancel_requested.is_set():
        _cancel_requested.clear()
        raise Interrupted("cancelled by the user")


class Progress:
    """The progress bar of one node's run; every update first checks whether the user pressed Cancel."""

    def __init__(self, total: int) -> None:
        self._bar = comfy.utils.ProgressBar(total) if IN_COMFYUI else None
        check_interrupted()

    def update(self, done: int, total: int) -> None:
        check_interrupted()
        if self._bar is not None:
            self._bar.update_absolute(done, total)

    def on_step(self, done: int, total: int, latents: torch.Tensor) -> None:
        """The engine's per-step callback (``sampling.samplers.StepCallback``)."""
        self.update(done, total)
