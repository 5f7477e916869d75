"""The TAESD single file the autoencoder trainer writes, in a real ComfyUI (CPU): core VAE Loader reads it as it is
(every tensor a weight of ComfyUI's own TAESD, none missing, vae_scale and vae_shift taken), and core VAE Decode and
VAE Encode give what the engine's TaesdVae gives: ComfyUI's TAESD is an implementation independent of diffusers'
AutoencoderTiny, which the engine runs. Needs ``COMFYUI_ROOT`` and a python that runs ComfyUI (``COMFYUI_PYTHON``,
else this one); ComfyUI's side runs in a child process and writes what it computed for this test to compare.

Tolerance: 1e-5 absolute (fp32 on the CPU, pixels in 0..1, raw latents of magnitude ~1; measured 1.2e-6 on the
pixels and 1.4e-6 on the latents: the same convolutions, possibly from another torch build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import load_file, save_file

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.vae.autoencoder import TaesdVae, load_vae
from pixart_delta_core.vae.taesd_layout import TAESD_KWARGS, comfy_taesd_state_dict

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
pytestmark = pytest.mark.skipif(
    not COMFYUI_ROOT, reason="COMFYUI_ROOT is not set: these tests load the TAESD file in that ComfyUI checkout"
)
TOLERANCE = 1e-5
FILE = "pixart-taesd.safetensors"

# Run with ComfyUI's python, in its checkout: argv = ComfyUI root, the models' vae folder, inputs, outputs folder.
COMFYUI_SIDE = """
import inspect, json, sys
import torch
comfyui, vae_folder, inputs, out = sys.argv[1:5]
sys.path.insert(0, comfyui)
from comfy.cli_args import args
args.cpu = args.cpu or not torch.cuda.is_available()
import comfy.taesd.taesd
import comfy.utils
import folder_paths
import nodes
from safetensors.torch import load_file, save_file
folder_paths.add_model_folder_path("vae", vae_folder, is_default=True)
given = load_file(inputs)
listing = nodes.VAELoader.vae_list  # a static method in newer ComfyUI, one taking the class in older ones
listed = listing() if not inspect.signature(listing).parameters else listing(nodes.VAELoader)
names = [n for n in listed if n.endswith(".safetensors")]
vae = nodes.VAELoader().load_vae(names[0])[0]
model = vae.first_stage_model
held = set(comfy.utils.load_torch_file(vae_folder + "/" + names[0]))
image = nodes.VAEDecode().decode(vae, {"samples": given["raw"]})[0]
raw = nodes.VAEEncode().encode(vae, given["image"])[0]["samples"]
save_file({"image": image.float().contiguous(), "raw": raw.float().contiguous()}, out + "/comfyui.safetensors")
print(json.dumps({
    "listed": names,
    "class": type(model).__name__,
    "missing": sorted(set(model.state_dict()) - held),
    "unused": sorted(held - set(model.state_dict())),
    "vae_scale": float(model.vae_scale), "vae_shift": float(model.vae_shift),
}))
"""


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[dict, dict, TaesdVae, dict]:
    root = tmp_path_factory.mktemp("comfyui_taesd")
    (root / "vae").mkdir()
    model = randomize_(AutoencoderTiny(**TAESD_KWARGS), 11).eval()
    save_file(comfy_taesd_state_dict(model, 0.5, 0.1), str(root / "vae" / FILE))
    g = torch.Generator().manual_seed(12)
    inputs = {"raw": torch.randn(2, 4, 8, 6, generator=g), "image": torch.rand(2, 64, 48, 3, generator=g)}
    save_file(inputs, str(root / "inputs.safetensors"))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    done = subprocess.run(
        [python, "-c", COMFYUI_SIDE, COMFYUI_ROOT, str(root / "vae"), str(root / "inputs.safetensors"), str(root)],
        cwd=COMFYUI_ROOT,
        env={"OMP_NUM_THREADS": "1", **os.environ},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, load_file(str(root / "comfyui.safetensors")), load_vae(root / "vae" / FILE), inputs


def test_core_vae_loader_reads_the_single_file_as_it_is(compared) -> None:
    report, _, vae, _ = compared
    assert report["listed"] == [FILE] and report["class"] == "TAESD", report
    assert report["missing"] == [] and report["unused"] == [], report
    assert report["vae_scale"] == vae.config.vae_scale == 0.5
    assert report["vae_shift"] == vae.config.vae_shift == pytest.approx(0.1)


def test_core_vae_decode_and_encode_match_the_engine(compared) -> None:
    _, comfyui, vae, inputs = compared
    ours = (vae.decode(inputs["raw"]) + 1).div(2).clamp(0, 1).movedim(1, -1)  # [-1, 1] -> ComfyUI's IMAGE in 0..1
    assert comfyui["image"].shape == ours.shape == (2, 64, 48, 3)
    torch.testing.assert_close(comfyui["image"], ours, rtol=0, atol=TOLERANCE)
    raw = vae.encode(inputs["image"].movedim(-1, 1) * 2 - 1)
    assert comfyui["raw"].shape == raw.shape == (2, 4, 8, 6)
    torch.testing.assert_close(comfyui["raw"], raw, rtol=0, atol=TOLERANCE)
