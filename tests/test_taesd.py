"""TAESD: every layout users hold loads and encodes/decodes as diffusers' AutoencoderTiny on the same random weights,
in ComfyUI's latent convention (raw = encoder / vae_scale + vae_shift); refusals name what is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image
from safetensors.torch import save_file

from pixart_delta_core import cli
from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.transformer import inspect_transformer
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.pipeline.images import to_pil
from pixart_delta_core.training.cache import _posterior
from pixart_delta_core.vae.autoencoder import TaesdVae, inspect_vae, load_vae
from pixart_delta_core.vae.taesd_config import TaesdConfig, TaesdLayout
from pixart_delta_core.vae.taesd_layout import COMFY_TABLE, DECODER_LAYERS, TAESD_KWARGS, comfy_taesd_state_dict
from pixart_delta_core.vae.vae_config import SD_VAE, SDXL_VAE, VaeConfig, VaeLayout

PARITY = dict(rtol=0, atol=1e-5)  # same weights, same convolutions, fp32: equal up to float rounding
SCALE, SHIFT = 0.5, 0.1  # a file's own vae_scale and vae_shift, far from the defaults so that a mix-up shows

pytestmark = pytest.mark.usefixtures("one_thread")


def random_taesd(seed: int = 0, **overrides: int) -> AutoencoderTiny:
    return randomize_(AutoencoderTiny(**{**TAESD_KWARGS, **overrides}), seed).eval()


def separate(model: AutoencoderTiny) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The encoder and decoder files users hold (ComfyUI's numbering without its prefixes)."""
    tensors = comfy_taesd_state_dict(model, 1.0, 0.0)
    encoder = {k.removeprefix("taesd_encoder."): v for k, v in tensors.items() if k.startswith("taesd_encoder.")}
    decoder = {k.removeprefix("taesd_decoder."): v for k, v in tensors.items() if k.startswith("taesd_decoder.")}
    return encoder, decoder


def write_layouts(model: AutoencoderTiny, folder: Path) -> dict[str, Path]:
    paths = {
        "comfy-single-file": folder / "pixart-taesd.safetensors",
        "comfy-without-scalars": folder / "taesd-plain.safetensors",
        "separate-safetensors": folder / "safetensors" / "taesd_decoder.safetensors",
        "separate-pth-given-the-encoder": folder / "pth" / "taesdxl_encoder.pth",
        "diffusers-folder": folder / "taesd",
    }
    save_file(comfy_taesd_state_dict(model, SCALE, SHIFT), str(paths["comfy-single-file"]))
    plain = {k: v for k, v in comfy_taesd_state_dict(model, 1, 0).items() if not k.startswith("vae_")}
    save_file(plain, str(paths["comfy-without-scalars"]))
    encoder, decoder = separate(model)
    for kind in ("safetensors", "pth"):
        (folder / kind).mkdir()
    save_file(encoder, str(folder / "safetensors" / "taesd_encoder.safetensors"))
    save_file(decoder, str(paths["separate-safetensors"]))
    torch.save(encoder, paths["separate-pth-given-the-encoder"])
    torch.save(decoder, folder / "pth" / "taesdxl_decoder.pth")
    model.save_pretrained(paths["diffusers-folder"])
    return paths


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    model = random_taesd(seed=3)
    return model, write_layouts(model, tmp_path_factory.mktemp("taesd"))


