"""The shapes world written as a data set: the trainers' layout, each file rebuilt exactly from its seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def test_an_empty_data_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one scene, asked for 0"):
        write_dataset(tmp_path, 0)
