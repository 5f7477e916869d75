"""8-bit and 4-bit loading and the low-memory mode through the nodes, called as ComfyUI calls them (no ComfyUI
installed): bitsandbytes layers from every loader, the ControlNet quantized like its model, the clear error when
bitsandbytes is missing or cannot run, and the models taken off their device after encoding and sampling."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from tests.comfy_helpers import BASE, CONTROL_COPIES, ENGINE, PACK, StandInVae, call_node
from tests.helpers import TINY_T5, TOKENIZER, hide_bitsandbytes

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = PACK.NODE_CLASS_MAPPINGS
host = PACK.nodes.host
QuantizationError = ENGINE.errors.QuantizationError
PIPELINE = "PixArt-LCM-XL-2-1024-MS"  # the diffusers folder: T5 with its own tokenizer, and the LCM transformer
LCM = "PixArt-LCM-XL-2-1024-MS.safetensors"
ALPHA = "PixArt-XL-2-1024-MS.pth"
CONTROLNET = "PixArt-XL-2-1024-ControlNet.pth"
SIZE = {"width": 128, "height": 96}
LAYER_KINDS = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}


def layers(module: nn.Module, kind: type) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, kind)]


def plain_linears(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if type(m) is nn.Linear]


def low_memory_loader(**widgets) -> tuple:
    return call_node(NODES["PixArtDelta8BitLoader"], **{"t5_name": PIPELINE, "ckpt_name": LCM, **widgets})


@pytest.fixture(scope="module")
def low(node_models):
    """The low-memory loader's defaults (int8 T5, full-precision LCM) and the same models unquantized."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(host.MODELS_ENV, str(node_models))
        t5, model, _ = low_memory_loader()
        full_t5 = call_node(NODES["PixArtDeltaT5Loader"], t5_name=PIPELINE, dtype="bf16")[0]
        full_model = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=LCM)[0]
    return {"t5": t5, "model": model, "full_t5": full_t5, "full_model": full_model}


# --- loading -----------------------------------------------------------------------------------------


def test_low_memory_loader_gives_an_int8_t5_and_a_full_precision_transformer(low) -> None:
    t5, model = low["t5"], low["model"]
    assert len(layers(t5.encoder.model, bnb.nn.Linear8bitLt)) == 7 * TINY_T5["num_layers"]  # q k v o wi_0 wi_1 wo
    assert not plain_linears(t5.encoder.model.encoder)
    assert t5.encoder.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.int8
    assert t5.encoder.dtype == torch.bfloat16  # the compute dtype: auto on the CPU
    assert not layers(model.transformer, bnb.nn.Linear8bitLt) and not layers(model.transformer, bnb.nn.Linear4bit)
    assert model.transformer.dtype == torch.float32  # none: the weight dtype ComfyUI picks (fp32 on the CPU)
    assert t5.quantization.value == "int8" and model.quantization.value == "none"
    assert "8-bit (LLM.int8)" in repr(t5) and "unquantized" in repr(model)
    assert t5.managed.load_device == t5.managed.offload_device == torch.device("cpu")


@pytest.mark.parametrize(("t5_mode", "model_mode"), [("nf4", "int8"), ("int8", "nf4")])
def test_low_memory_loader_quantizes_the_transformers_blocks_on_request(in_models, t5_mode, model_mode) -> None:
    t5, model, _ = low_memory_loader(t5_quantization=t5_mode, transformer_quantization=model_mode)
    assert len(layers(t5.encoder.model, LAYER_KINDS[t5_mode])) == 7 * TINY_T5["num_layers"]
    quantized = layers(model.transformer, LAYER_KINDS[model_mode])
    assert len(quantized) == 7 * BASE.depth  # qkv, proj, q_linear, kv_linear, proj, fc1, fc2 in every block
    assert all(name.startswith("blocks.") for name in quantized)
    assert {name.split(".")[0] for name in plain_linears(model.transformer)} >= {"t_block", "final_layer"}
    assert model.quantization.value == model_mode and t5.quantization.value == t5_mode


def test_low_memory_loader_takes_only_quantized_t5(in_models) -> None:
    spec = NODES["PixArtDelta8BitLoader"].INPUT_TYPES()["required"]
    assert spec["t5_quantization"][0] == ["int8", "nf4"] and spec["t5_quantization"][1]["default"] == "int8"
    assert spec["transformer_quantization"][0] == ["none", "int8", "nf4"]
    assert spec["transformer_quantization"][1]["default"] == "none"
    with pytest.raises(ENGINE.errors.InputError, match="use PixArt-δ T5 Loader for an unquantized T5"):
        NODES["PixArtDelta8BitLoader"]().load(PIPELINE, "none", LCM)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_t5_and_checkpoint_loaders_quantize_too(in_models, mode: str, monkeypatch) -> None:
    monkeypatch.setattr(host, "bundled_t5_tokenizer", lambda: TOKENIZER)
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name="t5xxl_fp16.safetensors", quantization=mode)
    assert len(layers(t5.encoder.model, LAYER_KINDS[mode])) == 7 * TINY_T5["num_layers"]
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=ALPHA, weight_dtype="bf16", quantization=mode)
    assert layers(model.transformer, LAYER_KINDS[mode]) and model.transformer.dtype == torch.bfloat16


