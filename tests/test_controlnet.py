"""The ControlNet-Transformer's data flow (docs/REFERENCE.md §4) against independent implementations.

Tolerance: max abs difference <= 1e-5 in fp32 (outputs O(1)), both against the plain loop over our own
blocks written below and against diffusers' blocks wired in the adapter layout (seen: 0 to 2e-6).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer, load_controlnet
from pixart_delta_core.models.controlnet_config import ControlNetConfig, to_adapter
from pixart_delta_core.models.layers import BlockContext, sincos_pos_embed
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.sampling.choices import Sampler
from pixart_delta_core.sampling.samplers import ControlSchedule, SamplingSettings, sample
from pixart_delta_core.text.encoder import TextEmbedding
from tests.helpers import REAL_WIDTH, TINY, TINY_MS, diffusers_twin, random_transformer

TOLERANCE = 1e-5
SMALL = replace(TINY, depth=4)  # 2 copies feed blocks 1..2; block 3 runs without control
SMALL_MS = TINY_MS  # depth 3: 2 copies feed every block after block 0
# REAL_WIDTH has one copy feeding block 1: the chain of copies is covered by the tiny configs


def random_controlnet(base: PixArtTransformer, seed: int = 7) -> ControlNetTransformer:
    """Two copies (one where the base has depth 2), random projections: every residual non-zero."""
    copies = min(2, base.config.depth - 1)
    return randomize_(ControlNetTransformer(ControlNetConfig.for_base(base.config, copies)), seed)


def inputs(config: TransformerConfig, batch: int, height: int, width: int, seed: int = 1):
    """Latent, timesteps, caption with a padding mask, and one control latent per item."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    t = torch.linspace(900, 100, batch)
    caption = torch.randn(batch, 12, config.caption_channels, generator=g)
    mask = torch.ones(batch, 12, dtype=torch.long)
    mask[0, 5:] = 0
    control = torch.randn(batch, config.in_channels, height, width, generator=g)
    return x, t, caption, mask, control


def reference_forward(
    base: PixArtTransformer, net: ControlNetTransformer, x, t, caption, mask, control: Tensor, strength: float = 1.0
) -> Tensor:
    """docs/REFERENCE.md §4 written out as one loop over the base blocks, without the hook.

    x0 = block 0 (x); c = x_embedder(control) + the image positions; copy 0 reads x0 + before_proj(c),
    copy i reads copy i-1's output; after copy i, x += after_proj(copy i) and base block i+1 runs.
    ``control`` has one item per item of ``x``.
    """
    cfg = base.config
    batch, _, height, width = x.shape
    p = cfg.patch_size
    h, w = height // p, width // p
    pos = sincos_pos_embed(cfg.hidden_size, h, w, cfg.base_size, cfg.interpolation_scale).float()
    tokens = base.x_embedder(x) + pos
    c = base.x_embedder(control) + pos  # the base's frozen patch embedder, the same positions
    t_emb = base.embed_time(t, batch, (height * 8, width * 8))
    projected, projected_mask = base.embed_caption(caption, mask, batch)
    ctx = BlockContext(projected, projected_mask, base.t_block(t_emb), (h, w))
    tokens = base.blocks[0](tokens, ctx)
    copies = list(net.controlnet)
    for index in range(1, cfg.depth):
        if index <= len(copies):
            block = copies[index - 1]
            c = block.copied_block(tokens + block.before_proj(c) if index == 1 else c, ctx)
            tokens = tokens + strength * block.after_proj(c)
        tokens = base.blocks[index](tokens, ctx)
    out = base.final_layer(tokens, t_emb).reshape(batch, h, w, p, p, cfg.out_channels)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(batch, cfg.out_channels, height, width)


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --- a fresh ControlNet and strength 0 change nothing ------------------------------------------


