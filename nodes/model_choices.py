"""What the loaders list and open: model files from ComfyUI's model folders, and model folders among them.

A model folder (a diffusers pipeline, an HF T5 folder...) is listed once, by its path, and the files
inside it are not listed on their own: a shard of a split model is not a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..pixart_delta_core.errors import CheckpointError
from . import host

FolderTest = Callable[[Path], bool]

# Where each kind of model file loads, by the engine's pipeline argument that takes it (errors.GIVEN_AS's keys): what
# a loader's error says of a file of another kind picked in it (a LoRA in the checkpoint loader).
INSTEAD = {
    "transformer": "load it with PixArt-δ Checkpoint Loader",
    "controlnet": "load it with PixArt-δ ControlNet Loader",
    "t5": "load it with PixArt-δ T5 Loader",
    "vae": "load it with core Load VAE",
    "loras": "load it with PixArt-δ LoRA Loader",
}


def _has(folder: Path, pattern: str) -> bool:
    return any(folder.glob(pattern))


def is_transformer_folder(folder: Path) -> bool:
    """A diffusers pipeline (model_index.json, transformer/) or a diffusers transformer folder."""
    if (folder / "model_index.json").is_file() or (folder / "transformer").is_dir():
        return True
    return (folder / "config.json").is_file() and _has(folder, "diffusion_pytorch_model*.safetensors")


def is_text_encoder_folder(folder: Path) -> bool:
    """An HF T5 folder (config.json + model*.safetensors), or a pipeline holding one in text_encoder/."""
    if (folder / "config.json").is_file() and _has(folder, "model*.safetensors"):
        return True
    return (folder / "text_encoder").is_dir() and (folder / "text_encoder" / "config.json").is_file()


def is_controlnet_folder(folder: Path) -> bool:
    """A diffusers-style ControlNet adapter folder (config.json + diffusion_pytorch_model*.safetensors)."""
    return (folder / "config.json").is_file() and _has(folder, "diffusion_pytorch_model*.safetensors")


@dataclass(frozen=True)
class ModelChoices:
    """The model files of some ComfyUI model kinds, plus the model folders ``is_folder`` recognises.

    ``folder_kinds`` are kinds that hold folders only (ComfyUI's ``diffusers``).
    """

    kinds: Sequence[str]
    is_folder: FolderTest
    folder_kinds: Sequence[str] = field(default=())

    def names(self) -> list[str]:
        """Every choice, sorted: files as ComfyUI lists them, folders by their path."""
        names: set[str] = set()
        for kind in self.kinds:
            folders = self._folders(kind)
            names.update(folders)
            names.update(f for f in host.model_files(kind) if not _inside(f, folders))
        for kind in self.folder_kinds:
            names.update(self._folders(kind))
        return sorted(names)

    def path(self, name: str) -> Path:
        """The file or model folder called ``name`` in the first kind that has it."""
        looked: list[str] = []
        for kind in [*self.kinds, *self.folder_kinds]:
            for root in host.model_roots(kind):
                looked.append(str(root))
                candidate = _within(root, name)
                if candidate is None:
                    continue
                if candidate.is_file() and kind not in self.folder_kinds:
                    return candidate
                if candidate.is_dir() and self.is_folder(candidate):
                    return candidate
        where = ", ".join(looked) if looked else f"no folder of kind {', '.join(self.kinds)} is configured"
        raise CheckpointError(f"model {name!r} not found: looked in {where}")

    def _folders(self, kind: str) -> list[str]:
        found = []
        for root in host.model_roots(kind):
            for folder, subfolders, _ in os.walk(root, followlinks=True):
                path = Path(folder)
                if path != root and self.is_folder(path):
                    found.append(path.relative_to(root).as_posix())
                    subfolders.clear()  # its insides are part of it
        return found


def _inside(file: str, folders: Sequence[str]) -> bool:
    return any(file.startswith(folder + "/") for folder in folders)


def _within(root: Path, name: str) -> Path | None:
    """``root / name`` unless ``name`` climbs out of ``root`` (checked on the names; links are followed later)."""
    joined = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([joined, os.path.normpath(root)]) != os.path.normpath(root):
        return None
    return Path(joined)


TRANSFORMERS = ModelChoices(("checkpoints", "diffusion_models"), is_transformer_folder, ("diffusers",))
TEXT_ENCODERS = ModelChoices(("text_encoders",), is_text_encoder_folder, ("diffusers",))
CONTROLNETS = ModelChoices(("controlnet", "checkpoints"), is_controlnet_folder)
