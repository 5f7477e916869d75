"""Generation arguments (issue 10, kind 8): seeds, steps, prompts, batch sizes, images, latents and devices get
an ``InputError`` naming the argument and the value found, before any model loads."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from pixart_delta_core import devices
from pixart_delta_core.errors import InputError
from pixart_delta_core.pipeline.arguments import (
    MAX_SEED,
    check_image,
    check_images,
    check_seed,
    open_image,
    opened_image,
)
from pixart_delta_core.pipeline.generation import Control, PixArtPipeline
from tests.comfy_helpers import ENGINE, PACK, call_node
from tests.helpers import TINY, png_header

NAN = float("nan")
# What an init or control image too large to decode is told:
TOO_LARGE = "expected at most 134.2 megapixels: shrink it first"


@pytest.fixture
def no_models(tmp_path: Path) -> PixArtPipeline:
    """A pipeline whose model files do not exist: any check that passes reaches them and fails differently."""
    missing = tmp_path / "missing"
    return PixArtPipeline(missing / "t", missing / "t5", missing / "vae", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "named", "found"),
    [
        ({"seed": -1}, "seed", "-1"),
        ({"seed": 2**64}, "seed", str(2**64)),
        ({"seed": 1.5}, "seed", "float 1.5"),
        ({"seed": True}, "seed", "bool True"),
        ({"seed": "7"}, "seed", "str '7'"),
        ({"steps": True}, "steps", "bool True"),
        ({"steps": 4.0}, "steps", "float 4.0"),
        ({"steps": "4"}, "steps", "str '4'"),
        ({"images_per_prompt": 0}, "images per prompt", "0"),
        ({"images_per_prompt": 2.0}, "images per prompt", "float 2.0"),
        ({"control": Control(torch.full((1, 3, 8, 8), NAN))}, "control image", "192 NaN or infinite"),
        ({"control": Control(torch.empty(1, 3, 0, 8))}, "control image", "[1, 3, 0, 8]"),
        ({"init_image": torch.tensor([[[float("inf")]]]), "strength": 0.5}, "init image", "1 NaN or infinite"),
        ({"init_image": 7, "strength": 0.5}, "init image", "found int"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_loads(
    no_models: PixArtPipeline, kwargs: dict, named: str, found: str
) -> None:
    with pytest.raises(InputError) as caught:
        no_models("a fox", **kwargs)
    assert named in str(caught.value) and found in str(caught.value), caught.value


def test_the_seed_range_is_the_generators() -> None:
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED)  # the whole range is usable as it is


def test_a_prompt_with_a_lone_surrogate_is_refused(no_models: PixArtPipeline) -> None:
    with pytest.raises(InputError, match=r"prompt 2 holds a lone surrogate '\\ud800' at character 2"):
        no_models(["a fox", "a \ud800 cat"])
    with pytest.raises(InputError, match="prompt 1 must be text, found bytes"):
        no_models([b"a fox"])
    with pytest.raises(InputError, match=r"negative prompt 1 holds a lone surrogate '\\udcff' at character 0"):
        no_models("a fox", negative_prompt="\udcff", guidance=3.0)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the test's own Image.open
def test_huge_images_are_refused_from_their_header(no_models: PixArtPipeline, tmp_path: Path) -> None:
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)  # 400 megapixels: Pillow's own bomb error, in our words
    said = re.escape(f"is 400.0 megapixels (from its header): {TOO_LARGE}")
    with pytest.raises(InputError, match=rf"^init image .*bomb.png {said}$"):
        no_models("a fox", init_image=bomb, strength=0.5)
    large = png_header(tmp_path / "large.png", 12500, 12000)  # 150 megapixels: above our limit, below Pillow's
    said = re.escape(f"is 12500x12000 px (width x height, 150.0 megapixels): {TOO_LARGE}")
    with pytest.raises(InputError, match=rf"control image .*large.png {said}$"):
        no_models("a fox", control=Control(large))
    with pytest.raises(InputError, match=f"^control image {said}$"):
        check_image("control image", Image.open(large))  # a PIL image, still undecoded
    with pytest.raises(InputError, match="not an image that can be read"):
        open_image(png_header(tmp_path / "odd.png", 0, 0))


@pytest.mark.parametrize(
    ("width", "height", "control", "found"),
    [
        (12000, 11200, True, f"12000x11200 px (width x height, 134.4 megapixels): {TOO_LARGE}"),
        (16, 8388609, False, f"16x8388609 px (width x height, 134.2 megapixels): {TOO_LARGE}"),
        (4, 4, True, "4x4 px (width x height): expected at least 32 px a side"),
        (64, 31, True, "64x31 px (width x height): expected at least 32 px a side"),
        (15, 64, False, "15x64 px (width x height): expected at least 16 px a side"),
        (6000, 4000, True, None),  # a camera photo: scaled to the picture's size
        (6000, 4000, False, None),
        (11585, 11585, False, None),  # 134.2 megapixels: the most decoded
        (32, 32, True, None),
        (16, 16, False, None),
    ],
)
def test_init_and_control_images_are_sized_from_their_header(
    tmp_path: Path, width: int, height: int, control: bool, found: str | None
) -> None:
    """One check for both: at most 134 megapixels to decode, and a control image 32 px a side or more (an edge map)."""
    image = png_header(tmp_path / "image.png", width, height)  # no pixel data: decoding it would fail
    given = (None, image) if control else (image, None)
    if found is None:
        assert check_images(*given) == (None if control else (height, width))
        return
    with pytest.raises(InputError) as caught:
        check_images(*given)
    assert str(caught.value) == f"{'control' if control else 'init'} image {image} is {found}"


def test_a_control_tensor_too_small_for_an_edge_map_is_refused(no_models: PixArtPipeline) -> None:
    with pytest.raises(InputError, match=r"^control image is 4x4 px \(width x height\): expected at least 32 px"):
        no_models("a fox", control=Control(torch.rand(3, 4, 4)))


def test_an_image_whose_pixels_are_broken_is_refused_by_name(tmp_path: Path) -> None:
    whole = tmp_path / "whole.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-40])  # the header is whole: only decoding finds the end missing
    assert check_images(cut, None) == (64, 64)
    with pytest.raises(InputError, match=rf"^init image {cut} cannot be decoded \(image file is truncated"):
        opened_image(cut, "init image")


def test_a_batch_far_beyond_memory_is_refused_before_the_text_encoder(tmp_path: Path, monkeypatch) -> None:
    from pixart_delta_core.demo.files import write_demo_models

    files = write_demo_models(tmp_path)
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    monkeypatch.setattr(PixArtPipeline, "load_text_encoder", lambda self: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match="100000 images of 1024x1024 px are 104858 megapixels"):
        pipeline("a fox", images_per_prompt=100000)


# --- devices ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "cuda:-1"])
def test_a_malformed_device_name_is_refused(name: str) -> None:
    with pytest.raises(InputError, match="is not a device name"):
        devices.check_device(name)


def test_devices_this_torch_cannot_use_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"'cuda': this torch .* sees no CUDA GPU"):
        devices.check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.check_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InputError, match=r"'cuda:7': there is no CUDA GPU 7; found 1 \(0..0\)"):
        devices.check_device("cuda:7")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="'mps': Apple's MPS backend is not available"):
        devices.check_device("mps")
    with pytest.raises(InputError, match="'meta': not a device"):
        devices.check_device("meta")
    assert devices.check_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="'cuda:7'"):
        PixArtPipeline("t", "t5", "vae", device="cuda:7")


def test_a_bad_device_option_is_refused_naming_the_option_in_generate_and_the_demo(tmp_path: Path, capsys) -> None:
    """One helper (devices.device_option) refuses ``--device`` for both commands, before any file is written."""
    from pixart_delta_core.cli import main

    assert devices.device_option("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match=r"^--device: device 'tpu' is not a device name"):
        devices.device_option("tpu")
    for command in (["demo"], ["generate", "--transformer", ".", "--t5", ".", "--vae", ".", "--prompt", "x"]):
        out = tmp_path / command[0] / "out.png"
        assert main([*command, "--device", "tpu", "--out", str(out)]) == 1
        assert "--device: device 'tpu' is not a device name" in capsys.readouterr().err
        assert not out.parent.exists()


# --- the sampler node -------------------------------------------------------------------------------


@pytest.fixture
def stand_in() -> dict:
    """A model socket and a caption the sampler reads before loading anything (no weights behind them)."""
    model = SimpleNamespace(transformer=SimpleNamespace(config=TINY, dtype=torch.float32), embedded=None)
    return {"model": model, "positive": [[torch.zeros(1, TINY.caption_length, TINY.caption_channels), {}]]}


@pytest.mark.parametrize(
    ("inputs", "named", "found"),
    [
        ({"latent_image": {"samples": torch.full((1, 4, 8, 8), NAN)}}, "latent_image samples", "256 NaN"),
        ({"latent_image": {"samples": torch.empty(0, 4, 8, 8)}}, "latent_image samples", "[0, 4, 8, 8]"),
        ({"width": 4096, "height": 4096, "batch_size": 64}, "64 images of 4096x4096 px", "1074 megapixels"),
    ],
)
def test_the_sampler_node_checks_its_arguments_first(stand_in: dict, inputs: dict, named: str, found: str) -> None:
    with pytest.raises(ENGINE.errors.InputError) as caught:
        call_node(PACK.NODE_CLASS_MAPPINGS["PixArtDeltaSampler"], **stand_in, **inputs)
    assert named in str(caught.value) and found in str(caught.value), caught.value


@pytest.mark.parametrize(("seed", "steps", "found"), [(-5, 4, "seed must be in"), (0, 2.5, "steps must be an integer")])
def test_the_sampler_node_checks_seed_and_steps(stand_in: dict, seed: object, steps: object, found: str) -> None:
    node = PACK.NODE_CLASS_MAPPINGS["PixArtDeltaSampler"]()  # called directly: ComfyUI checks its widgets' ranges
    with pytest.raises(ENGINE.errors.InputError, match=f"{found}.*{steps if seed == 0 else seed}"):
        node.sample(**stand_in, seed=seed, steps=steps, sampler="lcm", guidance=1.0, denoise=1.0)


def test_the_sampler_node_refuses_an_empty_control_image(stand_in: dict) -> None:
    conditioning = PACK.nodes.conditioning
    control = conditioning.ControlImage(None, torch.empty(1, 0, 0, 3), None, 1.0, 0.0, 1.0)  # type: ignore[arg-type]
    positive = [[stand_in["positive"][0][0], {conditioning.CONTROL_KEY: control}]]
    with pytest.raises(ENGINE.errors.InputError, match=r"control image must be a non-empty .* \[1, 0, 0, 3\]"):
        call_node(PACK.NODE_CLASS_MAPPINGS["PixArtDeltaSampler"], model=stand_in["model"], positive=positive)
