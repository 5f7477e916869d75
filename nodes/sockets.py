"""The pack's socket types and the objects that travel on them, shared by every node module.

A socket type is the name ComfyUI matches to connect an output to an input; saved workflows store
these names, so they never change. Each wrapper holds a loaded engine model, the handle ComfyUI's
model management moves it with (``host.ManagedModel``) and what a later node needs to know about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..pixart_delta_core.quant.quantization import Quantization
from . import comfy_model, host

if TYPE_CHECKING:  # the models load on first use, not when ComfyUI imports the pack
    from ..pixart_delta_core.models.controlnet import ControlNetTransformer
    from ..pixart_delta_core.models.lora_config import Lora
    from ..pixart_delta_core.models.transformer import PixArtTransformer
    from ..pixart_delta_core.text.encoder import TextEncoder

MODEL_TYPE = "PIXART_DELTA_MODEL"
T5_TYPE = "PIXART_DELTA_T5"
CONTROLNET_TYPE = "PIXART_DELTA_CONTROLNET"
CORE_MODEL_TYPE = "MODEL"
CORE_MODEL_TOOLTIP = (
    "The same transformer as ComfyUI's MODEL, for KSampler, SamplerCustomAdvanced, ModelSamplingDiscrete (lcm for "
    "the LCM), core LoRA loaders and guidance nodes. On a ComfyUI too old for it, the loader refuses to run while this "
    "output is connected (the log names what is missing)."
)


class PixArtModel:
    """A loaded PixArt transformer (the PIXART_DELTA_MODEL type), handed to ComfyUI's model management; in a
    ComfyUI with PixArt support its patcher is also the core MODEL (``comfy_model``) the loaders output."""

    def __init__(
        self,
        transformer: PixArtTransformer,
        managed: host.ManagedModel,
        name: str,
        quantization: Quantization = Quantization.NONE,
        loras: tuple[tuple[Lora, float], ...] = (),
        embedded: str | None = None,
    ) -> None:
        self.transformer = transformer
        self.managed = managed
        self.name = name
        self.quantization = quantization  # a ControlNet loaded for this model is quantized the same way
        self.loras = loras  # the LoRAs applied by LoRA loaders, with their strengths: a ControlNet may take them too
        # The pack's embedded transformer it is (demo.embedded_files.embedded_model), for the sampler's warnings;
        # None for another file, and once a LoRA changed it (an LCM-LoRA distils the teacher)
        self.embedded = embedded

    @property
    def core_model(self) -> object | None:
        """The core MODEL (a ModelPatcher) for KSampler and the nodes that patch a MODEL; None without one."""
        return self.managed.patcher if comfy_model.CORE_MODEL else None

    def __repr__(self) -> str:
        config, dtype = self.transformer.config.describe(), self.transformer.dtype
        return f"PixArtModel({self.name!r}: {config}, {dtype}, {self.quantization.label})"


class PixArtT5:
    """A loaded T5 encoder and its tokenizer (the PIXART_DELTA_T5 type), handed to ComfyUI's model management."""

    def __init__(
        self,
        encoder: TextEncoder,
        managed: host.ManagedModel,
        name: str,
        quantization: Quantization = Quantization.NONE,
    ) -> None:
        self.encoder = encoder
        self.managed = managed
        self.name = name
        self.quantization = quantization

    def __repr__(self) -> str:
        return f"PixArtT5({self.name!r}, width {self.encoder.width}, {self.encoder.dtype}, {self.quantization.label})"


class PixArtControlNet:
    """A loaded ControlNet-Transformer (the PIXART_DELTA_CONTROLNET type) and the model it was loaded for."""

    def __init__(self, controlnet: ControlNetTransformer, managed: host.ManagedModel, base: PixArtModel) -> None:
        self.controlnet = controlnet
        self.managed = managed
        self.base = base

    def __repr__(self) -> str:
        return f"PixArtControlNet({self.controlnet.config.describe()}, for {self.base.name!r})"
