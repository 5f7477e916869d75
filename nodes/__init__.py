"""ComfyUI nodes: thin adapters over the engine in ``pixart_delta_core``.

Node ids and input names are part of saved workflows: never rename them.
"""

from .controlnet import ControlNetApply, ControlNetLoader
from .loaders import CheckpointLoader, LowMemoryLoader, T5Loader
from .lora import LoraLoader
from .resolution import Resolution
from .sampling import PixArtSampler
from .shapes import ShapesScene
from .text import T5TextEncode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "PixArtDeltaCheckpointLoader": CheckpointLoader,
    "PixArtDeltaT5Loader": T5Loader,
    "PixArtDelta8BitLoader": LowMemoryLoader,
    "PixArtDeltaT5TextEncode": T5TextEncode,
    "PixArtDeltaResolution": Resolution,
    "PixArtDeltaSampler": PixArtSampler,
    "PixArtDeltaControlNetLoader": ControlNetLoader,
    "PixArtDeltaControlNetApply": ControlNetApply,
    "PixArtDeltaLoraLoader": LoraLoader,
    "PixArtDeltaShapesScene": ShapesScene,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "PixArtDeltaCheckpointLoader": "PixArt-δ Checkpoint Loader",
    "PixArtDeltaT5Loader": "PixArt-δ T5 Loader",
    "PixArtDelta8BitLoader": "PixArt-δ Low-Memory Loader (8-bit T5)",
    "PixArtDeltaT5TextEncode": "PixArt-δ T5 Text Encode",
    "PixArtDeltaResolution": "PixArt-δ Resolution",
    "PixArtDeltaSampler": "PixArt-δ Sampler",
    "PixArtDeltaControlNetLoader": "PixArt-δ ControlNet Loader",
    "PixArtDeltaControlNetApply": "PixArt-δ Apply ControlNet",
    "PixArtDeltaLoraLoader": "PixArt-δ LoRA Loader",
    "PixArtDeltaShapesScene": "PixArt-δ Shapes Scene",
}
