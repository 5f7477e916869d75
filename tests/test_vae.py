"""The VAE: every layout users hold loads the same weights; encode/decode agree with diffusers; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from pixart_delta_core import cli
from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.transformer_config import TransformerConfig, vae_defaults_for
from pixart_delta_core.vae.autoencoder import Vae, inspect_vae, load_vae
from pixart_delta_core.vae.vae_config import (
    SCALING_FROM_CONFIG,
    SD_VAE,
    SDXL_VAE,
    VaeConfig,
    VaeLayout,
    ldm_table,
)
from tests.helpers import TINY, random_transformer

TINY_VAE = VaeConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)  # 1/8 like SD
TWO_LEVELS = VaeConfig(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4)  # 1/2
HINTS = {"norm_num_groups": TINY_VAE.norm_num_groups}  # the one field weights cannot tell
EXACT = dict(rtol=0, atol=1e-6)  # same weights, same ops, one image: equal up to float rounding
BATCHED = dict(rtol=1e-5, atol=2e-5)  # fp32; diffusers convolves the batch at once, the engine one image at a time

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: one thread is about 30x faster than two


def random_vae(config: VaeConfig, seed: int = 0) -> AutoencoderKL:
    """diffusers' AutoencoderKL with random weights; norm weights around 1 so that every tensor differs."""
    model = randomize_(AutoencoderKL(**config.diffusers_kwargs()), seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.add_(1.0)
    return model.eval()


def ldm_state_dict(model: AutoencoderKL) -> dict[str, torch.Tensor]:
    return ldm_table(len(model.config.block_out_channels)).to_theirs(model.state_dict())


def legacy_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' old attention names (query/key/value/proj_attn), as older VAE files hold them."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in state_dict.items():
        for new, legacy in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        renamed[key] = value
    return renamed


def write_layouts(model: AutoencoderKL, folder: Path) -> dict[str, Path]:
    sd, ldm = model.state_dict(), ldm_state_dict(model)
    paths = {
        "ldm-safetensors": folder / "vae-ft-mse.safetensors",
        "ldm-ckpt-in-sd-checkpoint": folder / "sd-checkpoint.ckpt",
        "ldm-pth-with-training-state": folder / "vae-training.pth",
        "diffusers-file": folder / "diffusers-vae.safetensors",
        "legacy-diffusers-file": folder / "old-diffusers-vae.safetensors",
        "diffusers-folder": folder / "sd-vae-ft-mse",
        "pipeline-folder": folder / "PixArt-XL-2-512x512",
    }
    save_file(ldm, str(paths["ldm-safetensors"]))
    whole = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    whole["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
    torch.save({"state_dict": whole, "global_step": 840000}, paths["ldm-ckpt-in-sd-checkpoint"])
    leftovers = {"loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4), "model_ema.decay": torch.tensor(0.9)}
    torch.save({"state_dict": {**ldm, **leftovers}}, paths["ldm-pth-with-training-state"])
    save_file(sd, str(paths["diffusers-file"]))
    save_file(legacy_names(sd), str(paths["legacy-diffusers-file"]))
    config = {"_class_name": "AutoencoderKL", **json.loads(json.dumps(dict(model.config)))}
    for vae_folder in (paths["diffusers-folder"], paths["pipeline-folder"] / "vae"):
        vae_folder.mkdir(parents=True)
        save_file(sd, str(vae_folder / "diffusion_pytorch_model.safetensors"))
        (vae_folder / "config.json").write_text(json.dumps(config))
    (paths["pipeline-folder"] / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    return paths


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    model = random_vae(TINY_VAE, seed=3)
    return model, write_layouts(model, tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def vae(model_and_files) -> Vae:
    return load_vae(model_and_files[1]["ldm-safetensors"], hints=HINTS)


# --- the key table ---------------------------------------------------------------------------------


def test_ldm_names_of_the_sd_vae_agree_with_diffusers_own_converter() -> None:
    """Our table's LDM names, read back by diffusers' converter, give diffusers' keys and shapes."""
    with torch.device("meta"):
        model = AutoencoderKL(**SD_VAE.diffusers_kwargs())
    sd = model.state_dict()
    ldm = ldm_table(4).to_theirs(sd)
    assert len(ldm) == 248
    known = {  # names and shapes as in vae-ft-mse-840000-ema-pruned
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.3.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.norm_out.weight": (128,),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }
    assert {k: tuple(ldm[k].shape) for k in known} == known
    assert "decoder.up.0.upsample.conv.weight" not in ldm and "encoder.down.3.downsample.conv.weight" not in ldm
    back = convert_ldm_vae_checkpoint(ldm, dict(model.config))
    assert back.keys() == sd.keys()
    assert all(back[k].shape == sd[k].shape for k in sd)


@pytest.mark.parametrize("config", [TINY_VAE, TWO_LEVELS], ids=["four-levels", "two-levels"])
def test_ldm_file_of_any_depth_loads_the_same_weights(config: VaeConfig, tmp_path: Path) -> None:
    model = random_vae(config, seed=1)
    path = tmp_path / "vae.safetensors"
    save_file(ldm_state_dict(model), str(path))
    detected = inspect_vae(path, hints={"norm_num_groups": config.norm_num_groups})
    assert detected.layout is VaeLayout.LDM
    assert detected.config == config
    loaded = load_vae(path, hints={"norm_num_groups": config.norm_num_groups})
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


# --- every layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        "ldm-safetensors",
        "ldm-ckpt-in-sd-checkpoint",
        "ldm-pth-with-training-state",
        "diffusers-file",
        "legacy-diffusers-file",
        "diffusers-folder",
        "pipeline-folder",
    ],
)
def test_every_layout_loads_the_same_weights(model_and_files, layout: str) -> None:
    model, paths = model_and_files
    folder = layout.endswith("folder")  # their config.json says norm_num_groups
    loaded = load_vae(paths[layout], hints=None if folder else HINTS)
    got, expected = loaded.model.state_dict(), model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert not any(p.requires_grad for p in loaded.model.parameters())
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.decode(latents), model.decode(latents).sample, **EXACT)


def test_what_inspect_reports(model_and_files) -> None:
    _, paths = model_and_files
    whole = inspect_vae(paths["ldm-ckpt-in-sd-checkpoint"], hints=HINTS)
    assert (whole.layout, whole.prefix) == (VaeLayout.LDM, "first_stage_model.")
    assert "not in the file" in whole.describe()
    training = inspect_vae(paths["ldm-pth-with-training-state"], hints=HINTS)
    assert set(training.ignored) == {"loss.discriminator.main.0.weight", "model_ema.decay"}
    folder = inspect_vae(paths["diffusers-folder"])
    assert folder.layout is VaeLayout.DIFFUSERS and folder.note == SCALING_FROM_CONFIG
    assert folder.config == TINY_VAE


def test_info_on_the_command_line_describes_a_vae(model_and_files, capsys) -> None:
    _, paths = model_and_files
    assert cli.main(["info", str(paths["diffusers-folder"])]) == 0
    out = capsys.readouterr().out
    assert "VAE, diffusers layout" in out and "block channels 16-32-32-32" in out


# --- encode and decode against diffusers -----------------------------------------------------------


def test_decode_and_encode_mean_match_diffusers(model_and_files, vae: Vae) -> None:
    model, _ = model_and_files
    g = torch.Generator().manual_seed(1)
    latents, images = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, model.decode(latents).sample, **BATCHED)  # measured 6e-6
    raw = vae.encode(images)
    assert raw.shape == (2, 4, 8, 6)
    torch.testing.assert_close(raw, model.encode(images).latent_dist.mean, **BATCHED)


def test_encode_samples_the_posterior_from_a_seed(model_and_files, vae: Vae) -> None:
    model, _ = model_and_files
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    sampled = vae.encode(images, torch.Generator().manual_seed(7), sample=True)
    theirs = model.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sampled, theirs, **BATCHED)
    again = vae.encode(images, torch.Generator().manual_seed(7), sample=True)
    other = vae.encode(images, torch.Generator().manual_seed(8), sample=True)
    mean = vae.encode(images, torch.Generator().manual_seed(7))  # no sampling: the generator is unused
    assert torch.equal(sampled, again)
    assert not torch.allclose(sampled, other) and not torch.allclose(sampled, mean)
    assert torch.equal(mean, vae.encode(images))


def test_posterior_of_one_image_is_diffusers_mean_and_std(model_and_files, vae: Vae) -> None:
    model, _ = model_and_files
    image = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean, std = vae.posterior(image)
    theirs = model.encode(image).latent_dist
    assert mean.shape == std.shape == (4, 4, 3) and mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, theirs.mean[0], **EXACT)
    torch.testing.assert_close(std, theirs.std[0], **EXACT)
    with pytest.raises(InputError, match=r"expected one image .*found a batch of 2"):
        vae.posterior(image.expand(2, -1, -1, -1))


