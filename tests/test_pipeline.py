"""The staged pipeline end to end, from files, against diffusers' PixArtAlphaPipeline.

Same tiny random transformer, T5, VAE and tokenizer on both sides, same seed, fp32 on the CPU.
Final latents: see ``tests.helpers.assert_latents_match``; images equal to 1/255.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import PixArtAlphaPipeline
from PIL import Image

from pixart_delta_core.demo.files import DEMO_T5, demo_t5, demo_tokenizer, demo_transformer, demo_vae, write_demo_models
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.pipeline.generation import Control, PixArtPipeline
from pixart_delta_core.sampling.choices import LcmTimesteps, Sampler
from pixart_delta_core.sampling.samplers import SamplingSettings, make_scheduler
from tests.helpers import TINY_MS, assert_latents_match, diffusers_twin

MS_1024 = replace(TINY_MS, sample_size=128, caption_channels=DEMO_T5["d_model"], caption_length=120)
BASE_512 = replace(MS_1024, sample_size=64, micro_conditions=False, interpolation_scale=1.0)
PROMPTS = ["A small red fox, sitting in the snow", "two cats"]


@pytest.fixture(scope="module", params=[MS_1024, BASE_512], ids=["1024-ms", "512"])
def setup(request, tmp_path_factory):
    transformer, t5, vae = demo_transformer(3, request.param), demo_t5(4), demo_vae(5)
    files = write_demo_models(tmp_path_factory.mktemp("models"), transformer, t5, vae)
    diffusers = {
        "tokenizer": demo_tokenizer(),
        "text_encoder": t5,
        "vae": vae,
        "transformer": diffusers_twin(transformer),
    }
    return files, diffusers


def random_picture(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def ours(files, **kwargs):
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", dtype="fp32")
    return replace(pipeline, t5_dtype="fp32")(PROMPTS, resolution_binning=False, width=192, height=128, **kwargs)


def theirs(models, settings: SamplingSettings, seed: int, negative: str | None, output_type: str):
    scheduler, timesteps = make_scheduler(settings)
    pipe = PixArtAlphaPipeline(scheduler=scheduler, **models)
    pipe.set_progress_bar_config(disable=True)
    steps = {"timesteps": timesteps.tolist()} if settings.sampler is Sampler.LCM else {}
    return pipe(
        PROMPTS,
        negative_prompt=negative or "",
        num_inference_steps=settings.steps if not steps else None,
        guidance_scale=settings.guidance,
        height=128,
        width=192,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
        use_resolution_binning=False,
        clean_caption=False,
        **steps,
    ).images


@pytest.mark.parametrize(
    ("settings", "negative"),
    [
        (SamplingSettings(Sampler.LCM, steps=4, lcm_timesteps=LcmTimesteps.REFERENCE), None),
        (SamplingSettings(Sampler.LCM, steps=4, lcm_timesteps=LcmTimesteps.DIFFUSERS), None),
        (SamplingSettings(Sampler.DPM_SOLVER, steps=5, guidance=4.5), "blurry, low quality"),
    ],
    ids=["lcm4-reference", "lcm4-diffusers", "dpm++-cfg"],
)
def test_pipeline_matches_diffusers(setup, settings: SamplingSettings, negative: str | None) -> None:
    files, models = setup
    result = ours(
        files,
        sampler=settings.sampler.value,
        steps=settings.steps,
        guidance=settings.guidance,
        lcm_timesteps=settings.lcm_timesteps.value,
        negative_prompt=negative,
        seed=21,
    )
    assert_latents_match(result.latents, theirs(models, settings, 21, negative, "latent"))
    images = theirs(models, settings, 21, negative, "np")  # [B, H, W, 3] in [0, 1]
    expected = (images * 255).round().astype(np.int16)
    for got, want in zip(result.images, expected, strict=True):
        assert np.abs(np.asarray(got, dtype=np.int16) - want).max() <= 1


def test_same_seed_same_image_other_seed_other_image(setup) -> None:
    files, _ = setup
    first, again, other = (ours(files, seed=s).latents for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("guidance", [1.0, 4.5], ids=["lcm", "guided-null-caption"])
def test_images_per_prompt_repeat_each_prompt_in_turn(setup, guidance: float) -> None:
    """Two images per prompt are the images of each prompt given twice in a row, with the same noise."""
    files, _ = setup
    each_twice = ours(files, seed=2, images_per_prompt=2, guidance=guidance).latents
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", dtype="fp32")
    listed = replace(pipeline, t5_dtype="fp32")(
        [p for p in PROMPTS for _ in range(2)],
        resolution_binning=False,
        width=192,
        height=128,
        seed=2,
        guidance=guidance,
    ).latents
    assert each_twice.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(each_twice, listed)


def test_the_transformer_file_is_recognised_once_per_pipeline(setup, monkeypatch) -> None:
    import pixart_delta_core.models.transformer as loading

    files, _ = setup
    calls: list[object] = []
    detect = loading.detect_transformer
    monkeypatch.setattr(loading, "detect_transformer", lambda *a, **k: calls.append(a) or detect(*a, **k))
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", dtype="fp32")
    for seed in (0, 1):
        pipeline("a fox", width=64, height=64, resolution_binning=False, seed=seed)
    assert len(calls) == 1


def test_guidance_on_a_file_without_a_null_caption_uses_the_empty_prompt(tmp_path: Path, caplog) -> None:
    """diffusers-layout files carry no learned null caption: "" is encoded as the unconditional input."""
    from safetensors.torch import load_file, save_file

    from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, to_diffusers

    files = write_demo_models(tmp_path / "models")
    weights = to_diffusers(load_file(files.transformer))
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in weights.items() if k not in REFERENCE_ONLY}, diffusers_file)
    run = {"sampler": "ddim", "steps": 2, "width": 64, "height": 64, "resolution_binning": False}
    with caplog.at_level(logging.INFO, logger="pixart_delta_core"):
        implicit = PixArtPipeline(diffusers_file, files.t5, files.vae, files.tokenizer, device="cpu")("a fox", **run)
    assert "unconditional input: the empty prompt" in caplog.text
    explicit = PixArtPipeline(diffusers_file, files.t5, files.vae, files.tokenizer, device="cpu")(
        "a fox", negative_prompt="", **run
    )
    assert torch.equal(implicit.latents, explicit.latents)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pixart_delta_core"):
        PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")("a fox", **run)
    assert "unconditional input: the model's learned null caption" in caplog.text


def controlled(files, folder: Path) -> PixArtPipeline:
    """A pipeline over ``files`` with a random ControlNet (one copy) that fits them, fp32 throughout."""
    from safetensors.torch import save_file

    controlnet = randomize_(ControlNetTransformer.from_base(demo_transformer(3, replace(MS_1024)), copies=1), seed=9)
    control_file = folder / "controlnet.safetensors"
    save_file(controlnet.state_dict(), str(control_file))
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, control_file, "cpu", "fp32")
    return replace(pipeline, t5_dtype="fp32")


def test_img2img_and_control_change_the_result(setup, tmp_path: Path) -> None:
    files, _ = setup
    picture = random_picture(150, 100)
    plain = ours(files, seed=1).latents
    img2img = ours(files, seed=1, init_image=picture, strength=0.5).latents
    assert not torch.allclose(plain, img2img)

    run = controlled(files, tmp_path)
    common = {"resolution_binning": False, "width": 192, "height": 128, "seed": 1}
    steered = run(PROMPTS, control=Control(picture), **common).latents
    unsteered = run(PROMPTS, control=Control(picture, strength=0.0), **common).latents
    assert not torch.allclose(steered, plain)
    assert torch.equal(unsteered, plain)


class Stop(Exception):
    """Raised where a run would start denoising: its checks and warnings are all behind."""


def stop(name: str) -> None:
    """An ``on_stage`` callback that stops a run before denoising."""
    if name == "denoise":
        raise Stop


def fp32_pipeline(files) -> PixArtPipeline:
    """The test models' pipeline, every model in fp32 on the CPU."""
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", dtype="fp32")
    return replace(pipeline, t5_dtype="fp32")


