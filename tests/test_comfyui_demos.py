"""The demo_* workflows in a real ComfyUI (CPU) that has nothing but this pack: its loaders and core Load VAE
list the embedded model's files where the pack keeps them, and every demo runs as saved to its picture,
which the shapes world's judge reads. Needs ``COMFYUI_ROOT`` (and ``COMFYUI_PYTHON``), as test_comfyui_real.

The judge's thresholds below are the level the random placeholder models meet (a picture came out: any
score, any IoU); they are raised to the issue's numbers once the trained models ship.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts.embedded_model.workflow_pictures import WORKFLOWS, run_demo, start_server

pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_ROOT"),
    reason="COMFYUI_ROOT is not set: these tests start a real ComfyUI server from that checkout",
)
DEMOS = sorted(WORKFLOWS.glob("demo_*.json"))
MIN_SCORE = 0.0  # fraction of the judged attributes right: placeholder level, see the module docstring
MIN_IOU = 0.0  # ControlNet: foreground IoU with the edge map's shapes: placeholder level


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("comfyui-bare"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get("/object_info")


def listed(object_info: dict, node: str, widget: str) -> list[str]:
    return object_info[node]["input"]["required"][widget][0]


def test_the_loaders_list_the_embedded_model_without_any_model_folder_given(object_info) -> None:
    assert {"shapes-lcm.safetensors", "shapes-teacher.safetensors"} <= set(
        listed(object_info, "PixArtDeltaCheckpointLoader", "ckpt_name")
    )
    assert "shapes-edges.safetensors" in listed(object_info, "PixArtDeltaControlNetLoader", "controlnet_name")
    assert "shapes-t5" in listed(object_info, "PixArtDeltaT5Loader", "t5_name")
    assert "shapes-taesd.safetensors" in listed(object_info, "VAELoader", "vae_name")  # core's own loader
    assert "shapes-lcm.safetensors" in listed(object_info, "UNETLoader", "unet_name")  # a diffusion model
    assert "shapes-lcm.safetensors" not in listed(object_info, "CheckpointLoaderSimple", "ckpt_name")


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.stem)
def test_the_demo_runs_offline_to_a_judged_picture(server, object_info, path: Path) -> None:
    run = run_demo(server, object_info, path)
    scale = [n for n in json.loads(path.read_text())["nodes"] if n["type"] == "ImageScaleBy"]
    side = 128 * (int(scale[0]["widgets_values"][1]) if scale else 1)
    assert run.picture.size == (side, side)
    assert run.score >= MIN_SCORE, run.line()
    if run.iou is not None:
        assert run.iou >= MIN_IOU, run.line()
    print(f"\n{run.line()}")
