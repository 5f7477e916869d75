"""Input pictures (init and control images, training images, pictures to judge) read by one rule,
``pictures.to_rgb``: upright by their EXIF orientation (sizes checked and reported upright), 16-bit, integer and
float grey scaled to 8 bits rather than clipped, transparency composited onto black."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pixart_delta_core.cli import main
from pixart_delta_core.errors import InputError
from pixart_delta_core.pictures import ORIENTATION, to_rgb, upright_size
from pixart_delta_core.pipeline.arguments import check_image, check_images, opened_image
from pixart_delta_core.pipeline.images import from_pil, prepare_image, warn_if_cropped
from pixart_delta_core.training.data import load_image
from pixart_delta_core.world.reading import picture_pixels, read_picture
from pixart_delta_core.world.render import render
from pixart_delta_core.world.scenes import sample_scene
from tests.helpers import png_header

WIDTH, HEIGHT = 48, 32  # as stored: orientations 5 to 8 show it 32 wide and 48 tall


def _stored(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """A picture no flip or turn leaves the same: a red top-left corner, a green right edge, blue below."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 4, height // 3))
    image.paste((0, 255, 0), (width - 4, 0, width, height // 2))
    return image


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _with_orientation(image: Image.Image, path: Path, orientation: int) -> Path:
    image.save(path, exif=_exif(orientation))
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_orientation_is_turned_upright_and_sized_upright(tmp_path: Path, orientation: int) -> None:
    path = _with_orientation(_stored(), tmp_path / "photo.png", orientation)
    with Image.open(path) as image:
        assert "exif" in image.info  # Pillow writes the eXIf chunk before the pixels: read from the header
        upright = ImageOps.exif_transpose(image).convert("RGB")  # Pillow's own reading of the tag
    assert upright.size == ((HEIGHT, WIDTH) if orientation >= 5 else (WIDTH, HEIGHT))
    used = opened_image(path, "init image")
    assert used.mode == "RGB" and np.array_equal(np.asarray(used), np.asarray(upright))
    assert check_images(path, path) == (upright.height, upright.width)  # the picture takes the upright size
    with Image.open(path) as image:
        assert upright_size(image) == upright.size and check_image("init image", image) == used.size[::-1]
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(upright))
        pixels = prepare_image(image, upright.height, upright.width)  # a PIL image given to the pipeline
    assert torch.equal(pixels, from_pil(upright))


def test_a_sideways_phone_photo_is_checked_by_its_upright_sides(tmp_path: Path) -> None:
    """A JPEG stored 64 wide and 20 tall is shown 20 wide and 64 tall: the message gives the sides the user sees."""
    narrow = _with_orientation(Image.new("RGB", (64, 20)), tmp_path / "narrow.jpg", 6)
    with pytest.raises(InputError, match=r"narrow.jpg is 20x64 px \(width x height\): expected at least 32 px a side"):
        check_images(None, narrow)
    stored = Image.new("RGB", (60, 36))
    stored.paste((255, 255, 255), (0, 0, 30, 36))  # white on the left as stored
    photo = _with_orientation(stored, tmp_path / "photo.jpg", 6)
    assert check_images(photo, None) == (60, 36)
    used = np.asarray(opened_image(photo, "init image"), dtype=np.float32)  # turned 90 degrees clockwise
    assert used.shape == (60, 36, 3) and used[:25].mean() > 240 and used[35:].mean() < 15  # the left is on top


@pytest.mark.parametrize("name", ["init image", "control image"])
@pytest.mark.parametrize(("size", "suffix"), [((WIDTH, HEIGHT), ".png"), ((WIDTH, HEIGHT), ".jpg"), ((40, 40), ".png")])
def test_a_file_decoded_upright_is_prepared_as_the_same_picture_stored_upright(
    tmp_path: Path, caplog, name: str, size: tuple[int, int], suffix: str
) -> None:
    """The pipeline decodes an init or control file upright (``opened_image``), then prepares it: its tag must not
    turn it a second time (a square picture too, whose size alone would not show it), nor size it as stored."""
    rotated = _with_orientation(_stored(*size), tmp_path / f"rotated{suffix}", 6)
    with Image.open(rotated) as image:
        ImageOps.exif_transpose(image).convert("RGB").save(tmp_path / "upright.png")  # Pillow's reading, no tag
    opened = opened_image(rotated, name)
    assert opened.size == upright_size(opened) == size[::-1] and ORIENTATION not in opened.getexif()
    with Image.open(tmp_path / "upright.png") as upright:
        for height, width in ((opened.height, opened.width), (2 * opened.height, 2 * opened.width)):
            assert torch.equal(prepare_image(opened, height, width), prepare_image(upright, height, width))
    with caplog.at_level(logging.WARNING):
        warn_if_cropped(name, opened, 2 * opened.height, 2 * opened.width)  # the same aspect ratio: nothing to say
    assert caplog.records == []


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16"])
def test_a_picture_read_once_reads_the_same_again(tmp_path: Path, orientation: int, mode: str) -> None:
    stored = _stored().convert("RGBA" if mode == "RGBA" else "RGB")
    if mode == "I;16":
        stored = Image.fromarray(np.asarray(stored.convert("L"), dtype=np.uint16) * 257)
    with Image.open(_with_orientation(stored, tmp_path / "photo.png", orientation)) as image:
        assert image.mode == mode
        once = to_rgb(image)
    twice = to_rgb(once)
    assert twice.size == once.size == upright_size(once) and np.array_equal(np.asarray(twice), np.asarray(once))


def _late_exif(path: Path) -> Path:
    """The PNG at ``path`` with its eXIf chunk moved behind the pixels (IDAT)."""
    data, chunks, at = path.read_bytes(), [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        chunks.append(data[at : at + 12 + length])
        at += 12 + length
    exif = next(c for c in chunks if c[4:8] == b"eXIf")
    chunks.remove(exif)
    chunks.insert(len(chunks) - 1, exif)  # before IEND
    path.write_bytes(data[:8] + b"".join(chunks))
    return path


def test_an_exif_chunk_behind_a_pngs_pixels_is_not_read_so_size_and_pixels_agree(tmp_path: Path) -> None:
    """Finding it would mean decoding the picture to check its size; ignoring it everywhere keeps them one size."""
    path = _late_exif(_with_orientation(_stored(), tmp_path / "late.png", 6))
    assert check_images(path, None) == (HEIGHT, WIDTH)
    assert opened_image(path, "init image").size == (WIDTH, HEIGHT)


def _png16_rgb(path: Path, values: np.ndarray) -> Path:
    """A 16-bit RGB PNG of ``values`` [H,W,3] uint16 (Pillow writes no such PNG)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b""))
    return path


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(32 * 64).reshape(32, 64) * 32).astype(np.uint16)  # 0..65504
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert np.asarray(image.convert("RGB")).mean() > 250  # what Pillow's convert makes of it: almost all white
    expected = np.repeat(np.round(ramp / 257).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(opened_image(path, "control image")), expected)


def test_a_16_bit_rgb_png_is_read_by_pillow_as_8_bit_rgb(tmp_path: Path) -> None:
    values = np.stack([np.full((16, 16), v, np.uint16) for v in (0, 32896, 65535)], axis=-1)
    path = _png16_rgb(tmp_path / "rgb16.png", values)
    with Image.open(path) as image:
        assert image.mode == "RGB"
    assert np.asarray(opened_image(path, "init image"))[0, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # floats in [0, 1]
        (np.array([[0.0, 100.0, 255.0]], np.float32), [0, 100, 255]),  # an 8-bit picture as floats (convert("F"))
        (np.array([[0.0, 257.0, 65535.0]], np.float32), [0, 1, 255]),  # 16-bit values as floats
        (np.array([[-3.0, np.nan, 1e9, 65535.0]], np.float32), [0, 0, 255, 255]),  # clipped; NaN reads as 0
        (np.array([[0, 100, 255]], np.int32), [0, 100, 255]),  # an 8-bit picture as "I" (convert("I"))
        (np.array([[0, 32896, 65535, 70000, -5]], np.int32), [0, 128, 255, 255, 0]),  # 16-bit values as "I"
    ],
)
def test_integer_and_float_grey_is_scaled_by_its_full_scale(values: np.ndarray, expected: list[int]) -> None:
    image = Image.fromarray(values)
    assert image.mode == ("F" if values.dtype == np.float32 else "I")
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


def _transparent_pictures() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (32, 32), (255, 255, 255, 0))  # white, hidden: a transparent background
    rgba.paste((255, 255, 255, 255), (8, 8, 24, 24))  # an opaque white square
    rgba.putpixel((0, 0), (200, 100, 50, 128))  # half covering
    la = rgba.convert("LA")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([255, 255, 255, 200, 200, 200])
    palette.paste(0, (8, 8, 24, 24))
    palette.info["transparency"] = 1
    return {"RGBA": rgba, "LA": la, "P": palette}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_black_everywhere_a_picture_is_read(tmp_path: Path, mode: str) -> None:
    picture = _transparent_pictures()[mode]
    path = tmp_path / "edges.png"
    picture.save(path)
    with Image.open(path) as image:
        assert image.mode == mode and np.asarray(image.convert("RGB"))[0, 31].min() >= 200  # convert: hidden colour
    expected = np.zeros((32, 32, 3), np.uint8)
    expected[8:24, 8:24] = 255
    if mode != "P":
        expected[0, 0] = [100, 50, 25] if mode == "RGBA" else 62  # LA: grey 124 (ITU-R 601), half covering
    read = np.asarray(opened_image(path, "control image"))  # an init or control image file
    assert np.abs(read.astype(int) - expected).max() <= 1
    assert np.array_equal(np.asarray(to_rgb(picture)), read)
    assert torch.equal(prepare_image(picture, 32, 32), from_pil(Image.fromarray(read)))  # a PIL image given
    assert np.array_equal(picture_pixels(picture), read.astype(np.float32))  # the judge
    if mode == "RGBA":  # a tensor with alpha, by the same rule
        tensor = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
        assert (prepare_image(tensor, 32, 32) - from_pil(Image.fromarray(read))).abs().max() <= 2 / 255 + 1e-6


def test_training_images_are_read_by_the_same_rule(tmp_path: Path) -> None:
    stored = _stored().convert("RGBA")
    stored.paste((255, 255, 255, 0), (0, HEIGHT // 2, WIDTH, HEIGHT))  # a transparent lower half, white hidden
    path = _with_orientation(stored, tmp_path / "sideways.png", 6)
    upright = np.asarray(_stored().transpose(Image.Transpose.ROTATE_270)).copy()
    upright[:, : HEIGHT // 2] = 0  # the lower half as stored is the left half upright: black
    assert torch.equal(load_image(path, (WIDTH, HEIGHT)), from_pil(Image.fromarray(upright)))


def test_the_judge_reads_a_picture_upright(tmp_path: Path, capsys) -> None:
    scene = sample_scene(5)  # shapes at the top left and on the right: a turned picture reads otherwise
    turned = render(scene).transpose(Image.Transpose.ROTATE_90)  # stored on its side, shown upright by the tag
    path = _with_orientation(turned, tmp_path / "turned.png", 6)
    assert read_picture(turned).caption() != scene.caption()
    assert main(["judge", str(path), "--prompt", scene.caption(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["verdict"] == "ok"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_judge_refuses_a_decompression_bomb_in_its_own_words(tmp_path: Path, capsys) -> None:
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)  # 400 megapixels: past Pillow's hard limit
    assert main(["judge", str(bomb), "--prompt", sample_scene(5).caption()]) == 1
    err = capsys.readouterr().err
    assert "bomb.png: expected a picture of at most 4096 x 4096 px" in err
    assert "found 400 megapixels (from its header): shrink it first" in err and "DOS attack" not in err