def test_a_control_image_of_another_aspect_ratio_is_cropped_with_a_warning(setup, tmp_path: Path, caplog) -> None:
    """Compared with the asked size (the picture), not the bin it is generated at; the run stops before denoising."""

    run = controlled(setup[0], tmp_path)
    pictures = {"wide": random_picture(300, 100), "same ratio": random_picture(150, 100)}
    for binning in (False, True):
        for name, picture in pictures.items():
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="pixart_delta_core"), pytest.raises(Stop):
                run("a fox", control=Control(picture), width=192, height=128, resolution_binning=binning, on_stage=stop)
            said = [r.getMessage() for r in caplog.records if "control image" in r.getMessage()]
            if name == "wide":
                assert said == [
                    "control image is 300x100 px, the picture 192x128 px (width x height): another aspect ratio, so it "
                    "is scaled to cover the picture and centre-cropped, its edges cut off (not stretched)"
                ]
            else:
                assert said == [], (binning, said)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core"), pytest.raises(Stop):  # no size: the init's
        run("a fox", init_image=random_picture(192, 128), control=Control(pictures["wide"]), on_stage=stop)
    assert [r.getMessage() for r in caplog.records if "control image" in r.getMessage()] == [
        "control image is 300x100 px, the picture 192x128 px (width x height, the init image's size): another aspect "
        "ratio, so it is scaled to cover the picture and centre-cropped, its edges cut off (not stretched)"
    ]