def test_a_fresh_controlnet_copies_the_base_blocks_with_zero_projections() -> None:
    base = random_transformer(SMALL, seed=2)
    net = ControlNetTransformer.from_base(base, copies=2)
    keys = set(net.state_dict())
    assert {"controlnet.0.before_proj.weight", "controlnet.1.after_proj.bias"} <= keys
    assert "controlnet.1.before_proj.weight" not in keys  # before_proj on copy 0 only
    for i in range(2):
        for key, value in base.blocks[i].state_dict().items():
            assert torch.equal(net.controlnet[i].copied_block.state_dict()[key], value), key
        assert not net.controlnet[i].after_proj.weight.any() and not net.controlnet[i].after_proj.bias.any()
    assert not net.controlnet[0].before_proj.weight.any()


@pytest.mark.parametrize("case", ["fresh", "zero-after-proj", "strength-0"])
def test_no_control_effect_gives_the_base_output_exactly(case: str) -> None:
    base = random_transformer(SMALL, seed=2)
    x, t, caption, mask, control = inputs(SMALL, 2, 16, 24)
    strength = 0.0 if case == "strength-0" else 1.0
    net = ControlNetTransformer.from_base(base, copies=2) if case == "fresh" else random_controlnet(base)
    if case == "zero-after-proj":
        for block in net.controlnet:
            nn.init.zeros_(block.after_proj.weight)
            nn.init.zeros_(block.after_proj.bias)
    with torch.no_grad():
        plain = base(x, t, caption, mask)
        controlled = base(x, t, caption, mask, control=net.hook(base, control, strength))
        steered = base(x, t, caption, mask, control=random_controlnet(base).hook(base, control))
    assert torch.equal(controlled, plain)
    assert max_diff(steered, plain) > 1e-3, "a random ControlNet at strength 1 should change the output"


# --- parity with the plain loop ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "batch", "height", "width", "strength"),
    [
        (SMALL, 1, 16, 16, 1.0),
        (SMALL, 3, 16, 24, 1.0),
        (SMALL_MS, 2, 24, 8, 1.0),
        (SMALL_MS, 2, 32, 32, 0.6),
        (REAL_WIDTH, 2, 16, 12, 1.0),
    ],
    ids=["tiny-square", "tiny-wide-batch3", "micro-tall", "micro-strength-0.6", "real-width-1152"],
)
def test_engine_matches_the_plain_loop(config, batch, height, width, strength) -> None:
    base = random_transformer(config, seed=3)
    net = random_controlnet(base)
    x, t, caption, mask, control = inputs(config, batch, height, width)
    with torch.no_grad():
        ours = base(x, t, caption, mask, control=net.hook(base, control, strength))
        expected = reference_forward(base, net, x, t, caption, mask, control, strength)
        plain = base(x, t, caption, mask)
    assert max_diff(ours, expected) <= TOLERANCE
    assert max_diff(ours, plain) > 1e-3


@pytest.mark.parametrize("control_batch", [1, 2])
def test_cfg_batch_gets_the_same_control_in_both_halves(control_batch: int) -> None:
    """A [uncond; cond] batch of 2B with one control latent, or one per image, as a sampler sends it."""
    base = random_transformer(SMALL_MS, seed=4)
    net = random_controlnet(base)
    x, t, caption, mask, control = inputs(SMALL_MS, 2, 16, 24)
    control = control[:control_batch]
    uncond = torch.randn(2, 12, SMALL_MS.caption_channels, generator=torch.Generator().manual_seed(9))
    doubled = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, caption]), torch.cat([mask, mask]))
    per_item = control.expand(2, -1, -1, -1)
    with torch.no_grad():
        ours = base(*doubled, control=net.hook(base, control))
        expected = reference_forward(base, net, *doubled, torch.cat([per_item, per_item]))
        alone = base(x, t, caption, mask, control=net.hook(base, control))
    assert max_diff(ours, expected) <= TOLERANCE
    assert max_diff(ours[2:], alone) <= TOLERANCE  # the conditional half is what a lone conditional pass gives


