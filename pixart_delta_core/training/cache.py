"""The feature cache: T5 caption features and VAE posteriors computed once, in safetensors shards.

As the reference does, T5 and the VAE run once over the dataset, before training, so neither is in
memory while the denoiser trains. Each record keeps its caption features and mask, the VAE
posterior's mean and standard deviation (raw latents: a fresh latent is sampled at every step), and
for ControlNet data its control image's latent (the posterior mean, as inference encodes it).

``manifest.json`` says which T5, tokenizer, VAE, resolution and control extractor made the cache, and
from which records (``identity.py``: model files and records known by their contents); a run that asks
for others, or whose images or captions changed since, is refused. Shards are written whole (to a
temporary name, then renamed), so an interrupted build resumes at the first missing shard; the manifest
is written with the first shard, so a build that failed before it leaves nothing that blocks the next.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import InputError
from ..pictures import upright_size
from ..pipeline.images import from_pil, to_pil
from ..pipeline.resolution import Size
from ..vae.vae_config import SD_VAE, VaeConfig
from .config import ControlExtractor, ModelSection
from .control import EXTRACTORS
from .data import Record, check_images, load_image, read_records, training_size
from .identity import dataset_fingerprint, model_fingerprint

if TYPE_CHECKING:
    from ..text.encoder import TextEncoder
    from ..vae.autoencoder import Vae

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_VERSION = 2  # 2: model files and records known by their contents


@dataclass(frozen=True)
class CacheKey:
    """What a cache's features depend on: a cache made with other values cannot serve the run.

    ``t5``, ``tokenizer``, ``vae`` and ``dataset`` are fingerprints (``identity.py``).
    """

    t5: str
    tokenizer: str | None
    vae: str
    resolution: int
    multi_scale: bool
    caption_length: int
    control: str | None
    records: int
    dataset: str


FINGERPRINTS = ("t5", "tokenizer", "vae")  # CacheKey fields that are digests: a message names them, not their values


@dataclass(frozen=True)
class Batch:
    """Cached features of one batch, all of one size (one aspect-ratio bin)."""

    caption: Tensor  # [B, L, C] T5 features, zeros where the mask is 0
    mask: Tensor  # [B, L] int64, 1 = real token
    mean: Tensor  # [B, 4, h, w] raw VAE posterior mean
    std: Tensor  # [B, 4, h, w] raw VAE posterior standard deviation
    control: Tensor | None  # [B, 4, h, w] raw latent of the control image
    size: Size  # (height, width) in px

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """[C, h, w] of one record's latents (what the per-sample noise is drawn as)."""
        return tuple(self.mean.shape[1:])

    def to(self, device: torch.device | str) -> Batch:
        control = None if self.control is None else self.control.to(device)
        tensors = {name: getattr(self, name).to(device) for name in ("caption", "mask", "mean", "std")}
        return replace(self, control=control, **tensors)

    def __len__(self) -> int:
        return self.caption.shape[0]


