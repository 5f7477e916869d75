"""The shapes world written as a data set: the trainers' layout, each file rebuilt exactly from its seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixart_delta_core.errors import InputError
from pixart_delta_core.world.dataset import JSONL, write_dataset
from pixart_delta_core.world.render import edge_map, render
from pixart_delta_core.world.scenes import sample_scene


def test_each_scene_is_a_picture_its_caption_and_its_edge_map(tmp_path: Path) -> None:
    jsonl = write_dataset(tmp_path, 3, first_seed=40, max_shapes=3)
    assert jsonl == tmp_path / JSONL
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["image"] for r in records] == ["000040.png", "000041.png", "000042.png"]
    for seed, record in zip(range(40, 43), records, strict=True):
        scene = sample_scene(seed, 3)
        assert record == {"image": f"{seed:06d}.png", "caption": scene.caption(), "control": f"control/{seed:06d}.png"}
        assert (tmp_path / f"{seed:06d}.txt").read_text(encoding="utf-8") == scene.caption() + "\n"
        with Image.open(tmp_path / record["image"]) as picture, Image.open(tmp_path / record["control"]) as control:
            assert np.array_equal(np.asarray(picture), np.asarray(render(scene)))
            assert np.array_equal(np.asarray(control), np.asarray(edge_map(scene)))


def test_writing_again_rewrites_the_same_files(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 2, first_seed=7)
    write_dataset(tmp_path / "b", 2, first_seed=7)
    for name in ("000007.png", "000008.txt", "control/000008.png", JSONL):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    ("count", "first_seed", "said"),
    [
        (0, 0, "count: expected a whole number, 1 or more, found 0"),
        (2, -1, "first_seed: expected a whole number, 0 or more, found -1"),
        (2.0, 0, "count: expected a whole number, 1 or more, found 2.0"),
        (
            3,
            2**64 - 2,
            f"first_seed {2**64 - 2} with count 3: the last scene's seed would be {2**64}, past the largest, "
            f"{2**64 - 1} (2^64 - 1): expected first_seed at most {2**64 - 3}",
        ),
    ],
    ids=["no-scene", "negative-seed", "float-count", "past-the-last-seed"],
)
def test_the_api_refuses_the_seeds_the_world_command_refuses_before_its_folder(
    tmp_path: Path, count: object, first_seed: object, said: str
) -> None:
    """The seed range of ``world --first-seed`` (0 to 2^64 - 1, the last scene's too) holds for the API as well."""
    with pytest.raises(InputError) as caught:
        write_dataset(tmp_path / "set", count, first_seed)  # type: ignore[arg-type]
    assert str(caught.value) == said
    assert not (tmp_path / "set").exists()
