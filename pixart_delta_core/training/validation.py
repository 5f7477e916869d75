"""Validation images during training: fixed prompts and seeds, sampled with the model being trained.

The prompts are encoded once, when the feature cache is built (T5 is never resident while the
denoiser trains), and kept beside the cache. LCM models are sampled with our ``lcm`` sampler (4
steps, no guidance), others with DPM-Solver++ (14 steps, guidance 4.5 with the learned null caption),
a ControlNet with the control latent of the dataset's first record. The VAE loads for the decode only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..pipeline.images import to_pil
from ..sampling.choices import Sampler
from ..sampling.samplers import ControlSchedule, SamplingSettings, generate_latents
from ..text.embedding import TextEmbedding
from .cache import FeatureCache
from .config import ModelSection
from .trainers import ControlNetTrainer, Trainer

VALIDATION_FILE = "validation.safetensors"


def validation_captions(
    model: ModelSection, prompts: tuple[str, ...], caption_length: int, folder: Path
) -> TextEmbedding:
    """The T5 features of ``prompts`` [P, L, C], encoded once and kept in ``folder``."""
    path = folder / VALIDATION_FILE
    if path.is_file():
        with safe_open(path, "pt") as f:
            same = json.loads(f.metadata()["prompts"]) == list(prompts)
        if same:
            tensors = load_file(str(path))
            if tensors["caption"].shape[1] == caption_length:
                return TextEmbedding(tensors["caption"], tensors["mask"])
    from ..text.encoder import load_text_encoder

    encoded = load_text_encoder(model.t5, "fp32", "cpu", model.tokenizer).encode(list(prompts), caption_length)
    tensors = {"caption": encoded.embeddings.float().contiguous(), "mask": encoded.mask.contiguous()}
    save_file(tensors, str(path), metadata={"prompts": json.dumps(list(prompts))})
    return TextEmbedding(tensors["caption"], tensors["mask"])


@torch.no_grad()
def validation_grid(
    trainer: Trainer, captions: TextEmbedding, cache: FeatureCache, vae_path: Path, seed: int, lcm: bool
) -> Image.Image:
    """One image per validation prompt, side by side, at the size of the dataset's first record."""
    from ..models.transformer_config import vae_defaults_for
    from ..vae.autoencoder import load_vae

    model = trainer.saved_transformer
    height, width = cache.sizes[0]
    latent_h, latent_w = height // 8, width // 8
    settings = SamplingSettings.defaults(Sampler.LCM if lcm else Sampler.DPM_SOLVER)
    control = None
    if isinstance(trainer, ControlNetTrainer):
        latent = cache.batch([0]).control * trainer.scaling_factor  # [1, 4, h, w]
        control = ControlSchedule(trainer.controlled.controlnet.hook(model, latent.to(model.device)))
    was_training = model.training
    model.eval()
    latents = generate_latents(
        model, captions.to(model.device), settings, seed=seed, batch=captions.batch_size, height=latent_h,
        width=latent_w, control=control, image_size=(height, width),
    )  # fmt: skip
    model.train(was_training)
    vae = load_vae(vae_path, "fp32", model.device, defaults=vae_defaults_for(model.config))
    images = to_pil(vae.decode(vae.unscale(latents)))
    grid = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        grid.paste(image, (i * width, 0))
    return grid