def test_the_quantization_widgets_default_to_full_precision(in_models) -> None:
    """Added last and optional: saved workflows and API prompts without them load as before."""
    for node_id in ("PixArtDeltaT5Loader", "PixArtDeltaCheckpointLoader"):
        spec = NODES[node_id].INPUT_TYPES()
        assert next(iter(spec["optional"])) == "quantization"  # the checkpoint loader's detection hints follow it
        assert spec["optional"]["quantization"][0] == ["none", "int8", "nf4"]
        assert spec["optional"]["quantization"][1]["default"] == "none"
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=ALPHA)
    assert not layers(model.transformer, bnb.nn.Linear8bitLt) and model.quantization.value == "none"


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_the_controlnet_is_quantized_like_its_model(in_models, mode: str) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=CONTROLNET, quantization=mode)
    (net,) = call_node(NODES["PixArtDeltaControlNetLoader"], model=model, controlnet_name=CONTROLNET)
    quantized = layers(net.controlnet, bnb.nn.Linear8bitLt)
    assert len(quantized) == (7 * CONTROL_COPIES if mode == "int8" else 0)
    assert all(".copied_block." in name for name in quantized)
    assert net.controlnet.dtype == model.transformer.dtype


# --- quantized models at work ------------------------------------------------------------------------


def encode(t5, text: str, **widgets) -> list:
    return call_node(NODES["PixArtDeltaT5TextEncode"], text=text, t5=t5, **widgets)[0]


def sample(model, positive, **widgets) -> torch.Tensor:
    return call_node(NODES["PixArtDeltaSampler"], model=model, positive=positive, seed=5, **SIZE, **widgets)[0]


def test_int8_t5_encodes_close_to_bf16(low) -> None:
    ours, full = encode(low["t5"], "a red fox in the snow"), encode(low["full_t5"], "a red fox in the snow")
    mask = ours[0][1]["attention_mask"][0].bool()
    assert torch.equal(mask, full[0][1]["attention_mask"][0].bool())
    cosine = torch.nn.functional.cosine_similarity(ours[0][0][0, mask], full[0][0][0, mask], dim=-1)
    assert cosine.min() > 0.99, cosine  # measured 0.9987 on this random tiny T5; the engine bounds larger ones


def test_an_int8_transformer_samples_close_to_full_precision(low, in_models) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=LCM, quantization="int8")
    positive = encode(low["full_t5"], "a red fox")
    ours, full = sample(model, positive)["samples"], sample(low["full_model"], positive)["samples"]
    assert ours.shape == full.shape == (1, 4, 12, 16) and torch.isfinite(ours).all()
    error = (ours - full).norm() / full.norm()
    assert error < 0.05, error  # measured 0.007 on these random weights (NF4: 0.08)


# --- bitsandbytes missing or unable to run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "widgets"),
    [
        ("PixArtDelta8BitLoader", {"t5_name": PIPELINE, "ckpt_name": LCM}),
        ("PixArtDeltaT5Loader", {"t5_name": PIPELINE, "quantization": "nf4"}),
        ("PixArtDeltaCheckpointLoader", {"ckpt_name": LCM, "quantization": "int8"}),
    ],
)
def test_missing_bitsandbytes_is_the_engines_clear_error(in_models, monkeypatch, node_id: str, widgets: dict) -> None:
    hide_bitsandbytes(monkeypatch)
    with pytest.raises(QuantizationError) as caught:
        call_node(NODES[node_id], **widgets)
    message = str(caught.value)
    assert "need the bitsandbytes package, which is not installed" in message
    assert "pip install -U bitsandbytes" in message and "quantization 'none'" in message


def test_without_bitsandbytes_full_precision_still_loads(in_models, monkeypatch) -> None:
    hide_bitsandbytes(monkeypatch)
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=LCM)
    assert model.quantization.value == "none"


def test_a_device_bitsandbytes_cannot_run_on_is_the_engines_clear_error(in_models, monkeypatch) -> None:
    bnb_layers = importlib.import_module(f"{ENGINE.__name__}.quant.bnb_layers")

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("Could not run 'bitsandbytes::int8_vectorwise_quant' with the 'CPU' backend")

    monkeypatch.setattr(bnb_layers, "int8_vectorwise_quant", no_kernel)
    with pytest.raises(QuantizationError, match=r"cannot run 8-bit \(LLM\.int8\) layers on cpu \(NotImplementedError"):
        low_memory_loader()


# --- low-memory mode ---------------------------------------------------------------------------------


@pytest.fixture
def unloads(monkeypatch) -> list[list]:
    """What the nodes ask the host bridge to unload, call by call (the models stay where they are)."""
    calls: list[list] = []
    monkeypatch.setattr(host, "unload", lambda models: calls.append(list(models)))
    return calls


