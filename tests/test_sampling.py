"""Sampling parity with diffusers' PixArtAlphaPipeline on identical random weights and noise.

Both sides get the same caption embeddings and the same CPU generator (fp32 throughout); the
tolerance is explained at ``tests.helpers.assert_latents_match``. The img2img case starts from O(1)
latents and is held to 1e-4 absolute.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PixArtAlphaPipeline

from pixart_delta_core.errors import InputError
from pixart_delta_core.sampling.choices import LcmTimesteps, Sampler
from pixart_delta_core.sampling.samplers import (
    NOISE_SCHEDULE,
    ControlSchedule,
    SamplingSettings,
    initial_noise,
    make_scheduler,
    null_caption,
    reference_lcm_timesteps,
    sample,
)
from pixart_delta_core.text.embedding import TextEmbedding
from tests.helpers import TINY, TINY_MS, TOLERANCE, assert_latents_match, diffusers_twin, random_transformer

SEED = 1234
# diffusers' pipeline feeds micro-conditions only to models trained at 1024 px (sample size 128)
TINY_1024 = replace(TINY_MS, sample_size=128)


def caption(
    batch: int, lengths: list[int], seed: int, tokens: int = 10, channels: int = TINY_MS.caption_channels
) -> TextEmbedding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, tokens, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return TextEmbedding(torch.randn(batch, tokens, channels, generator=g) * mask[..., None], mask)


@pytest.fixture(scope="module")
def models():
    model = random_transformer(TINY_1024, seed=7)
    return model, diffusers_twin(model)


def run_both(
    models,
    settings: SamplingSettings,
    batch: int = 2,
    size: tuple[int, int] = (16, 24),
    init_latents: torch.Tensor | None = None,
):
    model, twin = models
    channels = model.config.caption_channels
    cond = caption(batch, [3, 8][:batch], seed=1, channels=channels)
    uncond = caption(batch, [1, 1][:batch], seed=2, channels=channels) if settings.guided else None
    noise, generator = initial_noise(batch, *size, seed=SEED)
    ours = sample(model, cond, settings, noise, uncond=uncond, generator=generator, init_latents=init_latents)

    scheduler, timesteps = make_scheduler(settings)
    start = None
    if init_latents is not None:  # diffusers' PixArt pipeline has no img2img: hand it the noised start
        start = scheduler.add_noise(init_latents, noise, timesteps[:1])
        generator = torch.Generator().manual_seed(SEED)
        torch.randn(noise.shape, generator=generator)  # the noise drawn above
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=twin, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    custom = {"timesteps": timesteps.tolist()} if settings.sampler is Sampler.LCM else {}
    theirs = pipe(
        negative_prompt=None,
        prompt_embeds=cond.embeddings,
        prompt_attention_mask=cond.mask,
        negative_prompt_embeds=None if uncond is None else uncond.embeddings,
        negative_prompt_attention_mask=None if uncond is None else uncond.mask,
        num_inference_steps=None if custom else settings.steps,
        guidance_scale=settings.guidance,
        height=size[0] * 8,
        width=size[1] * 8,
        generator=generator if start is not None else torch.Generator().manual_seed(SEED),
        latents=start,
        output_type="latent",
        use_resolution_binning=False,
        **custom,
    ).images
    return ours, theirs


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(Sampler.LCM, steps=4, lcm_timesteps=LcmTimesteps.REFERENCE),
        SamplingSettings(Sampler.LCM, steps=4, lcm_timesteps=LcmTimesteps.DIFFUSERS),
        SamplingSettings(Sampler.LCM, steps=2, guidance=3.0),
        SamplingSettings(Sampler.DPM_SOLVER, steps=6, guidance=4.5),
        SamplingSettings(Sampler.EULER, steps=5, guidance=4.5),
        SamplingSettings(Sampler.EULER, steps=1, guidance=4.5),
        SamplingSettings(Sampler.DDIM, steps=2, guidance=4.5),
    ],
    ids=["lcm4-reference", "lcm4-diffusers", "lcm2-guided", "dpm++-cfg", "euler-cfg", "euler1-cfg", "ddim2-cfg"],
)
def test_final_latents_match_diffusers(models, settings: SamplingSettings) -> None:
    ours, theirs = run_both(models, settings)
    assert_latents_match(ours, theirs)


def test_lcm_img2img_from_unit_scale_latents_matches_within_1e_4(models) -> None:
    init = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(9))
    ours, theirs = run_both(models, SamplingSettings(Sampler.LCM, steps=4, strength=0.5), batch=1, init_latents=init)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_a_model_without_micro_conditions_matches_diffusers() -> None:
    model = random_transformer(TINY, seed=8)
    ours, theirs = run_both((model, diffusers_twin(model)), SamplingSettings(Sampler.LCM, steps=4), batch=1)
    assert_latents_match(ours, theirs)


def test_lcm_timestep_conventions() -> None:
    assert reference_lcm_timesteps(4) == [999, 759, 519, 279]
    assert reference_lcm_timesteps(2) == [999, 499]
    _, diffusers = make_scheduler(SamplingSettings(Sampler.LCM, steps=4, lcm_timesteps=LcmTimesteps.DIFFUSERS))
    assert diffusers.tolist() == [999, 759, 499, 259]


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("sampler", list(Sampler), ids=[s.value for s in Sampler])
@pytest.mark.parametrize("lcm", list(LcmTimesteps), ids=[c.value for c in LcmTimesteps])
def test_a_run_from_noise_starts_at_the_top_of_the_schedule(sampler: Sampler, steps: int, lcm) -> None:
    """Few-step runs from pure noise: the first timestep is 999 and the start noise keeps its full scale."""
    scheduler, timesteps = make_scheduler(SamplingSettings(sampler, steps=steps, lcm_timesteps=lcm))
    assert len(timesteps) == steps * scheduler.order
    assert int(timesteps[0]) == 999
    top = scheduler.alphas_cumprod[999]
    sigma_top = ((1 - top) / top) ** 0.5  # the noise-to-signal ratio at the top, about 157
    expected = (sigma_top**2 + 1) ** 0.5 if hasattr(scheduler, "sigmas") and sampler.value.startswith("euler") else 1
    assert float(scheduler.init_noise_sigma) == pytest.approx(float(expected), rel=1e-4)


def test_euler_and_ddim_use_trailing_spacing_as_diffusers_does_with_it() -> None:
    """Our departure from diffusers' default spacing is exactly diffusers' own "trailing" option."""
    for sampler, cls in ((Sampler.EULER, EulerDiscreteScheduler), (Sampler.DDIM, DDIMScheduler)):
        _, ours = make_scheduler(SamplingSettings(sampler, steps=3))
        theirs = cls(**NOISE_SCHEDULE, timestep_spacing="trailing")
        theirs.set_timesteps(3)
        assert ours.tolist() == theirs.timesteps.tolist() == [999, 666, 332]


def test_img2img_runs_the_last_steps_of_the_schedule() -> None:
    _, full = make_scheduler(SamplingSettings(Sampler.DPM_SOLVER, steps=14))
    _, half = make_scheduler(SamplingSettings(Sampler.DPM_SOLVER, steps=14, strength=0.5))
    assert half.tolist() == full[7:].tolist()
    _, lcm = make_scheduler(SamplingSettings(Sampler.LCM, steps=4, strength=0.5))
    assert lcm.tolist() == [519, 279]


def test_img2img_starts_from_the_noised_init_latents(models) -> None:
    """With strength s, the first model input is init noised to the first visited timestep."""
    model, _ = models
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    noise, generator = initial_noise(1, 16, 16, seed=SEED)
    settings = SamplingSettings(Sampler.LCM, steps=4, strength=0.5)
    seen = []
    original = model.forward
    model.forward = lambda x, *args, **kwargs: seen.append(x.clone()) or original(x, *args, **kwargs)
    try:
        sample(model, caption(1, [4], seed=1), settings, noise, init_latents=init, generator=generator)
    finally:
        del model.forward
    scheduler, timesteps = make_scheduler(settings)
    assert len(seen) == 2
    assert torch.allclose(seen[0], scheduler.add_noise(init, noise, timesteps[:1]), atol=1e-6)


def test_same_seed_same_latents_other_seed_other_latents(models) -> None:
    model, _ = models
    settings = SamplingSettings(Sampler.LCM, steps=3)

    def run(seed: int) -> torch.Tensor:
        noise, generator = initial_noise(1, 16, 16, seed=seed)
        return sample(model, caption(1, [5], seed=1), settings, noise, generator=generator)

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))


def test_one_prompt_fills_a_batch_and_step_callback_counts(models) -> None:
    model, _ = models
    noise, generator = initial_noise(3, 16, 16, seed=SEED)
    steps = []
    out = sample(
        model,
        caption(1, [5], seed=1),
        SamplingSettings(Sampler.LCM, steps=4),
        noise,
        generator=generator,
        on_step=lambda i, n, x: steps.append((i, n)),
    )
    assert out.shape == (3, 4, 16, 16)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_null_caption_follows_the_reference(models) -> None:
    model, _ = models
    cond = caption(2, [3, 6], seed=1)
    null = null_caption(model, cond)
    assert torch.equal(null.mask, cond.mask)
    assert torch.equal(null.embeddings[1], model.y_embedder.y_embedding[: cond.length])


def test_control_schedule_acts_on_its_fraction_of_steps(models) -> None:
    model, _ = models
    calls = []

    def hook(tokens, ctx):
        calls.append(tokens.shape[0])
        return ()

    noise, generator = initial_noise(1, 16, 16, seed=SEED)
    settings = SamplingSettings(Sampler.DPM_SOLVER, steps=8, guidance=2.0)
    cond = caption(1, [4], seed=1)
    sample(model, cond, settings, noise, uncond=cond, generator=generator, control=ControlSchedule(hook, 0.25, 0.75))
    assert calls == [2, 2, 2, 2]  # steps 2..5 of 8, cond and uncond in one batch


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": Sampler.LCM, "steps": 0}, "1 to 50 steps"),
        ({"sampler": Sampler.LCM, "steps": 51}, "1 to 50 steps"),
        ({"sampler": Sampler.DPM_SOLVER, "steps": 14, "strength": 0.0}, r"strength \(denoise\) must be in \(0, 1\]"),
        ({"sampler": Sampler.DPM_SOLVER, "steps": 14, "strength": 1.5}, r"must be in \(0, 1\]"),
        ({"sampler": Sampler.LCM, "steps": 2, "strength": 0.4}, "runs no step"),
        ({"sampler": Sampler.EULER, "steps": 10, "guidance": -1.0}, "guidance must be"),
    ],
)
def test_bad_settings_are_refused(kwargs, message: str) -> None:
    with pytest.raises(InputError, match=message):
        SamplingSettings(**kwargs)


def test_guidance_without_an_unconditional_caption_is_refused(models) -> None:
    model, _ = models
    noise, _ = initial_noise(1, 16, 16, seed=0)
    with pytest.raises(InputError, match="needs an unconditional caption"):
        sample(model, caption(1, [3], seed=1), SamplingSettings(Sampler.DPM_SOLVER, steps=3, guidance=4.5), noise)


def test_control_window_must_be_ordered() -> None:
    with pytest.raises(InputError, match="0 <= start < end <= 1"):
        ControlSchedule(lambda tokens, ctx: (), 0.8, 0.2)
