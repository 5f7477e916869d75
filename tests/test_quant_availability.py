"""Whether bitsandbytes is there and can run: the clear errors when it is missing, broken, too old, or has no
kernel for the device (never a silent fallback to unquantized weights), and the engine importing it only once
quantization is asked for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pixart_delta_core.quant
from pixart_delta_core.demo.random_weights import t5_weights
from pixart_delta_core.errors import QuantizationError
from pixart_delta_core.models.transformer import load_transformer
from pixart_delta_core.quant import bnb_layers
from pixart_delta_core.quant.quantization import Quantization
from pixart_delta_core.quant.streaming import quantized_ops
from pixart_delta_core.text.t5 import load_t5
from tests.helpers import MID_PIXART, PIXART_HINTS, ROOT, SMALL_T5, hide_bitsandbytes, random_transformer


@pytest.fixture(scope="module")
def small_t5_file(tmp_path_factory) -> Path:
    """The quantization tests' small T5 as one fp16 file."""
    path = tmp_path_factory.mktemp("t5") / "t5_fp16.safetensors"
    save_file({k: v.to(torch.float16) for k, v in t5_weights(SMALL_T5, seed=0).items()}, str(path))
    return path


# --- bitsandbytes missing or unable to run -------------------------------------------------------


def test_missing_bitsandbytes_is_a_clear_error_not_a_fallback(small_t5_file, monkeypatch) -> None:
    hide_bitsandbytes(monkeypatch, ModuleNotFoundError("No module named 'bitsandbytes'"))
    for load in (
        lambda: load_t5(small_t5_file, quantization="int8"),
        lambda: load_transformer(random_transformer(MID_PIXART).state_dict(), hints=PIXART_HINTS, quantization="nf4"),
    ):
        with pytest.raises(QuantizationError) as caught:
            load()
        message = str(caught.value)
        assert "bitsandbytes package, which is not installed" in message
        assert "pip install -U bitsandbytes" in message and "quantization 'none'" in message
    assert load_t5(small_t5_file, quantization="none") is not None  # unquantized needs no bitsandbytes


def test_a_broken_bitsandbytes_is_a_clear_error(monkeypatch) -> None:
    hide_bitsandbytes(monkeypatch, OSError("libcudart.so.12: cannot open shared object file"))
    with pytest.raises(QuantizationError, match=r"installed but does not load \(OSError: libcudart"):
        quantized_ops(Quantization.INT8, "cpu")


def test_a_bitsandbytes_too_old_for_the_layers_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pixart_delta_core.quant.bnb_layers", None)  # importing it fails as it would
    monkeypatch.delattr(pixart_delta_core.quant, "bnb_layers")  # with an old bitsandbytes (ImportError from inside)
    with pytest.raises(QuantizationError, match=r"bitsandbytes \S+ lacks what 4-bit \(NF4\) weights need"):
        quantized_ops(Quantization.NF4, "cpu")


@pytest.mark.parametrize("mode", [Quantization.INT8, Quantization.NF4], ids=lambda m: m.value)
def test_a_device_bitsandbytes_cannot_run_on_is_a_clear_error(monkeypatch, mode: Quantization) -> None:
    """As bitsandbytes answers for a device without its kernels."""

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("Could not run 'bitsandbytes::quantize' with arguments from the 'CPU' backend")

    monkeypatch.setattr(bnb_layers, "int8_vectorwise_quant", no_kernel)
    monkeypatch.setattr(bnb_layers, "quantize_4bit", no_kernel)
    expected = f"cannot run {mode.label} layers on cpu (NotImplementedError: Could not run"
    with pytest.raises(QuantizationError, match=re.escape(expected)):
        quantized_ops(mode, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(QuantizationError, match=re.escape("cannot run 8-bit (LLM.int8) layers on cuda")):
        quantized_ops(Quantization.INT8, "cuda")


# --- the engine stays light -------------------------------------------------------------------

PROBE = """
import builtins, importlib, pkgutil, sys
importers = set()
real_import = builtins.__import__
def watch(name, globals=None, *args, **kwargs):
    if name.split(".")[0] == "bitsandbytes":
        importers.add((globals or {}).get("__name__") or "?")
    return real_import(name, globals, *args, **kwargs)
def ours():
    return ",".join(sorted(n for n in importers if n.startswith("pixart_delta_core"))) or "-"
builtins.__import__ = watch
import pixart_delta_core
for name in ("checkpoints.loading", "text.t5", "text.encoder", "quant.streaming", "models.transformer",
             "models.controlnet", "sampling.samplers"):
    importlib.import_module("pixart_delta_core." + name)
print("bitsandbytes" in sys.modules)
for info in pkgutil.walk_packages(pixart_delta_core.__path__, "pixart_delta_core."):
    if info.name not in ("pixart_delta_core.__main__", "pixart_delta_core.quant.bnb_layers"):
        importlib.import_module(info.name)
print(ours())
import pixart_delta_core.quant.bnb_layers
print(ours())
"""


def test_importing_the_engine_does_not_import_bitsandbytes() -> None:
    """No engine module but bnb_layers (imported once quantization is asked for) imports bitsandbytes; loading
    and text encoding do not bring it in at all. (diffusers' AutoencoderKL, which the VAE imports, brings it
    in by itself when it is installed: diffusers registers its bitsandbytes quantizer on import.) The last line
    shows the probe sees an engine module that does import it."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "-", "pixart_delta_core.quant.bnb_layers"], out.stdout
