"""The pack in a real ComfyUI server on 127.0.0.1 (CPU): it loads, /object_info lists its nodes as declared,
every example workflow runs to images (the low-memory one with T5 in 8 bits through bitsandbytes, each model
unloaded by ComfyUI's model management after use), Cancel stops a run. Needs ``COMFYUI_ROOT`` (a ComfyUI checkout) and a
python that runs it (``COMFYUI_PYTHON``, else this one).

The server gets its own folders (``--base-directory``: custom_nodes with this checkout linked as
``pixart-delta``, input, output, user) and the models through ``--extra-model-paths-config``: tiny random
models in the real layouts and file names the workflows expect, and the SD VAE at full size (core
VAELoader builds that architecture whatever the file holds). Images are made at 256 px to keep CPU time small.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.comfy_helpers import LCM_PIPELINE, MODEL_FILES, PACK, ui_to_api, write_models
from tests.helpers import ROOT

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
pytestmark = pytest.mark.skipif(
    not COMFYUI_ROOT, reason="COMFYUI_ROOT is not set: these tests start a real ComfyUI server from that checkout"
)
PACK_NAME = "pixart-delta"
KINDS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "controlnet", "diffusers", "loras")
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
SIDE = 256  # generation size in the tests (the workflows ask for 1024)


class Server:
    """A ComfyUI server process and its folders."""

    def __init__(self, base: Path, models: Path, port: int) -> None:
        self.base, self.models, self.port = base, models, port
        self.log = base / "server.log"
        config = base / "extra_model_paths.yaml"
        config.write_text(f"pixart_delta_test:\n    base_path: {models}\n" + "".join(f"    {k}: {k}\n" for k in KINDS))
        command = [
            os.environ.get("COMFYUI_PYTHON", sys.executable),
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-auto-launch",
            "--base-directory",
            str(base),
            "--extra-model-paths-config",
            str(config),
            "--database-url",
            "sqlite:///:memory:",
        ]
        # One thread per op: on small shared CPUs two threads fighting over the cores run many times slower.
        env = {"OMP_NUM_THREADS": "1", **os.environ}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, cwd=COMFYUI_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            raise AssertionError(f"POST {path}: HTTP {err.code}: {err.read().decode()[:3000]}") from err
        return json.loads(text) if text else {}

    def wait_ready(self, timeout: float = 180) -> None:
        start = time.time()
        while time.time() - start < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(f"ComfyUI did not answer in {timeout} s:\n{self.log_tail()}")

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]

    def wait_done(self, prompt_id: str, timeout: float = 600) -> dict:
        start = time.time()
        while time.time() - start < timeout:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, models = tmp_path_factory.mktemp("comfyui"), tmp_path_factory.mktemp("models")
    write_models(models, full_vae=True)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
    (base / "input").mkdir()
    photo = (torch.rand(1, 3, 48, 40).repeat_interleave(8, 2).repeat_interleave(8, 3) * 255).byte()  # 384x320
    Image.fromarray(photo[0].permute(1, 2, 0).numpy()).save(base / "input" / "example.png")
    server = Server(base, models, free_port())
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get("/object_info")


def test_the_pack_loads_without_errors(server, object_info) -> None:
    log = server.log_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if PACK_NAME in line), log
    for node_id in PACK.NODE_CLASS_MAPPINGS:
        assert object_info[node_id]["python_module"] == f"custom_nodes.{PACK_NAME}"
        assert object_info[node_id]["display_name"] == PACK.NODE_DISPLAY_NAME_MAPPINGS[node_id]


def test_object_info_lists_every_node_with_its_inputs(object_info) -> None:
    for node_id, node in PACK.NODE_CLASS_MAPPINGS.items():
        info, spec = object_info[node_id], node.INPUT_TYPES()
        for group in ("required", "optional"):
            assert info["input_order"].get(group, []) == list(spec.get(group, {})), node_id
            for name, (kind, options) in spec.get(group, {}).items():
                served = info["input"][group][name]
                if isinstance(kind, list) and not kind:  # a model list: this process sees no models
                    assert isinstance(served[0], list), f"{node_id}.{name}: {served}"
                else:
                    assert served[0] == kind, f"{node_id}.{name}: {served}"
                assert served[1]["tooltip"] == options["tooltip"]
        assert info["output"] == list(node.RETURN_TYPES) and info["category"] == node.CATEGORY
    names = object_info["PixArtDeltaCheckpointLoader"]["input"]["required"]["ckpt_name"][0]
    expected = {Path(MODEL_FILES[k]).name for k in ("alpha", "lcm", "controlnet")} | {LCM_PIPELINE.split("/")[1]}
    assert expected <= set(names), names


def test_node_docs_and_workflow_templates_are_served(server) -> None:
    for node_id in PACK.NODE_CLASS_MAPPINGS:
        assert server.get(f"/extensions/{PACK_NAME}/docs/{node_id}.md").startswith(b"# ")
    assert sorted(server.get("/workflow_templates")[PACK_NAME]) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        served = server.get(f"/api/workflow_templates/{PACK_NAME}/{path.name}")
        assert served == json.loads(path.read_text())
        assert (
            server.get(f"/api/workflow_templates/{PACK_NAME}/{path.stem}.jpg") == path.with_suffix(".jpg").read_bytes()
        )


def smaller(prompt: dict) -> dict:
    """The same prompt at SIDE px (the Resolution node's 256 px bins; img2img scaled to SIDE), tiled decoding in
    tiles of a quarter of that (else one tile would hold the whole image)."""
    for node in prompt.values():
        if node["class_type"] == "PixArtDeltaResolution":
            node["inputs"]["resolution"] = str(SIDE)
        if node["class_type"] == "ImageScale":
            node["inputs"].update(width=SIDE, height=SIDE)
        if node["class_type"] == "VAEDecodeTiled":
            node["inputs"].update(tile_size=SIDE // 2, overlap=SIDE // 8)
    return prompt


def images_of(entry: dict) -> list[dict]:
    return [image for output in entry["outputs"].values() for image in output.get("images", [])]


@pytest.mark.parametrize(
    "path", [p for p in WORKFLOWS if not p.stem.startswith("demo_")], ids=lambda p: p.stem
)  # the demos run as saved, on the embedded model: test_comfyui_demos
def test_example_workflow_runs_to_images(server, object_info, path: Path) -> None:
    prompt = smaller(ui_to_api(json.loads(path.read_text()), object_info))
    for node in prompt.values():
        if node["class_type"] == "PixArtDeltaSampler":
            node["inputs"]["seed"] = WORKFLOWS.index(path)  # no workflow reuses another's cached images
    start = time.time()
    entry = server.wait_done(server.queue(prompt))
    seconds = time.time() - start
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    images = images_of(entry)
    saved = [i for i in images if i["type"] == "output"]
    assert saved, entry["outputs"]
    scale = 2 if "upscale" in path.stem else 1
    for image in saved:
        with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as file:
            assert file.size == (SIDE * scale, SIDE * scale)
    if path.stem == "pixart_delta_lcm_low_memory":  # each model taken off by ComfyUI's model management after use
        log = server.log_text()
        for model in ("T5EncoderModel", "PixArtTransformer"):
            assert f"PixArt-δ low memory: {model} off cpu (ComfyUI unloaded 1 model(s))" in log, server.log_tail()
    print(f"\n{path.stem}: {len(images)} images ({len(saved)} saved) in {seconds:.1f} s")


def test_cancel_stops_the_sampler_promptly(server, object_info) -> None:
    workflow = json.loads((ROOT / "example_workflows" / "pixart_alpha_dpm_solver.json").read_text())
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        if node["class_type"] == "PixArtDeltaSampler":
            node["inputs"].update(sampler="euler", steps=1000, seed=123)  # far more work than the test waits for
    marker = "PixArt-δ sampler: euler, 1000 of 1000 steps"
    before = server.log_text().count(marker)
    prompt_id = server.queue(prompt)
    start = time.time()
    while server.log_text().count(marker) == before:
        assert time.time() - start < 120, server.log_tail()
        time.sleep(0.1)
    time.sleep(1.0)  # well into the steps
    interrupted = time.time()
    server.post("/interrupt", {"prompt_id": prompt_id})
    entry = server.wait_done(prompt_id, timeout=60)
    stopped = time.time() - interrupted
    assert entry["status"]["status_str"] == "error"
    assert any(message[0] == "execution_interrupted" for message in entry["status"]["messages"])
    assert stopped < 10, f"took {stopped:.1f} s to stop"
    print(f"\ncancel: stopped {stopped:.2f} s after the interrupt")
