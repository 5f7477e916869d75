"""Aspect-ratio bins against the reference tables (as diffusers ships them), the nearest bin, size checks."""

from __future__ import annotations

import pytest
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

from pixart_delta_core.errors import InputError
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.pipeline.resolution import ASPECT_RATIO_BINS, bin_ratio, bins_for, check_image_size, nearest_bin

THEIRS = {
    256: ASPECT_RATIO_256_BIN,
    512: ASPECT_RATIO_512_BIN,
    1024: ASPECT_RATIO_1024_BIN,
    2048: ASPECT_RATIO_2048_BIN,
}
MULTIPLE = {256: 16, 512: 32, 1024: 64, 2048: 128}


@pytest.mark.parametrize("resolution", sorted(THEIRS))
def test_bins_are_the_reference_tables_in_order(resolution: int) -> None:
    ours = [(bin_ratio(size), size) for size in ASPECT_RATIO_BINS[resolution]]
    theirs = [(float(ratio), (int(h), int(w))) for ratio, (h, w) in THEIRS[resolution].items()]
    assert ours == theirs


@pytest.mark.parametrize("resolution", sorted(THEIRS))
def test_every_bin_is_a_valid_size_near_the_resolution(resolution: int) -> None:
    for height, width in ASPECT_RATIO_BINS[resolution]:
        assert height % MULTIPLE[resolution] == 0 and width % MULTIPLE[resolution] == 0
        check_image_size(height, width)
        assert 0.85 < height * width / resolution**2 <= 1.0


@pytest.mark.parametrize("resolution", sorted(THEIRS))
def test_nearest_bin_agrees_with_diffusers_everywhere(resolution: int) -> None:
    bins = ASPECT_RATIO_BINS[resolution]
    sides = range(64, 4097, 40)
    for height in sides:
        for width in sides:
            expected = PixArtImageProcessor.classify_height_width_bin(height, width, THEIRS[resolution])
            assert nearest_bin(height, width, bins) == expected, (height, width)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1024, 1024, (1024, 1024)),
        (1080, 1920, (768, 1344)),  # 16:9 -> 0.57
        (1024, 1536, (832, 1216)),  # 2:3 -> 0.68
        (1536, 1024, (1216, 832)),  # 3:2 -> 1.46
        (100, 1000, (512, 2048)),  # beyond the last bin: the extreme one
        (4000, 400, (2048, 512)),
    ],
)
def test_nearest_bin_examples(height: int, width: int, expected: tuple[int, int]) -> None:
    assert nearest_bin(height, width) == expected


def test_bins_follow_the_transformers_training_resolution() -> None:
    assert bins_for(TransformerConfig(sample_size=128)) is ASPECT_RATIO_BINS[1024]
    assert bins_for(TransformerConfig(sample_size=32)) is ASPECT_RATIO_BINS[256]
    assert bins_for(TransformerConfig(sample_size=16)) is None  # 128 px: drawn at the size asked


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (1000, 1024, r"height must be a multiple of 16 px, found 1000 \(nearest: 992 or 1008\)"),
        (1024, 24, r"width must be a multiple of 16 px, found 24 \(nearest: 16 or 32\)"),
        (0, 512, "height must be at least 16 px, found 0"),
        (512, -16, "width must be at least 16 px, found -16"),
        (15, 512, "height must be at least 16 px, found 15"),
        (8208, 512, "height must be at most 8192 px, found 8208"),
        (8192, 4096, r"8192x4096 is 33.6 megapixels; the limit is 16.8 \(4096x4096\)"),
        (512.0, 512, "height must be a whole number of pixels, found 512.0"),
        ("512", 512, "height must be a whole number of pixels, found '512'"),
        (True, 512, "height must be a whole number of pixels, found True"),
    ],
)
def test_impossible_sizes_are_refused(height, width, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_image_size(height, width)


def test_every_wrong_side_is_named_at_once() -> None:
    with pytest.raises(InputError) as err:
        check_image_size(37, 100)
    assert str(err.value) == (
        "height must be a multiple of 16 px, found 37 (nearest: 32 or 48); "
        "width must be a multiple of 16 px, found 100 (nearest: 96 or 112)"
    )
    with pytest.raises(InputError, match="height must be at least 16 px, found 0; width must be a whole number"):
        check_image_size(0, 64.0)


def test_a_size_below_16_px_is_refused_even_where_any_multiple_goes() -> None:
    """With binning any size is asked (multiple 1), but 1 x 1 would be generated at a bin and cropped to a dot."""
    with pytest.raises(InputError, match="height must be at least 16 px, found 1"):
        check_image_size(1, 1, multiple=1)
    check_image_size(17, 16, multiple=1)


def test_largest_sizes_accepted() -> None:
    check_image_size(4096, 4096)
    check_image_size(8192, 2048)
    check_image_size(16, 16)
