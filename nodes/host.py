"""The host bridge: the only module of the pack that imports ComfyUI.

Inside ComfyUI it lists model files with ``folder_paths``, picks devices and dtypes the way ComfyUI
does, hands models to ComfyUI's model management (``ModelPatcher`` + ``load_models_gpu``) so they
move to the GPU when needed and are evicted when other models need the memory, and drives the
progress bar, which is also where the user's Cancel is honoured.

Outside ComfyUI (tests, scripts) each has a plain fallback: model folders under
``$PIXART_DELTA_MODELS`` (``checkpoints/``, ``text_encoders/``... as in ComfyUI's ``models/``), models
loaded straight onto the best device and left there, no progress bar, and a cancel flag (``cancel``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

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
    return torch.float16 if device.type == "cuda" else torch.float32


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
    ``offload_device`` when something else needs the memory. Outside ComfyUI it stays where it was
    loaded (``load_device``). The loader nodes keep this object in their output, which keeps the
    patcher alive (ComfyUI's registry of loaded models holds it only weakly).
    """

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.patcher = None
        if IN_COMFYUI:
            holder = ModelHolder(model, offload_device)
            self.patcher = comfy.model_patcher.ModelPatcher(
                holder, load_device=load_device, offload_device=offload_device, size=stored_bytes(model)
            )


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
        self.total = total
        self._bar = comfy.utils.ProgressBar(total) if IN_COMFYUI else None
        check_interrupted()

    def update(self, done: int, total: int | None = None) -> None:
        check_interrupted()
        if self._bar is not None:
            self._bar.update_absolute(done, total if total is not None else self.total)

    def on_step(self, done: int, total: int, latents: torch.Tensor) -> None:
        """The engine's per-step callback (``sampling.StepCallback``)."""
        self.update(done, total)