class FeatureCache:
    """A built cache: its manifest and the records' sizes; ``batch`` reads records of one size."""

    def __init__(self, folder: Path) -> None:
        manifest = json.loads((folder / MANIFEST).read_text())
        self.folder = folder
        self.key = CacheKey(**manifest["key"])
        self.shard_size: int = manifest["shard_size"]
        self.scaling_factor: float = manifest["scaling_factor"]

    @cached_property
    def sizes(self) -> list[Size]:
        """(height, width) in px of every record, in order."""
        sizes: list[Size] = []
        for shard in range(self.shards):
            with safe_open(self._shard(shard), "pt") as f:
                sizes += [tuple(s) for s in json.loads(f.metadata()["sizes"])]
        return sizes

    @property
    def shards(self) -> int:
        return -(-self.key.records // self.shard_size)

    def _shard(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.safetensors"

    def batch(self, indices: list[int]) -> Batch:
        """The records ``indices`` (all of one size) stacked into a ``Batch``."""
        sizes = {self.sizes[i] for i in indices}
        if len(sizes) != 1:
            raise InputError(f"a batch must hold records of one size, found {sorted(sizes)}")
        items: dict[str, list[Tensor]] = defaultdict(list)
        for index in indices:
            shard, item = divmod(index, self.shard_size)
            with safe_open(self._shard(shard), "pt") as f:
                for name in ("caption", "mask", "mean", "std", "control"):
                    if f"{item}.{name}" in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                        items[name].append(f.get_tensor(f"{item}.{name}"))
        stacked = {name: torch.stack(values) for name, values in items.items()}
        return Batch(**{"control": None, **stacked}, size=sizes.pop())


def build_cache(
    model: ModelSection,
    dataset: Path,
    folder: Path,
    resolution: int,
    caption_length: int,
    multi_scale: bool = True,
    control: ControlExtractor | None = None,
    shard_size: int = 256,
    device: torch.device | str = "cpu",
    vae_defaults: VaeConfig = SD_VAE,
    records: list[Record] | None = None,
) -> FeatureCache:
    """Encode ``dataset`` into ``folder`` (or check and reuse what is there); returns the cache.

    ``vae_defaults`` fill what the VAE's files do not say, its scaling factor above all: those of the VAE
    the transformer pairs with (``vae_defaults_for``: the SDXL VAE's 0.13025 for PixArt-Σ). ``records``: those
    of ``dataset`` where the caller has read them already.

    Raises ``InputError`` when ``folder`` holds a cache made by another T5, VAE, resolution, caption
    length or control extractor, or from other records (changed images or captions), and before loading
    a model when an image cannot be read. T5 and the VAE load only when shards are missing.
    """
    from ..text.encoder import load_text_encoder
    from ..vae.autoencoder import load_vae

    records = read_records(dataset) if records is None else records
    if control is ControlExtractor.GIVEN and any(r.control is None for r in records):
        raise InputError(f"data.control = 'given' but {dataset} has records without a \"control\" image")
    key = CacheKey(
        model_fingerprint(model.t5, "model.t5"),
        None if model.tokenizer is None else model_fingerprint(model.tokenizer, "model.tokenizer"),
        model_fingerprint(model.vae, "model.vae"),
        resolution,
        multi_scale,
        caption_length,
        None if control is None else control.value,
        len(records),
        dataset_fingerprint(records, dataset),
    )
    manifest = folder / MANIFEST
    shards = range(-(-len(records) // shard_size))
    if manifest.is_file():
        _check_key(json.loads(manifest.read_text()), key, folder)
        missing = [s for s in shards if not (folder / f"shard-{s:05d}.safetensors").is_file()]
    else:  # shards without a manifest are of an unknown run: all are written anew
        missing = list(shards)
    if missing:
        check_images(records)
        log.info("caching features of %d records in %s (%d shards to write)", len(records), folder, len(missing))
        encoder = load_text_encoder(model.t5, "fp32", device, model.tokenizer)
        vae = load_vae(model.vae, "fp32", device, defaults=vae_defaults)
        folder.mkdir(parents=True, exist_ok=True)  # once the images and models are read: a refusal leaves no folder
        for shard in missing:
            part = records[shard * shard_size : (shard + 1) * shard_size]
            _write_shard(folder / f"shard-{shard:05d}.safetensors", part, encoder, vae, key, control)
            if not manifest.is_file():
                info = {"version": CACHE_VERSION, "key": asdict(key), "shard_size": shard_size}
                manifest.write_text(json.dumps({**info, "scaling_factor": vae.scaling_factor}, indent=1))
    return FeatureCache(folder)


def _check_key(manifest: dict, wanted: CacheKey, folder: Path) -> None:
    if manifest.get("version") != CACHE_VERSION:
        raise InputError(
            f"the feature cache in {folder} was made by another version of the pack (cache format "
            f"{manifest.get('version')}, this one writes {CACHE_VERSION}): delete it or give another data.cache folder"
        )
    found = CacheKey(**manifest["key"])
    differ = [
        f"model.{name}: other contents than the cache's"
        if name in FINGERPRINTS
        else f"{name}: cache has {getattr(found, name)!r}, the run asks for {getattr(wanted, name)!r}"
        for name in CacheKey.__dataclass_fields__
        if getattr(found, name) != getattr(wanted, name) and name != "dataset"
    ]
    if differ:
        raise InputError(
            f"the feature cache in {folder} was made for another run ({'; '.join(differ)}): "
            f"give another data.cache folder or delete this one"
        )
    if found.dataset != wanted.dataset:
        raise InputError(
            f"the feature cache in {folder} was made from other records: images, control images or captions of "
            f"{found.records} records changed since (a file's size or modification time, or a caption's text); "
            f"delete the cache to encode the data set again, or give another data.cache folder"
        )


def _write_shard(
    path: Path, records: list[Record], encoder: TextEncoder, vae: Vae, key: CacheKey, control: ControlExtractor | None
) -> None:
    tensors: dict[str, Tensor] = {}
    sizes = []
    for item, record in enumerate(records):
        with Image.open(record.image) as image:
            size = training_size(upright_size(image), key.resolution, key.multi_scale)
        sizes.append(list(size))
        caption = encoder.encode([record.caption], key.caption_length)
        tensors[f"{item}.caption"] = caption.embeddings[0].float().cpu()
        tensors[f"{item}.mask"] = caption.mask[0].cpu()
        tensors[f"{item}.mean"], tensors[f"{item}.std"] = _posterior(vae, load_image(record.image, size))
        if control is not None:
            tensors[f"{item}.control"] = _posterior(vae, _control_pixels(record, control, size))[0]
    temporary = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata={"sizes": json.dumps(sizes)})
    os.replace(temporary, path)


def _posterior(vae: Vae, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """An image [1, 3, H, W] in [-1, 1] -> the VAE posterior's mean and std [4, h, w] (raw latents, fp32, CPU;
    the std is zeros for TAESD, which is deterministic)."""
    return vae.posterior(pixels)


def _control_pixels(record: Record, control: ControlExtractor, size: Size) -> Tensor:
    """The control image of ``record`` at ``size``, [1, 3, H, W] in [-1, 1]: given, or extracted."""
    if control is ControlExtractor.GIVEN:
        assert record.control is not None  # checked in build_cache
        return load_image(record.control, size)
    image = to_pil(load_image(record.image, size))[0]
    return from_pil(EXTRACTORS[control](image))
