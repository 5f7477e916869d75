"""Image conversions and fitting an image to a size (control images, sizes brought back from a bin)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers.image_processor import PixArtImageProcessor
from PIL import Image

from pixart_delta_core.errors import InputError
from pixart_delta_core.pipeline.images import from_pil, prepare_image, resize_and_crop, to_pil, warn_if_cropped


def random_pil(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    array = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def test_pil_to_tensor_and_back_is_lossless() -> None:
    images = [random_pil(40, 24, seed) for seed in range(2)]
    tensor = from_pil(images)
    assert tensor.shape == (2, 3, 24, 40) and tensor.min() >= -1 and tensor.max() <= 1
    back = to_pil(tensor)
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(images, back, strict=True))


def test_to_pil_clamps_what_the_vae_overshoots() -> None:
    image = to_pil(torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1, 1))[0]
    assert image.getpixel((0, 0)) == (0, 128, 255)


def test_prepare_image_keeps_the_centre() -> None:
    """A wide image with red margins and a blue centre a little wider than square, asked square: only blue is left."""
    array = np.zeros((60, 180, 3), dtype=np.uint8)
    array[:, :, 0] = 255
    array[:, 45:135] = (0, 0, 255)
    prepared = prepare_image(Image.fromarray(array), 32, 32)
    assert prepared.shape == (1, 3, 32, 32)
    expected = torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    torch.testing.assert_close(prepared, expected, rtol=0, atol=1e-6)


def test_prepare_image_reads_pil_and_tensors_alike() -> None:
    pil = random_pil(50, 30, seed=3)
    unit = (from_pil(pil) + 1) / 2  # [1,3,30,50] in [0, 1]
    expected = prepare_image(pil, 48, 64)
    assert expected.shape == (1, 3, 48, 64) and expected.min() >= -1 and expected.max() <= 1
    torch.testing.assert_close(prepare_image(unit[0], 48, 64), expected)
    torch.testing.assert_close(prepare_image(unit.repeat(2, 1, 1, 1), 48, 64), expected.repeat(2, 1, 1, 1))
    uint8 = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    torch.testing.assert_close(prepare_image(uint8, 48, 64), expected)
    opaque = torch.cat([unit, torch.ones(1, 1, 30, 50)], dim=1)
    torch.testing.assert_close(prepare_image(opaque, 48, 64), expected)
    see_through = pil.convert("RGBA")
    see_through.putalpha(Image.linear_gradient("L").resize((50, 30)))
    rgba = torch.from_numpy(np.array(see_through)).permute(2, 0, 1)  # alpha is transparency: onto black, alike
    torch.testing.assert_close(prepare_image(rgba, 48, 64), prepare_image(see_through, 48, 64), rtol=0, atol=2 / 255)


def test_a_grey_image_becomes_three_equal_channels() -> None:
    grey = prepare_image(random_pil(20, 20, mode="L"), 16, 16)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    from_tensor = prepare_image(torch.rand(1, 20, 20), 16, 16)
    assert from_tensor.shape == (1, 3, 16, 16) and torch.equal(from_tensor[:, 0], from_tensor[:, 2])


@pytest.mark.parametrize(
    ("image", "height", "width", "warned"),
    [
        (random_pil(100, 50), 64, 64, "control image is 100x50 px, the picture 64x64 px"),  # 2:1 asked 1:1
        (torch.rand(3, 60, 40), 64, 96, "control image is 40x60 px, the picture 96x64 px"),  # portrait asked landscape
        (torch.rand(2, 3, 64, 66), 64, 64, "control image is 66x64 px, the picture 64x64 px"),  # 3% wider
        (random_pil(300, 200), 128, 192, None),  # the same ratio at another size: only scaled
        (torch.rand(1, 3, 100, 150), 128, 192, None),
        (torch.rand(3, 129, 192), 128, 192, None),  # within 1%: a pixel of rounding
    ],
)
def test_an_image_of_another_aspect_ratio_is_cropped_with_a_warning(image, height, width, warned, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core"):
        warn_if_cropped("control image", image, height, width)
    if warned is None:
        assert not caplog.records
    else:
        [record] = caplog.records
        assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
        assert warned in record.getMessage() and "centre-cropped" in record.getMessage()


@pytest.mark.parametrize(
    ("generated", "asked"),
    [((1024, 1024), (1000, 1000)), ((1152, 896), (1100, 850)), ((768, 1344), (720, 1280)), ((512, 512), (512, 512))],
)
def test_back_from_a_bin_like_the_reference(generated: tuple[int, int], asked: tuple[int, int]) -> None:
    images = torch.rand(1, 3, *generated, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = resize_and_crop(images, *asked)
    theirs = PixArtImageProcessor.resize_and_crop_tensor(images, asked[1], asked[0])
    assert ours.shape == (1, 3, *asked)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("image", "height", "width", "message"),
    [
        (torch.rand(2, 3), 16, 16, r"found shape \[2, 3\]"),
        (torch.rand(1, 2, 8, 8), 16, 16, r"1, 3 or 4 channels first, found shape \[1, 2, 8, 8\]"),
        (np.zeros((8, 8, 3)), 16, 16, "a PIL image or a tensor, found ndarray"),
        (torch.rand(3, 8, 8), 0, 16, "height must be a positive whole number of pixels, found 0"),
        (torch.rand(3, 8, 8), 16, 15.5, "width must be a positive whole number of pixels, found 15.5"),
    ],
)
def test_bad_images_and_sizes(image, height, width, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare_image(image, height, width)


def test_images_of_different_sizes_do_not_make_a_batch() -> None:
    with pytest.raises(InputError, match="images of one size"):
        from_pil([random_pil(8, 8), random_pil(8, 16)])
    with pytest.raises(InputError, match=r"\[batch, 3, height, width\]"):
        to_pil(torch.zeros(1, 4, 8, 8))
