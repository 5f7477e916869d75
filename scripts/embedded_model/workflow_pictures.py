"""Run every demo_* example workflow in a real ComfyUI, judge its picture, and make its thumbnail from it.

    COMFYUI_ROOT=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python scripts/embedded_model/workflow_pictures.py

ComfyUI starts on 127.0.0.1 (CPU) with its own empty folders and this checkout as its only custom node: the
workflows find the embedded model where the pack lists it (pixart_delta_core/embedded_model/), nothing
copied, no model paths given. Each workflow runs as saved; the shapes world's judge reads its saved
picture (at the world's 128 px) against the prompt it was given (and, for the ControlNet, measures how well
the shapes cover the edge map's), and example_workflows/demo_*.jpg is written from what it made: its
previews (the inputs it drew) and its saved picture, side by side. Prints one verdict line per workflow
and exits 1 if one did not run. Run it again after the embedded model's files change.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pixart_delta_core.world.judge import Verdict, foreground_iou, judge, parse_caption  # noqa: E402
from pixart_delta_core.world.reading import read_picture  # noqa: E402
from pixart_delta_core.world.scenes import IMAGE_SIZE  # noqa: E402
from tests.comfy_helpers import ui_to_api  # noqa: E402
from tests.test_comfyui_real import PACK_NAME, Server, free_port, images_of  # noqa: E402

WORKFLOWS = ROOT / "example_workflows"
THUMBNAIL_SIDE = 256  # px per picture in a thumbnail
TIMEOUT = 600  # s for one workflow on a busy CPU


@dataclass
class DemoRun:
    """One demo workflow's run: its saved picture, the previews it showed, and the judge's reading."""

    name: str
    seconds: float
    picture: Image.Image  # the saved output, as made
    previews: list[Image.Image]
    prompt: str
    verdict: Verdict
    iou: float | None  # ControlNet: foreground IoU with the edge map's shapes

    @property
    def score(self) -> float:
        """The fraction of the judged attributes that are right (background, count, each shape's)."""
        marks = [self.verdict.background, self.verdict.count]
        marks += [right for shape in self.verdict.shapes for right in shape.right.values()]
        return sum(marks) / len(marks)

    def line(self) -> str:
        iou = f", IoU with the edge map's shapes {self.iou:.2f}" if self.iou is not None else ""
        return (
            f"{self.name}: {self.verdict.line()} (score {self.score:.0%}{iou}; {self.seconds:.1f} s)\n  {self.prompt}"
        )


def start_server(base: Path) -> Server:
    """A ComfyUI server with empty folders under ``base`` and this checkout linked as its custom node."""
    for name in ("custom_nodes", "input", "models"):
        (base / name).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
    server = Server(base, base / "models", free_port())
    server.wait_ready()
    return server


def _inputs_of(prompt: dict, class_type: str, name: str) -> list:
    return [node["inputs"][name] for node in prompt.values() if node["class_type"] == class_type]


def _picture(server: Server, image: dict) -> Image.Image:
    with Image.open(server.base / image["type"] / image["subfolder"] / image["filename"]) as file:
        return file.convert("RGB")


def run_demo(server: Server, object_info: dict, path: Path) -> DemoRun:
    """Queue the workflow at ``path`` as saved and judge what it saves; AssertionError if it fails to run."""
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    start = time.time()
    entry = server.wait_done(server.queue(prompt), timeout=TIMEOUT)
    seconds = time.time() - start
    if entry["status"]["status_str"] != "success":
        raise AssertionError(f"{path.stem} failed: {json.dumps(entry['status'], indent=1)[:4000]}")
    images = images_of(entry)
    saved = [_picture(server, i) for i in images if i["type"] == "output"]
    if len(saved) != 1:
        raise AssertionError(f"{path.stem}: expected one saved picture, found {len(saved)}")
    (text,) = _inputs_of(prompt, "PixArtDeltaT5TextEncode", "text")
    picture = saved[0]
    world_sized = picture.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    verdict = judge(parse_caption(text), read_picture(world_sized))
    iou = None
    if _inputs_of(prompt, "PixArtDeltaControlNetApply", "strength"):
        (scene,) = _inputs_of(prompt, "PixArtDeltaShapesScene", "caption")
        iou = foreground_iou(world_sized, parse_caption(scene))
    previews = [_picture(server, i) for i in images if i["type"] == "temp"]
    return DemoRun(path.stem, seconds, picture, previews, text, verdict, iou)


def thumbnail(run: DemoRun) -> Image.Image:
    """The run's previews and its saved picture side by side, THUMBNAIL_SIDE px each."""
    pictures = [*run.previews, run.picture]
    sheet = Image.new("RGB", (THUMBNAIL_SIDE * len(pictures), THUMBNAIL_SIDE))
    for i, picture in enumerate(pictures):
        sheet.paste(picture.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS), (i * THUMBNAIL_SIDE, 0))
    return sheet


def object_info_of(server: Server) -> dict:
    return server.get("/object_info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="demo workflows to run (e.g. demo_controlnet); default: every one")
    parser.add_argument("--no-thumbnails", action="store_true", help="judge only; leave the .jpg files as they are")
    args = parser.parse_args(argv)
    paths = [WORKFLOWS / f"{n}.json" for n in args.names] or sorted(WORKFLOWS.glob("demo_*.json"))
    failed = 0
    with tempfile.TemporaryDirectory(prefix="pixart-delta-comfyui-") as base:
        server = start_server(Path(base))
        try:
            object_info = object_info_of(server)
            for path in paths:
                try:
                    run = run_demo(server, object_info, path)
                except AssertionError as err:
                    print(f"{path.stem}: DID NOT RUN: {err}\n{server.log_tail(30)}", flush=True)
                    failed += 1
                    continue
                print(run.line(), flush=True)
                if not args.no_thumbnails:
                    thumbnail(run).save(path.with_suffix(".jpg"), quality=88, optimize=True)
        finally:
            server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
