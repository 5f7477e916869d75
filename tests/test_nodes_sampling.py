"""Text encode, resolution and sampler nodes called as ComfyUI calls them: chaining, raw latents,
img2img, core-style conditioning, statelessness and cancel (no ComfyUI installed)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from tests.comfy_helpers import BASE, ENGINE, PACK, StandInVae, call_node, engine_latents

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = PACK.NODE_CLASS_MAPPINGS
host = PACK.nodes.host
SCALE = 0.18215  # the SD VAE's: PixArt-α/δ latents are raw VAE latents times this
SIZE = {"width": 128, "height": 96}


@pytest.fixture(scope="module")
def loaded(node_models, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(host.MODELS_ENV, str(node_models))
        lcm = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="PixArt-LCM-XL-2-1024-MS.safetensors")[0]
        alpha = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="PixArt-XL-2-1024-MS.pth")[0]
        t5 = call_node(NODES["PixArtDeltaT5Loader"], t5_name="PixArt-LCM-XL-2-1024-MS", dtype="fp32")[0]
    return {"lcm": lcm, "alpha": alpha, "t5": t5}


def encode(loaded, text: str, **widgets) -> list:
    return call_node(NODES["PixArtDeltaT5TextEncode"], text=text, t5=loaded["t5"], **widgets)[0]


def run(model, positive, **inputs) -> dict:
    return call_node(NODES["PixArtDeltaSampler"], model=model, positive=positive, **inputs)[0]


# --- text ------------------------------------------------------------------------------------------


def test_encode_gives_comfyui_conditioning_with_the_mask_in_its_dict(loaded) -> None:
    conditioning = encode(loaded, "A Photo of a Cat")
    assert isinstance(conditioning, list) and len(conditioning) == 1
    embeddings, extra = conditioning[0]
    assert embeddings.shape == (1, 120, BASE.caption_channels) and embeddings.dtype == torch.float32
    mask = extra["attention_mask"]
    assert mask.shape == (1, 120) and mask.dtype == torch.int64
    assert mask.sum() == len(loaded["t5"].encoder.tokenizer("a photo of a cat").input_ids)  # lower-cased
    assert extra["pooled_output"] is None
    assert torch.equal(embeddings[0, mask[0] == 0], torch.zeros_like(embeddings[0, mask[0] == 0]))


def test_encode_is_deterministic_and_takes_the_caption_length(loaded) -> None:
    first, again = encode(loaded, "a cat"), encode(loaded, "a cat")
    assert torch.equal(first[0][0], again[0][0]) and torch.equal(
        first[0][1]["attention_mask"], again[0][1]["attention_mask"]
    )
    assert encode(loaded, "a cat", max_tokens=300)[0][0].shape[1] == 300
    cleaned = encode(loaded, "a cat http://example.com", clean_caption=True)[0][1]["attention_mask"]
    assert cleaned.sum() == first[0][1]["attention_mask"].sum()


# --- resolution ------------------------------------------------------------------------------------


def test_resolution_snaps_to_the_nearest_bin_and_makes_an_empty_latent() -> None:
    width, height, latent = call_node(NODES["PixArtDeltaResolution"], width=1920, height=1080, batch_size=2)
    assert (width, height) == (1344, 768)  # 16:9 -> the 0.57 bin
    assert latent["samples"].shape == (2, 4, 96, 168) and not latent["samples"].any()
    assert call_node(NODES["PixArtDeltaResolution"], width=300, height=300, resolution="512")[:2] == (512, 512)


# --- sampler ---------------------------------------------------------------------------------------


def test_chain_loader_encode_sample_decode(loaded) -> None:
    positive = encode(loaded, "a cat")
    latent = run(loaded["lcm"], positive, seed=7, **SIZE)
    raw = latent["samples"]
    assert set(latent) == {"samples"} and raw.shape == (1, 4, 12, 16) and raw.dtype == torch.float32
    assert raw.device == torch.device("cpu") and torch.isfinite(raw).all()
    expected = engine_latents(loaded["lcm"], positive, seed=7, batch=1, height=12, width=16)
    torch.testing.assert_close(raw, expected / SCALE, rtol=0, atol=0)  # raw = scaled / scaling factor
    images = StandInVae().decode(raw)  # what core VAEDecode does with it
    assert images.shape == (1, 96, 128, 3)


def test_same_inputs_same_output_and_inputs_never_change(loaded) -> None:
    positive, negative = encode(loaded, "a cat"), encode(loaded, "blurry")
    latent = {"samples": torch.randn(2, 4, 12, 16), "batch_index": [3, 4]}
    inputs = {"positive": positive, "negative": negative, "latent_image": latent}
    before = copy.deepcopy(inputs)
    widgets = {"seed": 3, "steps": 4, "sampler": "dpm_solver++", "guidance": 4.5, "denoise": 0.5}
    first = run(loaded["alpha"], **inputs, **widgets)
    second = run(loaded["alpha"], **inputs, **widgets)
    assert torch.equal(first["samples"], second["samples"]) and first["batch_index"] == [3, 4]
    for name, value in inputs.items():
        if name == "latent_image":
            assert torch.equal(value["samples"], before[name]["samples"]) and value.keys() == before[name].keys()
        else:
            assert torch.equal(value[0][0], before[name][0][0]) and value[0][1].keys() == before[name][0][1].keys()
    assert run(loaded["alpha"], **inputs, **{**widgets, "seed": 4})["samples"].ne(first["samples"]).any()


def test_core_clip_text_encode_conditioning_is_accepted(loaded) -> None:
    ours = encode(loaded, "a cat")
    real = int(ours[0][1]["attention_mask"].sum())
    core = [[ours[0][0][:, :real].clone(), {"pooled_output": None}]]  # what CLIPTextEncode gives: no mask, no padding
    latent = run(loaded["lcm"], core, seed=1, **SIZE)
    torch.testing.assert_close(latent["samples"], run(loaded["lcm"], ours, seed=1, **SIZE)["samples"])


def test_conditioning_size_keys_feed_the_micro_conditions(loaded) -> None:
    plain = encode(loaded, "a cat")
    sized = [[plain[0][0], {**plain[0][1], "width": 2048, "height": 512}]]
    assert (
        run(loaded["lcm"], sized, seed=1, **SIZE)["samples"]
        .ne(run(loaded["lcm"], plain, seed=1, **SIZE)["samples"])
        .any()
    )


def test_guidance_without_negative_uses_the_null_caption_or_asks_for_one(loaded) -> None:
    positive = encode(loaded, "a cat")
    widgets = {"seed": 2, "steps": 3, "sampler": "dpm_solver++", "guidance": 4.5, **SIZE}
    latent = run(loaded["alpha"], positive, **widgets)
    settings = {"steps": 3, "guidance": 4.5}
    expected = engine_latents(
        loaded["alpha"], positive, sampler="dpm_solver++", settings=settings, seed=2, batch=1, height=12, width=16
    )
    torch.testing.assert_close(latent["samples"], expected / SCALE, rtol=0, atol=0)
    with pytest.raises(ENGINE.errors.InputError, match="connect a negative conditioning"):
        run(loaded["lcm"], positive, **widgets)


def test_the_lcm_sampler_with_guidance_warns_and_runs(loaded, caplog) -> None:
    positive, negative = encode(loaded, "a cat"), encode(loaded, "")
    widgets = {"seed": 2, "steps": 1, "sampler": "lcm", "guidance": 4.5, **SIZE}
    with caplog.at_level(logging.WARNING):
        run(loaded["lcm"], positive, negative=negative, **widgets)
    said = [r.getMessage() for r in caplog.records if "LCM sampler with guidance 4.5" in r.getMessage()]
    assert len(said) == 1 and "it runs a model unguided (guidance 0 or 1)" in said[0]


def test_img2img_from_a_raw_latent(loaded) -> None:
    vae = StandInVae()
    raw = vae.encode(torch.rand(1, 96, 128, 3))  # core VAEEncode: raw latents
    positive = encode(loaded, "a cat")
    latent = run(loaded["lcm"], positive, latent_image={"samples": raw}, seed=5, denoise=0.5)
    settings = {"strength": 0.5}
    expected = engine_latents(
        loaded["lcm"], positive, settings=settings, seed=5, batch=1, height=12, width=16, init_latents=raw * SCALE
    )
    torch.testing.assert_close(latent["samples"], expected / SCALE, rtol=0, atol=0)


def test_an_all_zero_latent_is_empty_and_sets_size_and_batch(loaded) -> None:
    positive = encode(loaded, "a cat")
    _, _, empty = call_node(NODES["PixArtDeltaResolution"], width=128, height=128, resolution="256", batch_size=2)
    latent = run(loaded["lcm"], positive, latent_image=empty, seed=9)
    assert latent["samples"].shape == (2, 4, 32, 32)
    expected = engine_latents(loaded["lcm"], positive, seed=9, batch=2, height=32, width=32)
    torch.testing.assert_close(latent["samples"], expected / SCALE, rtol=0, atol=0)
    with pytest.raises(ENGINE.errors.InputError, match="connect a latent_image from VAEEncode"):
        run(loaded["lcm"], positive, latent_image=empty, denoise=0.5)


def test_latents_the_sampler_cannot_use_are_refused(loaded) -> None:
    positive = encode(loaded, "a cat")
    with pytest.raises(ENGINE.errors.InputError, match="does not inpaint"):
        run(
            loaded["lcm"],
            positive,
            latent_image={"samples": torch.randn(1, 4, 8, 8), "noise_mask": torch.ones(1, 1, 64, 64)},
        )
    with pytest.raises(ENGINE.errors.InputError, match=r"samples \[batch, 4, height, width\]"):
        run(loaded["lcm"], positive, latent_image={"samples": torch.randn(1, 16, 8, 8)})
    with pytest.raises(ENGINE.errors.InputError, match="multiple of 16"):
        run(loaded["lcm"], positive, width=120, height=96)
    with pytest.raises(ENGINE.errors.InputError, match="1024 wide"):
        run(loaded["lcm"], [[torch.randn(1, 5, 1024), {}]], **SIZE)
    with pytest.raises(ENGINE.errors.InputError, match="2 entries"):
        run(loaded["lcm"], positive + positive, **SIZE)


def test_cancel_stops_within_a_step(loaded) -> None:
    transformer = loaded["alpha"].transformer
    calls = []

    def count(module, args) -> None:
        calls.append(1)
        if len(calls) == 2:
            host.cancel()  # the user presses Cancel during step 2

    handle = transformer.register_forward_pre_hook(count)
    try:
        with pytest.raises(host.Interrupted):
            run(loaded["alpha"], encode(loaded, "a cat"), steps=10, sampler="euler", **SIZE)
    finally:
        handle.remove()
    assert len(calls) == 2  # step 2 finished, step 3 never started
    host.cancel()
    with pytest.raises(host.Interrupted):  # a cancel before the run starts stops it before the first step
        run(loaded["alpha"], encode(loaded, "a cat"), **SIZE)
    run(loaded["alpha"], encode(loaded, "a cat"), steps=1, **SIZE)  # the request was used up


def test_progress_reports_every_step(loaded, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(host.Progress, "update", lambda self, done, total=None: seen.append((done, total)))
    run(loaded["lcm"], encode(loaded, "a cat"), steps=4, **SIZE)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_the_whole_seed_range_works(loaded) -> None:
    positive = encode(loaded, "a cat")
    top = run(loaded["lcm"], positive, seed=2**64 - 1, steps=1, **SIZE)["samples"]
    assert torch.isfinite(top).all() and top.ne(run(loaded["lcm"], positive, seed=0, steps=1, **SIZE)["samples"]).any()
