"""ControlNet loader and apply nodes with the sampler, called as ComfyUI calls them (no ComfyUI installed)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from tests.comfy_helpers import ENGINE, PACK, StandInVae, call_node, engine_latents

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = PACK.NODE_CLASS_MAPPINGS
CONTROL_KEY = PACK.nodes.conditioning.CONTROL_KEY
SCALE = 0.18215
CONTROLNET_FILE = "PixArt-XL-2-1024-ControlNet.pth"


@pytest.fixture(scope="module")
def parts(node_models):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PACK.nodes.host.MODELS_ENV, str(node_models))
        base = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=CONTROLNET_FILE)[0]
        lcm = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="PixArt-LCM-XL-2-1024-MS.safetensors")[0]
        nets = {
            name: call_node(NODES["PixArtDeltaControlNetLoader"], model=model, controlnet_name=CONTROLNET_FILE)[0]
            for name, model in (("base", base), ("lcm", lcm))
        }
        t5 = call_node(NODES["PixArtDeltaT5Loader"], t5_name="PixArt-LCM-XL-2-1024-MS", dtype="fp32")[0]
    encode = NODES["PixArtDeltaT5TextEncode"]
    return {
        "base": base,
        "lcm": lcm,
        "nets": nets,
        "positive": call_node(encode, text="a house", t5=t5)[0],
        "negative": call_node(encode, text="", t5=t5)[0],
        "image": torch.rand(1, 72, 40, 3, generator=torch.Generator().manual_seed(0)),  # any size, any ratio
        "vae": StandInVae(),
    }


def apply(parts, net: str = "base", **inputs) -> tuple:
    given = {
        "positive": parts["positive"],
        "controlnet": parts["nets"][net],
        "image": parts["image"],
        "vae": parts["vae"],
    }
    return call_node(NODES["PixArtDeltaControlNetApply"], **{**given, **inputs})


def sample(model, positive, **inputs) -> torch.Tensor:
    widgets = {"seed": 11, "width": 64, "height": 96, **inputs}
    return call_node(NODES["PixArtDeltaSampler"], model=model, positive=positive, **widgets)[0]["samples"]


def test_apply_copies_the_conditioning_and_leaves_the_inputs_alone(parts) -> None:
    before = copy.deepcopy((parts["positive"], parts["negative"]))
    positive, negative = apply(parts, negative=parts["negative"], strength=0.8, start_percent=0.1, end_percent=0.9)
    for given, out, kept in zip((parts["positive"], parts["negative"]), (positive, negative), before, strict=True):
        assert CONTROL_KEY not in given[0][1] and given[0][1].keys() == kept[0][1].keys()
        assert out is not given and out[0][1] is not given[0][1]
        assert out[0][0] is given[0][0]  # the embeddings are shared, never changed
        assert out[0][1]["attention_mask"] is given[0][1]["attention_mask"]
    control = positive[0][1][CONTROL_KEY]
    assert negative[0][1][CONTROL_KEY] is control
    assert (control.strength, control.start, control.end) == (0.8, 0.1, 0.9)


def test_apply_without_negative_strength_zero_and_bad_ranges(parts) -> None:
    positive, negative = apply(parts)
    assert negative is None and CONTROL_KEY in positive[0][1]
    assert apply(parts, strength=0.0) == (parts["positive"], None)
    with pytest.raises(ENGINE.errors.InputError, match="start_percent"):
        apply(parts, start_percent=0.5, end_percent=0.5)
    with pytest.raises(ENGINE.errors.InputError, match="already carries"):
        apply({**parts, "positive": positive})


@pytest.mark.parametrize("model", ["base", "lcm"])
def test_the_sampler_encodes_the_control_at_the_generation_size_and_steers(parts, model: str) -> None:
    settings = {"sampler": "dpm_solver++", "steps": 3, "guidance": 4.5} if model == "base" else {}
    extra = {"negative": parts["negative"]} if model == "base" else {}
    positive, negative = apply(parts, net=model, **extra)
    vae = parts["vae"]
    vae.encoded.clear()
    steered = sample(parts[model], positive, **({"negative": negative} if negative else {}), **settings)
    assert vae.encoded == [(1, 96, 64, 3)]  # fitted to the generation size before encoding
    plain = sample(parts[model], parts["positive"], **extra, **settings)
    assert steered.shape == plain.shape and steered.ne(plain).any()

    # The same generation through the engine: the control image resized and cropped, encoded, scaled.
    transformer = parts[model].transformer
    pixels = ENGINE.pipeline.images.prepare_image(parts["image"].movedim(-1, 1), 96, 64)
    latent = vae.encode(((pixels + 1) / 2).movedim(1, -1)) * SCALE
    hook = parts["nets"][model].controlnet.hook(transformer, latent, 1.0)
    expected = engine_latents(
        parts[model],
        parts["positive"],
        uncond=extra.get("negative"),
        sampler=settings.get("sampler", "lcm"),
        settings={k: v for k, v in settings.items() if k != "sampler"},
        seed=11,
        batch=1,
        height=12,
        width=8,
        control=ENGINE.sampling.samplers.ControlSchedule(hook),
    )
    torch.testing.assert_close(steered, expected / SCALE, rtol=0, atol=0)


def test_a_control_image_of_another_aspect_ratio_is_cropped_with_a_warning(parts, caplog) -> None:
    control = apply(parts)[0][0][1][CONTROL_KEY]  # its image is 40x72 px (width x height)
    with caplog.at_level(logging.WARNING, logger=ENGINE.__name__):
        control.latent(96, 64, SCALE)
        [record] = caplog.records
        assert "control image is 40x72 px, the picture 64x96 px" in record.getMessage()
        caplog.clear()
        control.latent(144, 80, SCALE)  # the same aspect ratio: scaled, and nothing said
        assert not caplog.records


def test_strength_and_step_range_act(parts) -> None:
    full = sample(parts["lcm"], apply(parts, net="lcm")[0])
    weaker = sample(parts["lcm"], apply(parts, net="lcm", strength=0.5)[0])
    late = sample(parts["lcm"], apply(parts, net="lcm", start_percent=0.5)[0])
    plain = sample(parts["lcm"], parts["positive"])
    assert weaker.ne(full).any() and late.ne(full).any() and late.ne(plain).any()
    off = sample(parts["lcm"], apply(parts, net="lcm", start_percent=0.9, end_percent=1.0)[0])  # no step in range
    torch.testing.assert_close(off, plain, rtol=0, atol=0)


def test_a_different_control_on_the_negative_is_refused(parts) -> None:
    positive, _ = apply(parts)
    _, other = apply(parts, negative=parts["negative"])
    with pytest.raises(ENGINE.errors.InputError, match="different ControlNet"):
        sample(parts["base"], positive, negative=other, sampler="dpm_solver++", steps=2, guidance=4.5)


def test_a_controlnet_in_another_precision_than_the_model_is_refused(parts, in_models) -> None:
    bf16 = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=CONTROLNET_FILE, weight_dtype="bf16")[0]
    with pytest.raises(ENGINE.errors.InputError, match="same dtype"):
        sample(bf16, apply(parts)[0])