def test_raw_and_scaled_latents(vae: Vae) -> None:
    raw = torch.randn(1, 4, 2, 2)
    assert vae.scaling_factor == 0.18215
    torch.testing.assert_close(vae.unscale(vae.scale(raw)), raw)
    torch.testing.assert_close(vae.scale(raw), raw * 0.18215)


# --- tiles -------------------------------------------------------------------------------------------

# Tiles see neither the whole image's group-norm statistics nor its attention, and are blended
# where they overlap: close to a whole decode, not equal. Random weights exaggerate it: measured mean
# |tiled - whole| 0.10-0.12 (pixels' mean magnitude 0.57; a one-pixel shift of the image gives 0.25).
TILED_MEAN_ERROR = 0.15


def test_tiled_decode_is_diffusers_tiling_and_close_to_whole(model_and_files) -> None:
    model, paths = model_and_files
    loaded = load_vae(paths["diffusers-folder"])
    vae = Vae(loaded.model, loaded.config, tile_size=128)  # 16-latent tiles: a 24x24 latent is 2x2 tiles
    latents = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(4))
    whole, tiled = vae.decode(latents, tiled=False), vae.decode(latents, tiled=True)
    assert tiled.shape == whole.shape == (1, 3, 192, 192)
    model.enable_tiling()
    model.tile_sample_min_size, model.tile_latent_min_size = 128, 16
    torch.testing.assert_close(tiled, model.decode(latents).sample, **EXACT)
    model.disable_tiling()
    error = (tiled - whole).abs().mean().item()
    assert 0 < error < TILED_MEAN_ERROR, error