# --- parity with diffusers' blocks in the adapter layout -------------------------------------


def diffusers_forward(base: PixArtTransformer, adapter: dict[str, Tensor], x, t, caption, mask, control) -> Tensor:
    """diffusers' transformer and BasicTransformerBlock copies holding the adapter-layout weights,
    wired per docs/REFERENCE.md §4 with pre-hooks on the base blocks 1..N."""
    twin = diffusers_twin(base)
    copies = 1 + max(int(k.split(".")[1]) for k in adapter)
    blocks, after = [], []
    for i in range(copies):
        block = copy.deepcopy(twin.transformer_blocks[i])
        prefix = f"controlnet_blocks.{i}.transformer_block."
        block.load_state_dict({k[len(prefix) :]: v for k, v in adapter.items() if k.startswith(prefix)}, strict=True)
        blocks.append(block)
        after.append(_linear(adapter, f"controlnet_blocks.{i}.after_proj"))
    before = _linear(adapter, "controlnet_blocks.0.before_proj")
    state: dict[str, Tensor] = {}

    def pre_hook(index: int):
        def add_residual(module, args, kwargs):
            hidden = args[0]
            if index == 1:
                state["c"] = hidden + before(twin.pos_embed(control))
            state["c"] = blocks[index - 1](state["c"], **kwargs)
            return (hidden + after[index - 1](state["c"]), *args[1:]), kwargs

        return add_residual

    handles = [
        twin.transformer_blocks[i].register_forward_pre_hook(pre_hook(i), with_kwargs=True)
        for i in range(1, copies + 1)
    ]
    try:
        height, width = x.shape[-2:]
        added = None
        if base.config.micro_conditions:
            added = {
                "resolution": torch.tensor([[height * 8.0, width * 8.0]]).repeat(x.shape[0], 1),
                "aspect_ratio": torch.tensor([[height / width]]).repeat(x.shape[0], 1),
            }
        return twin(
            x, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=added
        ).sample
    finally:
        for handle in handles:
            handle.remove()


