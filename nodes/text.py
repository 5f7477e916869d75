"""The text node: prompts through T5 into ComfyUI CONDITIONING (written by ``conditioning.from_caption``)."""

from __future__ import annotations

from . import host
from .conditioning import from_caption
from .sockets import T5_TYPE, PixArtT5

MAX_TOKENS = 512  # T5's tokenizer limit; PixArt-α/δ read 120 tokens, PixArt-Σ 300


class T5TextEncode:
    """A prompt through T5, as PixArt reads it: lower-cased, tokenized, padded to the caption length, masked."""

    DESCRIPTION = (
        "Encodes a prompt with T5 the way the reference PixArt code does: lower-cased (optionally cleaned), "
        "truncated or padded to max_tokens, with the padding masked out. Use one for the positive prompt and, "
        "for guidance, optionally one for the negative."
    )
    CATEGORY = "PixArt-δ/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("T5 caption embeddings, with their mask under 'attention_mask'.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt."}),
                "t5": (T5_TYPE, {"tooltip": "The T5 encoder from PixArt-δ T5 Loader."}),
                "max_tokens": (
                    "INT",
                    {
                        "default": 120,
                        "min": 1,
                        "max": MAX_TOKENS,
                        "tooltip": "Caption length in T5 tokens: 120 for PixArt-α/δ, 300 for PixArt-Σ. Longer "
                        "prompts are cut (a warning says what was dropped).",
                    },
                ),
                "clean_caption": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Clean the prompt as the training captions were (drops URLs, HTML, @handles, "
                        "most punctuation runs...). Off: lower-cased and stripped only.",
                    },
                ),
            },
            "optional": {
                "low_memory": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Take T5 off the GPU as soon as the prompt is encoded, through ComfyUI's model "
                        "management, so the transformer has the memory to itself (the paper's low-memory recipe). "
                        "Off: ComfyUI moves it off only when another model needs the room.",
                    },
                ),
            },
        }

    def encode(
        self, text: str, t5: PixArtT5, max_tokens: int = 120, clean_caption: bool = False, low_memory: bool = False
    ) -> tuple[list]:
        host.load_models([t5.managed])
        caption = t5.encoder.encode([text], max_tokens, clean_caption)
        conditioning = from_caption(caption, host.intermediate_device())  # embeddings [1, L, C]
        if low_memory:
            host.unload([t5.managed])
        return (conditioning,)