def test_tiling_is_automatic_above_the_threshold_and_after_running_out_of_memory(model_and_files, caplog) -> None:
    _, paths = model_and_files
    loaded = load_vae(paths["diffusers-folder"])
    vae = Vae(loaded.model, loaded.config, tile_size=32, tile_above_pixels=64 * 64)
    small, large = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 12, 12)
    assert torch.equal(vae.decode(small), vae.decode(small, tiled=False))
    assert torch.equal(vae.decode(large), vae.decode(large, tiled=True))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    vae.model.decode = out_of_memory  # only the untiled path calls decode()
    assert torch.equal(vae.decode(small), vae.decode(small, tiled=True))
    assert "decoding in tiles" in caplog.text


# --- dtypes and model families ---------------------------------------------------------------------


def test_fp16_is_kept_where_safe_and_upcast_where_the_vae_overflows(model_and_files) -> None:
    model, paths = model_and_files
    sd_vae = load_vae(paths["ldm-safetensors"], dtype="fp16", hints=HINTS)
    assert sd_vae.dtype == torch.float16 and sd_vae.scaling_factor == SD_VAE.scaling_factor
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sd_vae.decode(latents), model.decode(latents).sample, rtol=0, atol=2e-2)
    sdxl_vae = load_vae(paths["ldm-safetensors"], dtype="fp16", defaults=SDXL_VAE, hints=HINTS)
    assert sdxl_vae.dtype == torch.float32 and sdxl_vae.scaling_factor == 0.13025
    assert sdxl_vae.to(dtype="bf16").dtype == torch.bfloat16
    assert sdxl_vae.to(dtype=torch.float16).dtype == torch.float32