def test_an_init_image_of_another_aspect_ratio_is_cropped_with_a_warning(setup, caplog) -> None:
    """As the control image: compared with the asked size, not the bin; without a size the init image's own is
    asked, and nothing is said. The run stops before denoising."""

    run = fp32_pipeline(setup[0])
    cases = [
        (random_picture(300, 100), {"width": 192, "height": 128}, "init image is 300x100 px, the picture 192x128 px"),
        (torch.rand(3, 96, 64), {"width": 192, "height": 128}, "init image is 64x96 px, the picture 192x128 px"),
        (random_picture(150, 100), {"width": 192, "height": 128}, None),  # the same ratio: only scaled
        (random_picture(320, 112), {}, None),  # no size: the picture is the init image's
    ]
    for binning in (False, True):
        for picture, size, warned in cases:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="pixart_delta_core"), pytest.raises(Stop):
                run("a fox", init_image=picture, strength=0.5, resolution_binning=binning, on_stage=stop, **size)
            said = [r.getMessage() for r in caplog.records if "init image" in r.getMessage()]
            if warned is None:
                assert said == [], (binning, said)
            else:
                assert len(said) == 1 and said[0].startswith(warned), (binning, said)
                assert said[0].endswith(
                    "another aspect ratio, so it is scaled to cover the picture and centre-cropped, "
                    "its edges cut off (not stretched)"
                )