def test_encode_in_low_memory_mode_unloads_t5_after_encoding(low, unloads) -> None:
    plain = encode(low["t5"], "a cat")
    assert unloads == []
    lean = encode(low["t5"], "a cat", low_memory=True)
    assert unloads == [[low["t5"].managed]]
    assert torch.equal(plain[0][0], lean[0][0])


def test_sampler_in_low_memory_mode_unloads_the_transformer_after_sampling(low, unloads) -> None:
    positive = encode(low["t5"], "a cat")
    plain = sample(low["model"], positive)
    assert unloads == []
    lean = sample(low["model"], positive, low_memory=True)
    assert unloads == [[low["model"].managed]]
    assert torch.equal(plain["samples"], lean["samples"])


def test_sampler_in_low_memory_mode_unloads_the_controlnet_too(in_models, low, unloads) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=LCM)
    (net,) = call_node(NODES["PixArtDeltaControlNetLoader"], model=model, controlnet_name=CONTROLNET)
    edges = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    positive = encode(low["t5"], "a cat")
    positive, _ = call_node(
        NODES["PixArtDeltaControlNetApply"], positive=positive, controlnet=net, image=edges, vae=StandInVae()
    )
    sample(model, positive, low_memory=True)
    assert unloads == [[model.managed, net.managed]]


def test_a_cancelled_sampler_in_low_memory_mode_still_unloads(low, unloads, monkeypatch) -> None:
    class CancelledAtStepTwo(host.Progress):
        def on_step(self, done: int, total: int, latents: torch.Tensor) -> None:
            if done == 2:
                raise host.Interrupted("cancelled by the user")

    monkeypatch.setattr(host, "Progress", CancelledAtStepTwo)
    with pytest.raises(host.Interrupted):
        sample(low["model"], encode(low["t5"], "a cat"), low_memory=True)
    assert unloads == [[low["model"].managed]]


# --- the host bridge's unloading -----------------------------------------------------------------------


def test_outside_comfyui_unload_moves_models_to_the_cpu_and_back(monkeypatch) -> None:
    """A model computing on another device goes to the CPU and comes back for its next use ("meta" stands in
    for a GPU here); the C heap's free pages are returned to the system after each unload."""
    trims = []
    monkeypatch.setattr(host, "return_free_heap", lambda: trims.append(1))
    on_cpu = host.ManagedModel(nn.Linear(4, 4), torch.device("cpu"), torch.device("cpu"))
    elsewhere = host.ManagedModel(nn.Linear(4, 4), torch.device("meta"), torch.device("meta"))
    host.unload([on_cpu, elsewhere])
    assert not on_cpu.offloaded and elsewhere.offloaded and trims == [1]
    assert elsewhere.model.weight.device.type == "cpu"
    host.load_models([on_cpu, elsewhere])
    assert elsewhere.model.weight.device.type == "meta" and not elsewhere.offloaded
    assert on_cpu.model.weight.device.type == "cpu"


def test_in_comfyui_unload_asks_model_management_to_free_exactly_these(monkeypatch) -> None:
    """ComfyUI's ``free_memory`` on the models' device, keeping every other loaded model (a stand-in registry:
    the real one is exercised by tests/test_comfyui_real.py, whose server log shows what was unloaded)."""
    calls = []
    ours, other, elsewhere = (SimpleNamespace(name=n) for n in ("ours", "other", "elsewhere"))
    registry = [SimpleNamespace(model=p) for p in (other, ours, elsewhere)]

    def free_memory(memory_required, device, keep_loaded=()):
        calls.append((memory_required, device, [entry.model.name for entry in keep_loaded]))
        return [registry[1]]

    monkeypatch.setattr(host, "IN_COMFYUI", True)
    monkeypatch.setattr(
        host, "mm", SimpleNamespace(current_loaded_models=registry, free_memory=free_memory), raising=False
    )
    managed = SimpleNamespace(model=nn.Linear(2, 2), patcher=ours, load_device=torch.device("cuda", 0))
    host.unload([managed])
    ((memory_required, device, kept),) = calls
    assert memory_required >= 1e30 and device == torch.device("cuda", 0) and kept == ["other", "elsewhere"]


def test_the_low_memory_example_chain_runs_through_the_nodes(in_models, monkeypatch) -> None:
    """The example workflow's chain outside ComfyUI, from the single T5 file it names: the low-memory loader,
    encode and sampler in low-memory mode, the latent decoded (the workflow's tiled decode is core's)."""
    monkeypatch.setattr(host, "bundled_t5_tokenizer", lambda: TOKENIZER)
    t5, model, _ = low_memory_loader(t5_name="t5xxl_fp16.safetensors")
    positive = encode(t5, "a red fox", low_memory=True)
    latent = sample(model, positive, steps=4, sampler="lcm", low_memory=True)
    images = StandInVae().decode(latent["samples"])
    assert images.shape == (1, 96, 128, 3) and torch.isfinite(images).all()