def pictures(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # in [-1, 1]


# --- layouts -----------------------------------------------------------------------------------------


def test_comfyui_numbering_and_the_table_cover_every_tensor_of_autoencoder_tiny() -> None:
    model = random_taesd()
    assert len(model.decoder.layers) == DECODER_LAYERS
    tensors = comfy_taesd_state_dict(model, SCALE, SHIFT)
    assert torch.equal(tensors["taesd_decoder.1.weight"], model.decoder.layers[0].weight)  # after ComfyUI's clamp
    assert torch.equal(tensors["taesd_encoder.14.weight"], model.encoder.layers[14].weight)
    assert not any(k.startswith("taesd_decoder.0.") for k in tensors)
    assert tensors["vae_scale"].dtype == torch.float32 and tensors["vae_scale"].shape == ()
    plan = COMFY_TABLE.plan_to_ours(list(tensors))
    assert set(plan) == {*model.state_dict(), "vae_scale", "vae_shift"}


LAYOUTS = {  # layout -> (its TaesdLayout, vae_scale, vae_shift it must get)
    "comfy-single-file": (TaesdLayout.COMFY, SCALE, float(torch.tensor(SHIFT))),  # as the file's fp32 holds it
    "comfy-without-scalars": (TaesdLayout.COMFY, SD_VAE.scaling_factor, 0.0),
    "separate-safetensors": (TaesdLayout.SEPARATE, SD_VAE.scaling_factor, 0.0),
    "separate-pth-given-the-encoder": (TaesdLayout.SEPARATE, SD_VAE.scaling_factor, 0.0),
    "diffusers-folder": (TaesdLayout.DIFFUSERS, SD_VAE.scaling_factor, 0.0),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_encodes_and_decodes_as_diffusers_in_comfyuis_convention(model_and_files, layout: str) -> None:
    model, paths = model_and_files
    kind, scale, shift = LAYOUTS[layout]
    detected = inspect_vae(paths[layout])
    in_file = layout == "comfy-single-file"  # the only layout whose file holds vae_scale and vae_shift
    expected = TaesdConfig(scale, shift, SD_VAE.scaling_factor, scale_in_file=in_file)
    assert detected.layout is kind and detected.config == expected
    vae = load_vae(paths[layout])
    assert isinstance(vae, TaesdVae) and vae.scaling_factor == SD_VAE.scaling_factor
    images = pictures()
    raw = vae.encode(images)
    assert raw.shape == (2, 4, 4, 3) and raw.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(raw, model.encode(images).latents / scale + shift, **PARITY)
        torch.testing.assert_close(vae.decode(raw), model.decode((raw - shift) * scale).sample, **PARITY)


def test_the_scale_and_shift_of_a_file_are_applied(model_and_files) -> None:
    model, paths = model_and_files
    vae, unit = load_vae(paths["comfy-single-file"]), load_vae(StateDictSource(comfy_taesd_state_dict(model, 1, 0)))
    images = pictures(2)
    torch.testing.assert_close(vae.encode(images), unit.encode(images) / 0.5 + 0.1, **PARITY)  # raw = z/0.5 + 0.1
    raw = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(vae.decode(raw), unit.decode((raw - 0.1) * 0.5), **PARITY)
    assert vae.scale(raw).div(raw).allclose(torch.tensor(SD_VAE.scaling_factor))  # scaled = raw x the family's


def test_a_file_without_scalars_takes_the_familys_scaling_factor(model_and_files) -> None:
    _, paths = model_and_files
    sigma = inspect_vae(paths["separate-safetensors"], defaults=SDXL_VAE)
    assert (sigma.config.vae_scale, sigma.config.vae_shift, sigma.config.scaling_factor) == (0.13025, 0.0, 0.13025)
    assert "vae_scale and vae_shift not in the file" in sigma.describe()
    assert "from the file" in inspect_vae(paths["comfy-single-file"], defaults=SDXL_VAE).describe()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_files_vae_scale_of_the_other_familys_factor_is_refused(model_and_files, dtype: torch.dtype) -> None:
    # ComfyUI's VAE Loader gives taesd 0.18215 and taesdxl 0.13025 as vae_scale, and a file saved from it keeps
    # them: such a file says which family's latents it makes. Kept as the file holds it (fp16 and bf16 round it).
    model, _ = model_and_files
    for ours, given in ((SDXL_VAE, SD_VAE), (SD_VAE, SDXL_VAE)):
        tensors = comfy_taesd_state_dict(model, ours.scaling_factor, 0.0)
        tensors["vae_scale"] = tensors["vae_scale"].to(dtype)
        said = f"{float(tensors['vae_scale']):g}"
        with pytest.raises(CheckpointError) as refused:
            inspect_vae(tensors, defaults=given)
        message = str(refused.value)
        assert f"vae_scale {said} in the file is the scaling factor of " in message
        assert f"but the family given has {given.scaling_factor:g}" in message
        assert inspect_vae(tensors, defaults=ours).config.vae_scale == float(tensors["vae_scale"])  # its own family
    sd = comfy_taesd_state_dict(model, SD_VAE.scaling_factor, 0.0)
    with pytest.raises(
        CheckpointError,
        match=r"0\.18215 in the file is the scaling factor of SD_VAE \(TAESD, for "
        r"PixArt-α/δ\), but the family given has 0\.13025 \(SDXL_VAE, for PixArt-Σ\)",
    ):
        load_vae(sd, defaults=SDXL_VAE)


def test_a_files_own_vae_scale_of_no_familys_factor_stands(model_and_files, caplog) -> None:
    # The pack's autoencoders measure their own vae_scale (training/autoencoder.py; the embedded one's is ~0.089):
    # it is the file's latent convention, taken under either family without a word.
    model, _ = model_and_files
    for scale in (0.0892, SCALE, SDXL_VAE.scaling_factor * 1.01):  # the last 1% off the family's: its own
        for family in (SD_VAE, SDXL_VAE):
            with caplog.at_level(logging.WARNING):
                config = inspect_vae(comfy_taesd_state_dict(model, scale, 0.0), defaults=family).config
            assert config.vae_scale == pytest.approx(scale) and config.scaling_factor == family.scaling_factor
    assert not caplog.records


def test_taesd_is_deterministic_posterior_std_zero_and_sampling_gives_the_mean(model_and_files) -> None:
    _, paths = model_and_files
    vae = load_vae(paths["comfy-single-file"])
    images = pictures(4)
    mean, std = _posterior(vae, images[:1])  # what the training cache stores
    assert mean.shape == (4, 4, 3) and mean.device.type == "cpu" and torch.equal(std, torch.zeros_like(mean))
    torch.testing.assert_close(mean, vae.encode(images[:1])[0], rtol=0, atol=0)
    sampled = vae.encode(images, torch.Generator().manual_seed(5), sample=True)
    torch.testing.assert_close(sampled, vae.encode(images), rtol=0, atol=0)


def test_decode_ignores_tiling(model_and_files) -> None:
    _, paths = model_and_files
    vae = load_vae(paths["comfy-single-file"])
    raw = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(vae.decode(raw, tiled=True), vae.decode(raw))


def test_a_decoder_alone_decodes_and_refuses_to_encode(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    _, decoder = separate(model)
    save_file(decoder, str(tmp_path / "taesd_decoder.safetensors"))  # no taesd_encoder beside it
    detected = inspect_vae(tmp_path / "taesd_decoder.safetensors")
    assert not detected.config.has_encoder and "decoder only" in detected.describe()
    vae = load_vae(tmp_path / "taesd_decoder.safetensors")
    raw = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(raw), model.decode((raw - 0) * SD_VAE.scaling_factor).sample, **PARITY)
    for encode in (vae.encode, vae.posterior):
        with pytest.raises(InputError, match=r"holds only its decoder: .* needs its encoder too .*taesd_encoder"):
            encode(pictures()[:1])
    comfy = {k: v for k, v in comfy_taesd_state_dict(model, SCALE, SHIFT).items() if "encoder" not in k}
    assert not inspect_vae(comfy).config.has_encoder  # the single file without its encoder, too


def test_info_on_the_command_line_describes_taesd(model_and_files, capsys) -> None:
    _, paths = model_and_files
    assert cli.main(["info", str(paths["comfy-single-file"])]) == 0
    out = capsys.readouterr().out
    assert "ComfyUI single-file TAESD layout: TAESD autoencoder" in out, out
    assert "vae_scale 0.5, vae_shift 0.1" in out and "2.4 M parameters" in out, out


# --- refusals ----------------------------------------------------------------------------------------


def test_an_encoder_without_its_decoder_is_refused(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    encoder, _ = separate(model)
    save_file(encoder, str(tmp_path / "taesd_encoder.safetensors"))
    with pytest.raises(CheckpointError, match=r"TAESD encoder without its decoder .*taesd_decoder.safetensors"):
        load_vae(tmp_path / "taesd_encoder.safetensors")


def test_a_truncated_decoder_file_and_a_numbered_file_of_another_model_are_refused(model_and_files, tmp_path) -> None:
    _, paths = model_and_files
    cut = tmp_path / "taesd_decoder.safetensors"
    cut.write_bytes(paths["separate-safetensors"].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(cut)
    sequential = {"0.weight": torch.zeros(8, 3, 1, 1), "1.weight": torch.zeros(8, 8, 1, 1)}  # not TAESD's shapes
    with pytest.raises(CheckpointError, match="not a VAE: unknown model"):
        inspect_vae(sequential)


def test_two_candidate_encoders_beside_a_decoder_are_refused_as_ambiguous(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    encoder, decoder = separate(model)
    save_file(decoder, str(tmp_path / "taesd_decoder.safetensors"))
    for name in ("taesd_encoder.pth", "taesd_encoder.bin"):  # neither has the decoder's extension
        torch.save(encoder, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"ambiguous: .*\['taesd_encoder.bin', 'taesd_encoder.pth'\]"):
        inspect_vae(tmp_path / "taesd_decoder.safetensors")


def test_taesd3_and_taef1_16_channels_are_refused_by_name() -> None:
    with torch.device("meta"):
        sixteen = comfy_taesd_state_dict(AutoencoderTiny(latent_channels=16), 1.5305, 0.0609)
    with pytest.raises(CheckpointError, match=r"a TAESD with 16 latent channels .*TAESD3 and TAEF1"):
        inspect_vae(sixteen)


def test_a_decoder_missing_a_layer_is_named(model_and_files) -> None:
    model, _ = model_and_files
    tensors = comfy_taesd_state_dict(model, SCALE, SHIFT)
    del tensors["taesd_decoder.3.conv.0.weight"]  # diffusers' decoder.layers.2
    with pytest.raises(CheckpointError, match=r"missing: decoder\.layers\.2\.conv\.0\.weight"):
        load_vae(tensors)


def test_a_kl_vae_mixed_with_taesd_keys_is_refused(model_and_files) -> None:
    model, _ = model_and_files
    with torch.device("meta"):
        kl = AutoencoderKL(**SD_VAE.diffusers_kwargs()).state_dict()
    mixed = {**kl, **comfy_taesd_state_dict(model, SCALE, SHIFT)}
    with pytest.raises(CheckpointError, match=r"both an SD-style VAE \(encoder.conv_in.weight\) and TAESD tensors"):
        inspect_vae(mixed)


def test_an_sd_vae_is_still_detected_as_the_kl_vae() -> None:
    with torch.device("meta"):
        kl = AutoencoderKL(**SD_VAE.diffusers_kwargs()).state_dict()
    detected = inspect_vae(kl)
    assert detected.layout is VaeLayout.DIFFUSERS and isinstance(detected.config, VaeConfig)


def test_bad_scalars_and_configs_of_another_architecture_are_refused(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    tensors = comfy_taesd_state_dict(model, SCALE, SHIFT)
    with pytest.raises(CheckpointError, match=r"vae_scale must be one floating-point number, found shape \[2\]"):
        inspect_vae({**tensors, "vae_scale": torch.ones(2)})
    with pytest.raises(CheckpointError, match="vae_scale must be a finite number with 0 < vae_scale"):
        inspect_vae({**tensors, "vae_scale": torch.tensor(0.0)})
    folder = tmp_path / "silu"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**dict(model.config), "act_fn": "silu"}))
    with pytest.raises(CheckpointError, match=r"config.json has \{'act_fn': 'silu'\}; the engine runs TAESD's"):
        inspect_vae(folder)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_checks_its_hints_against_taesds_fixed_architecture(model_and_files, layout: str) -> None:
    """A hint that TAESD's architecture contradicts is refused for a ComfyUI file or separate files as for a diffusers
    folder; a scaling_factor hint (diffusers' AutoencoderTiny's 1.0, not the family's) points to defaults=."""
    _, paths = model_and_files
    path = paths[layout]
    refusal = (
        r"its config.json says act_fn 'relu', but the hint gives 'silu'"  # config.json gives it: the hint meets it
        if layout == "diffusers-folder"
        else r"the hint gives \{'act_fn': 'silu'\} \(hints= of load_vae or inspect_vae\); the engine runs TAESD's "
        r"architecture \(\{'act_fn': 'relu'\}\)$"
    )
    with pytest.raises(CheckpointError, match=refusal):
        inspect_vae(path, hints={"act_fn": "silu"})
    family = r"give the family's VAE as defaults= of load_vae or inspect_vae \(SD_VAE's 0.18215 for TAESD, SDXL_VAE's"
    for hints in ({"scaling_factor": 0.13025}, {"shift_factor": 0.1}, {"act_fn": "silu", "scaling_factor": 0.13025}):
        with pytest.raises(CheckpointError, match=rf"{next(reversed(hints))}.*; .*{family} 0.13025 for TAESDXL"):
            inspect_vae(path, hints=hints)
    with pytest.raises(CheckpointError, match=family):
        load_vae(path, hints={"scaling_factor": 0.13025})
    same = {"act_fn": "relu", "scaling_factor": 1.0, "shift_factor": 0.0, "num_encoder_blocks": (1, 3, 3, 3)}
    assert inspect_vae(path, hints=same).config == inspect_vae(path).config  # TAESD's own values are taken
    assert inspect_vae(path, defaults=SDXL_VAE).config.scaling_factor == SDXL_VAE.scaling_factor  # the right way


def test_the_transformer_loader_names_a_taesd_file(model_and_files) -> None:
    _, paths = model_and_files
    with pytest.raises(CheckpointError, match=r"it looks like a TAESD autoencoder .give it as the VAE."):
        inspect_transformer(paths["comfy-single-file"])


# --- generation ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


def test_generate_decodes_with_a_taesd_file(demo_files, model_and_files, tmp_path: Path) -> None:
    _, paths = model_and_files
    taesd = paths["comfy-single-file"]
    pipeline = PixArtPipeline(demo_files.transformer, demo_files.t5, taesd, demo_files.tokenizer, device="cpu")
    made = pipeline("a fox", width=96, height=64, resolution_binning=False)
    vae = load_vae(taesd)
    wanted = to_pil(vae.decode(made.latents / SD_VAE.scaling_factor))[0]  # the engine's scaled latents -> raw
    assert np.array_equal(np.asarray(made.images[0]), np.asarray(wanted))
    args = ["generate", "--transformer", str(demo_files.transformer), "--t5", str(demo_files.t5), "--vae", str(taesd)]
    args += ["--tokenizer", str(demo_files.tokenizer), "--prompt", "a fox", "--width", "96", "--height", "64"]
    assert cli.main([*args, "--no-binning", "--out", str(tmp_path / "fox.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fox.png").convert("RGB")), np.asarray(wanted))


def test_an_init_image_with_a_decoder_alone_is_refused_before_t5(demo_files, model_and_files, monkeypatch) -> None:
    _, paths = model_and_files
    decoder = paths["separate-safetensors"].parent.parent / "decoder-only" / "taesd_decoder.safetensors"
    decoder.parent.mkdir(exist_ok=True)
    decoder.write_bytes(paths["separate-safetensors"].read_bytes())  # without its encoder beside it
    pipeline = PixArtPipeline(demo_files.transformer, demo_files.t5, decoder, demo_files.tokenizer, device="cpu")
    monkeypatch.setattr(PixArtPipeline, "encode_prompts", lambda *args: pytest.fail("T5 ran before the refusal"))
    with pytest.raises(InputError, match=r"taesd_decoder.safetensors holds only its decoder: encoding an image"):
        pipeline("a fox", width=64, height=64, init_image=Image.new("RGB", (64, 64)), strength=0.5)
