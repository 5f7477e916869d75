"""The core MODEL the loaders give, in a real ComfyUI (CPU): core KSampler on it matches ComfyUI's own PixArt model
loaded from the same reference file, and the engine's own euler where the schedules agree; the caption mask is
honoured; an int8 model samples; ModelSamplingDiscrete lcm, LoraLoaderModelOnly, RescaleCFG and the pack's
ControlNet (strength and start/end) work through core samplers. Needs ``COMFYUI_ROOT`` and a python that runs
ComfyUI (``COMFYUI_PYTHON``, else this one); the work runs in one process, ``tests/comfyui_core_model_checks.py``,
and this judges its numbers.

Tolerance: every latent that should match agrees to 1e-5 of its largest value (fp32 on the CPU; the measured
differences were 1e-6 of it: the order of summation differs between the networks and between the samplers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
pytestmark = pytest.mark.skipif(
    not COMFYUI_ROOT, reason="COMFYUI_ROOT is not set: these tests run the pack's core MODEL in that ComfyUI checkout"
)
TOLERANCE = 1e-5  # of the largest value of the latent compared against


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("core_model") / "measured.json"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = ROOT / "tests" / "comfyui_core_model_checks.py"
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    done = subprocess.run(
        [python, str(script), COMFYUI_ROOT, str(out)], cwd=COMFYUI_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(out.read_text())


# A ComfyUI from before the model-function wrappers: the pack still loads, says what is missing, and a loader whose
# MODEL output is wired to KSampler refuses before loading instead of handing KSampler None.
OLDER_COMFYUI = """
import importlib.util, json, logging, sys
import torch
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
comfyui, pack_root = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfyui)
from comfy.cli_args import args
args.cpu = args.cpu or not torch.cuda.is_available()
import comfy.model_base
del comfy.model_base.BaseModel._apply_model
init = pack_root + "/__init__.py"
spec = importlib.util.spec_from_file_location("pack", init, submodule_search_locations=[pack_root])
pack = importlib.util.module_from_spec(spec)
sys.modules["pack"] = pack
spec.loader.exec_module(pack)
prompt = {"3": {"class_type": "PixArtDeltaCheckpointLoader", "inputs": {}},
          "5": {"class_type": "KSampler", "inputs": {"model": ["3", 1]}}}
try:
    pack.nodes.loaders.CheckpointLoader().load("not-there.safetensors", prompt=prompt, unique_id="3")
    refused = ""
except pack.pixart_delta_core.errors.InputError as err:
    refused = str(err)
print(json.dumps({"core_model": pack.nodes.comfy_model.CORE_MODEL, "refused": refused}))
"""


def test_an_older_comfyui_keeps_the_pack_says_what_is_missing_and_refuses_a_wired_empty_model() -> None:
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    done = subprocess.run(
        [python, "-c", OLDER_COMFYUI, COMFYUI_ROOT, str(ROOT)], cwd=COMFYUI_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["core_model"] is False
    assert "lacks comfy.model_base.BaseModel._apply_model" in done.stdout, done.stdout  # the pack's log warning
    assert "connected to KSampler (node 5)" in result["refused"], result  # before the (missing) file is read
    assert "BaseModel._apply_model" in result["refused"], result


def relative(difference: dict) -> float:
    return difference["max_abs"] / difference["scale"]


def test_the_loader_gives_a_core_pixart_model_running_the_engine_transformer(measured) -> None:
    assert measured["core_model"] and measured["model_class"] == "PixArtDeltaModel"
    assert measured["runs_engine_transformer"], measured


def test_ksampler_on_our_model_matches_comfyuis_own_pixart(measured) -> None:
    assert relative(measured["ksampler_vs_core_pixart"]) < TOLERANCE, measured["ksampler_vs_core_pixart"]
    assert measured["ksampler_vs_core_pixart"]["shape"] == [1, 4, 64, 48]  # 512 x 384 px: micro-conditions 4:3


def test_ksampler_euler_matches_the_engines_euler_where_schedules_agree(measured) -> None:
    assert relative(measured["ksampler_vs_engine_euler"]) < TOLERANCE, measured["ksampler_vs_engine_euler"]


def test_the_caption_mask_is_honoured(measured) -> None:
    assert relative(measured["masked_vs_unpadded"]) < TOLERANCE
    assert relative(measured["unmasked_padding_vs_unpadded"]) > 0.01  # the padding would matter if unmasked


def test_model_sampling_discrete_lcm_matches_the_engines_lcm(measured) -> None:
    assert relative(measured["lcm_one_step_vs_engine"]) < TOLERANCE, measured["lcm_one_step_vs_engine"]
    assert measured["lcm_four_steps_finite"]


def test_core_lora_loader_patches_our_model_as_comfyuis_own(measured) -> None:
    assert measured["lora_patched_keys"] == 9  # 3 blocks x (q slice of qkv, k slice of kv, fc2)
    assert relative(measured["lora_vs_core_lora"]) < TOLERANCE
    assert relative(measured["lora_vs_plain"]) > 0.01
    assert measured["plain_after_lora_vs_before"]["max_abs"] == 0  # the LoRA is taken off again for the plain MODEL


def test_an_int8_model_samples_and_refuses_a_lora_on_its_quantized_weights(measured) -> None:
    assert relative(measured["int8_vs_full"]) < 0.1, measured["int8_vs_full"]  # LLM.int8 of random weights
    assert "quantized weight" in measured.get("int8_lora_refused", ""), measured.get("int8_lora_refused")


def test_a_cfg_patch_wraps_our_model(measured) -> None:
    assert relative(measured["rescale_cfg_vs_plain"]) > 0.01


def test_our_controlnet_steers_ksampler_with_strength_and_start_end(measured) -> None:
    assert relative(measured["controlnet_vs_engine"]) < TOLERANCE, measured["controlnet_vs_engine"]
    assert relative(measured["controlnet_vs_none"]) > 0.005


@pytest.mark.parametrize("variant", ["", "_core_lora", "_pack_lora"])
def test_under_low_vram_our_model_loads_partly_and_samples_as_when_whole(measured, variant: str) -> None:
    state = measured[f"lowvram{variant}_state"]
    assert state["lowvram"] and 0 < state["loaded"] < state["size"], state  # ComfyUI loaded it partly
    assert state["cast_layers"] > 0 and state["streamed"] > 0, state  # some layers cast their weights on use
    difference = measured[f"lowvram{variant}_vs_full"]
    assert relative(difference) < TOLERANCE, difference


def test_layers_the_packs_lora_merged_into_copies_do_not_inherit_comfyuis_loading_marks(measured) -> None:
    # The input model is loaded (every layer marked patched on the device by its patcher); the LoRA'd model's
    # layers are its own modules over shared storage (merged ones hold new weights), which its own patcher has not
    # loaded or patched yet: none carries the input's marks.
    assert measured["plain_layers_marked_loaded"] > 9
    assert measured["pack_lora_layers_marked_loaded"] == 0