def _linear(weights: dict[str, Tensor], name: str) -> nn.Linear:
    weight = weights[name + ".weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"weight": weight, "bias": weights[name + ".bias"]})
    return layer


@pytest.mark.parametrize(
    ("config", "batch", "height", "width"),
    [(SMALL, 2, 16, 24), (SMALL_MS, 1, 24, 16), (REAL_WIDTH, 1, 12, 16)],
    ids=["tiny", "micro", "real-width-1152"],
)
def test_adapter_file_matches_diffusers_blocks(tmp_path, config, batch, height, width) -> None:
    base = random_transformer(config, seed=5)
    adapter = to_adapter(random_controlnet(base, seed=8).state_dict())
    path = tmp_path / "adapter.safetensors"
    save_file(adapter, str(path))
    net = load_controlnet(path, base.config)
    x, t, caption, mask, control = inputs(config, batch, height, width)
    with torch.no_grad():
        ours = base(x, t, caption, mask, control=net.hook(base, control))
        theirs = diffusers_forward(base, adapter, x, t, caption, mask, control)
    assert max_diff(ours, theirs) <= TOLERANCE


# --- refusals ---------------------------------------------------------------------------------


def test_a_control_latent_of_another_size_is_refused() -> None:
    base = random_transformer(SMALL)
    net = random_controlnet(base)
    x, t, caption, mask, _ = inputs(SMALL, 1, 16, 24)
    transposed = torch.zeros(1, 4, 24, 16)  # the same number of tokens, other positions
    with pytest.raises(InputError, match="control latent is 24x16 but the latent being denoised is 16x24"):
        base(x, t, caption, mask, control=net.hook(base, transposed))
    with pytest.raises(InputError, match=r"\[batch, 4, height, width\], found \[1, 3, 16, 24\]"):
        net.hook(base, torch.zeros(1, 3, 16, 24))
    with pytest.raises(InputError, match="multiples of the patch size"):
        net.hook(base, torch.zeros(1, 4, 15, 24))


def test_a_control_batch_that_does_not_divide_the_batch_is_refused() -> None:
    base = random_transformer(SMALL)
    net = random_controlnet(base)
    x, t, caption, mask, control = inputs(SMALL, 3, 16, 16)
    with pytest.raises(InputError, match="2 control latents for a batch of 3"):
        base(x, t, caption, mask, control=net.hook(base, control[:2]))


def test_hook_refuses_a_base_it_does_not_fit_and_mixed_dtypes() -> None:
    net = random_controlnet(random_transformer(SMALL))
    shallow = random_transformer(replace(SMALL, depth=2))
    with pytest.raises(InputError, match=r"2 copies .* depth 2"):
        net.hook(shallow, torch.zeros(1, 4, 16, 16))
    base = random_transformer(SMALL).to(torch.bfloat16)
    with pytest.raises(InputError, match="same dtype"):
        net.hook(base, torch.zeros(1, 4, 16, 16))
    with pytest.raises(InputError, match="finite"):
        net.hook(random_transformer(SMALL), torch.zeros(1, 4, 16, 16), strength=float("nan"))


# --- control batches under guidance -------------------------------------------------------------


def guided_run(base: PixArtTransformer, net: ControlNetTransformer, control: Tensor, images: int) -> Tensor:
    """A 2-step DDIM run with CFG over ``images`` images (one prompt each) and the given control latents."""
    x, _, caption, mask, _ = inputs(SMALL_MS, images, 16, 16, seed=5)
    uncond = torch.zeros_like(caption)
    settings = SamplingSettings(Sampler.DDIM, steps=2, guidance=4.5)
    cond, negative = TextEmbedding(caption, mask), TextEmbedding(uncond, torch.ones_like(mask))
    schedule = ControlSchedule(net.hook(base, control))
    return sample(base, cond, settings, x, uncond=negative, control=schedule)


def test_each_image_pairs_its_two_guided_passes_with_its_own_control() -> None:
    """Image i of a guided batch is what a guided run of image i alone with control i gives."""
    base = random_transformer(SMALL_MS, seed=4)
    net = random_controlnet(base)
    controls = inputs(SMALL_MS, 2, 16, 16, seed=6)[-1]
    x, _, caption, mask, _ = inputs(SMALL_MS, 2, 16, 16, seed=5)
    batch = guided_run(base, net, controls, 2)
    settings = SamplingSettings(Sampler.DDIM, steps=2, guidance=4.5)
    for i in range(2):
        cond = TextEmbedding(caption[i : i + 1], mask[i : i + 1])
        negative = TextEmbedding(torch.zeros_like(cond.embeddings), torch.ones_like(cond.mask))
        schedule = ControlSchedule(net.hook(base, controls[i : i + 1]))
        alone = sample(base, cond, settings, x[i : i + 1], uncond=negative, control=schedule)
        scale = alone.abs().max().item()  # a random model's latents reach O(500): the tolerance is relative
        assert max_diff(batch[i : i + 1], alone) <= TOLERANCE * scale
    assert max_diff(batch[:1], guided_run(base, net, controls[1:], 2)[:1]) > 1e-3 * scale  # the control matters


@pytest.mark.parametrize(("controls", "images"), [(2, 1), (2, 4), (3, 2)])
def test_a_control_count_that_is_not_one_or_one_per_image_is_refused_under_guidance(controls, images) -> None:
    base = random_transformer(SMALL_MS, seed=4)
    net = random_controlnet(base)
    control = torch.zeros(controls, SMALL_MS.in_channels, 16, 16)
    with pytest.raises(InputError, match=f"{controls} control images for {images} images"):
        guided_run(base, net, control, images)
