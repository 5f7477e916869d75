"""Checks a run makes before its feature cache is built and its models load: everything that can be known
from the config, the files' headers and the checkpoint being resumed, so that a bad setting fails in
seconds, not after an hour of encoding.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, InputError, nearest_multiples
from ..file_kinds import non_folder_part
from .config import Method, TrainingConfig, section_lines
from .config_file import toml_reader

if TYPE_CHECKING:
    from ..models.transformer_config import TransformerConfig

# The settings a checkpoint's saved state is shaped by: resuming it under others cannot load, or would mix runs.
SHAPING = {
    Method.LORA: ("lora",),
    Method.CONTROLNET: ("controlnet",),
    Method.BASE: ("architecture",),
    Method.AUTOENCODER: ("model", "autoencoder"),  # model.vae: the file whose latent scale and shift are kept
}


def check_model_files(config: TrainingConfig) -> None:
    """``InputError`` naming each ``model.*`` path that does not exist."""
    absent = [
        f"model.{name} {path}"
        for name in ("transformer", "t5", "vae", "tokenizer", "controlnet")
        if (path := getattr(config.model, name)) is not None and not path.exists()
    ]
    if absent:
        raise InputError(f"{'; '.join(absent)}: no such file or folder")


def check_model_kinds(config: TrainingConfig) -> None:
    """``InputError`` naming ``model.t5`` or ``model.vae`` when its file is of another kind (a VAE given as T5, a
    picture as the VAE...), from the headers alone, as ``generate`` checks them before loading anything. The
    autoencoder method's ``model.vae`` is the model it trains, checked where it loads."""
    if config.method is Method.AUTOENCODER:
        return
    from ..text.t5 import inspect_t5
    from ..vae.autoencoder import inspect_vae

    for name, inspect in (("t5", inspect_t5), ("vae", inspect_vae)):
        path = getattr(config.model, name)
        if path is None:
            continue
        try:
            inspect(path)
        except CheckpointError as err:
            raise InputError(f"model.{name} {err}") from None


def check_output(config: TrainingConfig) -> None:
    """``InputError`` when ``train.output`` cannot be the run's folder, or ``data.cache`` the features' (where the
    run uses one): it, or a parent, is not a folder, or no folder can be made in its nearest existing parent (a
    probe folder is made there and removed). Neither is made here: a refused run leaves no empty folder."""
    folders = {"train.output": (config.train.output, "to write the run into")}
    if config.data.cache is not None and config.method is not Method.AUTOENCODER:  # autoencoder: ignored
        folders["data.cache"] = (config.data.cache, "for the features")
    for setting, (out, purpose) in folders.items():
        nearest = out
        try:
            blocked = non_folder_part(out)
            if blocked is not None:
                part, kind = blocked
                raise InputError(f"{setting} {out}: expected a folder {purpose}, but {part} is {kind}")
            nearest = next(p for p in (out, *out.parents) if p.exists())  # a relative path ends at ".", which is there
            os.rmdir(tempfile.mkdtemp(prefix=".pixart-delta-check-", dir=nearest))
        except OSError as err:
            raise InputError(
                f"{setting} {out} cannot be made: no folder can be created in {nearest} ({err.strerror or err})"
            ) from None


def check_batch_size(config: TrainingConfig, records: int) -> None:
    """``InputError`` when one batch needs more than the dataset's ``records``."""
    if config.train.batch_size > records:
        raise InputError(f"train.batch_size {config.train.batch_size} is larger than the dataset ({records} records)")


def check_resolution(resolution: int | None, downscale: int, patch_size: int) -> None:
    """``InputError`` unless ``data.resolution`` (px; None: the transformer's own) is a multiple of the VAE's
    ``downscale`` times the transformer's ``patch_size``: otherwise its latents would not cut into whole patches
    (and a plain floor to the latent size would train at another resolution than the one asked)."""
    step = downscale * patch_size
    if resolution is not None and resolution % step:
        raise InputError(
            f"data.resolution must be a multiple of {step} px (the VAE's downscale {downscale} times the "
            f"transformer's patch size {patch_size}), found {resolution} "
            f"(nearest: {nearest_multiples(resolution, step)})"
        )


def check_against_base(config: TrainingConfig, base: TransformerConfig) -> None:
    """What the base transformer's config decides: ``data.resolution`` fits its patches (``check_resolution``),
    the ControlNet to continue fits it (its width and ``controlnet.copies``), ``lora.targets`` name its linear
    layers."""
    from ..models.transformer_config import vae_defaults_for

    check_resolution(config.data.resolution, vae_defaults_for(base).downscale, base.patch_size)
    if config.method is Method.CONTROLNET:
        from ..models.controlnet import inspect_controlnet
        from ..models.controlnet_config import ControlNetConfig

        if config.model.controlnet is None:
            ControlNetConfig.for_base(base, config.controlnet.copies)  # refuses a base too shallow
        else:
            found = inspect_controlnet(config.model.controlnet, base_config=base).config
            found.check_fits(base, InputError)
            if found.copies != config.controlnet.copies:
                raise InputError(
                    f"model.controlnet {config.model.controlnet} was trained with controlnet.copies = "
                    f"{found.copies}, this config says {config.controlnet.copies}: set controlnet.copies = "
                    f"{found.copies} to continue it"
                )
    if config.method is Method.LORA:
        from ..models.transformer import PixArtTransformer
        from .lora import lora_targets

        lora_targets(PixArtTransformer(base, device="meta"), config.lora.targets)  # no weights: names only


def check_resumed_config(config: TrainingConfig, checkpoint: Path) -> None:
    """``InputError`` when ``checkpoint`` was made by another method or other settings that shape its state
    (``SHAPING``, and ``train.optimizer``): its saved ``config.toml`` against ``config``."""
    saved_file = checkpoint / "config.toml"
    if not saved_file.is_file():
        return
    tomllib = toml_reader()
    saved, ours = tomllib.loads(saved_file.read_text()), tomllib.loads(config.to_toml())
    differ = []
    if saved.get("method") != ours["method"]:
        differ.append(f"method: {saved.get('method')!r}, now {ours['method']!r}")
    for section in SHAPING.get(config.method, ()) if not differ else ():
        # a setting the checkpoint's config.toml lacks (it predates the setting) had its default then
        defaults = tomllib.loads("\n".join(section_lines(type(getattr(config, section))())))
        was = defaults | saved.get(section, {})
        now = ours.get(section, {})  # a section the run does not write ([architecture] of a loaded model): none
        keys = sorted(set(now) | set(saved.get(section, {})))
        differ += [f"{section}.{k}: {was.get(k)!r}, now {now.get(k)!r}" for k in keys if was.get(k) != now.get(k)]
    if not differ and saved.get("train", {}).get("optimizer") != ours["train"]["optimizer"]:
        differ.append(f"train.optimizer: {saved['train'].get('optimizer')!r}, now {ours['train']['optimizer']!r}")
    if differ:
        raise InputError(
            f"--resume: the checkpoint {checkpoint} was made by another config ({'; '.join(differ)}): resume it "
            f"with its own settings ({saved_file}), or train into another train.output"
        )