def test_the_model_family_picks_the_vae() -> None:
    sigma = TransformerConfig(caption_length=300)
    assert vae_defaults_for(sigma) is SDXL_VAE and vae_defaults_for(sigma).scaling_factor == 0.13025
    assert vae_defaults_for(TINY) is SD_VAE and vae_defaults_for(TransformerConfig()).scaling_factor == 0.18215


# --- refusals ---------------------------------------------------------------------------------------


def test_a_transformer_is_not_a_vae(tmp_path: Path) -> None:
    path = tmp_path / "PixArt-XL-2-512x512.safetensors"
    save_file(random_transformer(TINY).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a VAE: it looks like a PixArt transformer"):
        load_vae(path)


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("encoder.block.0.layer.0.SelfAttention.q.weight", "T5 text encoder"),
        ("model.diffusion_model.input_blocks.0.0.weight", "Stable Diffusion UNet"),
        ("something.else.weight", "unknown model .* expected VAE keys such as encoder.conv_in.weight"),
    ],
)
def test_other_models_are_named(key: str, what: str) -> None:
    with pytest.raises(CheckpointError, match=f"not a VAE: .*{what}"):
        inspect_vae(StateDictSource({key: torch.empty(2, 2, device="meta")}))


@pytest.mark.parametrize("layout", ["ldm-safetensors", "ldm-ckpt-in-sd-checkpoint"])
def test_truncated_vae_file(model_and_files, tmp_path: Path, layout: str) -> None:
    _, paths = model_and_files
    cut = tmp_path / f"cut{paths[layout].suffix}"
    cut.write_bytes(paths[layout].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(cut, hints=HINTS)


def test_missing_and_unexpected_tensors_are_named(model_and_files) -> None:
    model, _ = model_and_files
    ldm = ldm_state_dict(model)
    del ldm["decoder.up.1.block.0.conv2.weight"]  # diffusers' up_blocks.2
    ldm["decoder.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"missing: decoder\.up_blocks\.2\.resnets\.0\.conv2\.weight.*"):
        load_vae(ldm, hints=HINTS)
    with pytest.raises(CheckpointError, match=r"unexpected: decoder\.extra\.weight"):
        load_vae(ldm, hints=HINTS)


def test_vaes_pixart_cannot_use_and_missing_config_are_refused(model_and_files) -> None:
    model, _ = model_and_files
    with pytest.raises(CheckpointError, match="multiples of the 32 group-norm groups, found \\[16\\]"):
        inspect_vae(model.state_dict())  # 16-channel blocks: the default 32 groups cannot be right
    with torch.device("meta"):
        flux_like = AutoencoderKL(**{**SD_VAE.diffusers_kwargs(), "latent_channels": 16}).state_dict()
    with pytest.raises(CheckpointError, match="16 latent channels"):
        inspect_vae(flux_like)
    both = {**{f"a.{k}": v for k, v in flux_like.items()}, **{f"b.{k}": v for k, v in flux_like.items()}}
    with pytest.raises(CheckpointError, match="several VAEs"):
        inspect_vae(both)


def test_bad_inputs_to_encode_and_decode(vae: Vae) -> None:
    with pytest.raises(InputError, match=r"\[batch, 4, height, width\], found \[1, 3, 8, 8\]"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match="multiples of 8 px, found \\[60, 64\\]"):
        vae.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(InputError, match="tile size 36 px"):
        Vae(vae.model, vae.config, tile_size=36)