def test_an_init_image_that_sets_the_size_says_once_how_it_is_fitted_and_why(setup, tmp_path: Path, caplog) -> None:
    """An init image of 200x120 px makes a picture of 192x128 px (each side to the nearest multiple of 16): one
    message says so and why, not a complaint about a crop the pack chose itself; one only scaled gets a note."""

    run = fp32_pipeline(setup[0])
    random_picture(200, 120).save(tmp_path / "init.png")
    cropped = (
        f"init image {tmp_path / 'init.png'} is 200x120 px (width x height), a side not a multiple of 16 px, as a "
        "picture's must be: it is scaled and centre-cropped to 192x128 px, the nearest such size, its edges cut off "
        "(another aspect ratio, not stretched); a width and height choose another size (--width and --height on the "
        "command line)"
    )
    scaled = "init image is 136x136 px (width x height), a side not a multiple of 16 px, as a picture's must be: it is "
    scaled += "scaled to 128x128 px, the nearest such size; a width and height choose another size"
    for picture, level, said in (
        (tmp_path / "init.png", logging.WARNING, cropped),
        (random_picture(136, 136), logging.INFO, scaled),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pixart_delta_core"), pytest.raises(Stop):
            run("a fox", init_image=picture, strength=0.5, on_stage=stop)
        told = [r for r in caplog.records if "init image" in r.getMessage() and r.levelno >= logging.INFO]
        assert len(told) == 1 and told[0].getMessage().startswith(said) and told[0].levelno == level, told


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"width": 100, "height": 128, "resolution_binning": False}, InputError, "multiple of 16"),
        ({"width": 0, "height": 128}, InputError, "at least 16 px"),
        ({"width": 20000, "height": 16, "resolution_binning": False}, InputError, "at most 8192"),
        ({"steps": 60}, InputError, "1 to 50 steps"),
        ({"sampler": "dpm_solver++", "steps": 0}, InputError, "1 to 1000 steps"),
        ({"strength": 0.5}, InputError, "needs an init image"),
        ({"strength": 1.5, "init_image": Image.new("RGB", (64, 64))}, InputError, r"\(0, 1\]"),
        ({"sampler": "heun"}, InputError, "unknown sampler"),
        ({"init_image": "/nonexistent.png", "strength": 0.5}, InputError, "does not exist"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, error, message: str, tmp_path: Path) -> None:
    files = write_demo_models(tmp_path)
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    with pytest.raises(error, match=message):
        pipeline("a fox", **kwargs)


def test_a_vae_given_as_the_transformer_and_a_missing_tokenizer(tmp_path: Path) -> None:
    files = write_demo_models(tmp_path)
    with pytest.raises(CheckpointError, match="looks like a VAE"):
        PixArtPipeline(files.vae, files.t5, files.vae, files.tokenizer, device="cpu")("a fox")
    with pytest.raises(CheckpointError, match="tokenizer"):
        PixArtPipeline(files.transformer, files.t5, files.vae, device="cpu")("a fox")


@pytest.mark.parametrize("low_memory", [False, True])
def test_low_memory_mode_decodes_in_tiles(setup, monkeypatch, low_memory: bool) -> None:
    from pixart_delta_core.vae.autoencoder import Vae

    files, _ = setup
    asked: list[bool | None] = []
    decode = Vae.decode
    monkeypatch.setattr(
        Vae, "decode", lambda self, latents, tiled=None: asked.append(tiled) or decode(self, latents, tiled)
    )
    pipeline = PixArtPipeline(
        files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", low_memory=low_memory
    )
    result = pipeline("a fox", width=64, height=64, resolution_binning=False, seed=0)
    assert result.images[0].size == (64, 64)
    assert asked == [True if low_memory else None], "low-memory mode always tiles; otherwise the size decides"
    if low_memory:
        assert not pipeline._loaded, "low-memory mode keeps no model between stages"


@pytest.mark.parametrize("low_memory", [False, True])
def test_each_stage_frees_the_model_before_the_next_loads(setup, low_memory: bool) -> None:
    """T5 is gone before denoising starts, the transformer before decoding: by reference counting alone,
    with the cycle collector off (the pipeline does not pay for a full collection between stages)."""
    import gc
    import weakref

    files, _ = setup
    pipeline = PixArtPipeline(
        files.transformer, files.t5, files.vae, files.tokenizer, device="cpu", low_memory=low_memory
    )
    loaded: dict[str, weakref.ref] = {}
    for name in ("load_text_encoder", "load_transformer"):
        load = getattr(pipeline, name)
        setattr(pipeline, name, lambda load=load, name=name: loaded.setdefault(name, weakref.ref(load()))())
    alive_at: dict[str, list[str]] = {}

    def on_stage(stage: str) -> None:
        alive_at[stage] = sorted(name for name, ref in loaded.items() if ref() is not None)

    gc.collect()
    gc.disable()
    try:
        pipeline("a fox", width=64, height=64, resolution_binning=False, seed=0, on_stage=on_stage)
    finally:
        gc.enable()
    assert alive_at == {"text": [], "denoise": [], "decode": [], "done": []}
