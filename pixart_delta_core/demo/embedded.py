"""The embedded model: a small PixArt-δ trained here on the shapes world, shipped inside the pack.

Its files sit in ``pixart_delta_core/embedded_model/`` (the model card there says how each was made):
a TAESD-architecture autoencoder in ComfyUI's single-file layout, a tiny T5 encoder in the HF folder
layout with T5's own tokenizer, the PixArt-α-layout teacher, the LCM student distilled from it, and a
ControlNet-Transformer trained on the world's edge maps. ``write_t5`` makes the T5 encoder: random (it
is frozen during training, and the transformer learns from whatever features it gives), from a seed, but
for its relative-position bias, which keeps each head's attention within a window of neighbouring words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..errors import InputError
from ..text.t5_config import T5EncoderConfig
from .random_weights import t5_weights

FOLDER = Path(__file__).resolve().parent.parent / "embedded_model"
EMBEDDED_T5 = T5EncoderConfig(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
# Each head's window of relative positions (key word - query word): two look back, two look ahead. A random
# bias (N(0, 1) a bucket) spreads attention over the whole caption, so a word's features hardly say which
# shape it belongs to ("red" of the first shape or of the second); within a window, "circle" carries the
# "large red" before it and "left" the "circle at the top" before it.
T5_WINDOWS = ((-3, 0), (-6, 0), (0, 3), (0, 6))
OUTSIDE_WINDOW = -8.0  # the bias outside a head's window: attention there is e^-8 of that inside
POSITION_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # shared by all layers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE", "NOTICE")


def windowed_position_bias(config: T5EncoderConfig, windows: tuple[tuple[int, int], ...]) -> Tensor:
    """A T5 encoder's relative-attention bias table [buckets, heads] that keeps head h's attention on the words
    at relative positions windows[h] = (first, last) (key position - query position, ends included): 0 there,
    ``OUTSIDE_WINDOW`` elsewhere. Buckets are T5's own (bidirectional; transformers' ``T5Attention``).

    Raises InputError for a window count other than the head count, or a window reaching past T5's exact
    buckets (there one bucket holds several distances).
    """
    from transformers.models.t5.modeling_t5 import T5Attention

    buckets = config.relative_attention_num_buckets
    exact = buckets // 4  # bidirectional: half the buckets a direction, half of those one distance each
    if len(windows) != config.num_heads or any(max(-first, last) >= exact for first, last in windows):
        raise InputError(f"expected {config.num_heads} windows within +-{exact - 1} words, found {windows}")
    table = torch.full((buckets, config.num_heads), OUTSIDE_WINDOW)
    for head, (first, last) in enumerate(windows):
        distances = torch.arange(first, last + 1)
        table[
            T5Attention._relative_position_bucket(distances, True, buckets, config.relative_attention_max_distance),
            head,
        ] = 0.0
    return table


def write_t5(
    folder: Path,
    tokenizer: Path,
    seed: int = 0,
    config: T5EncoderConfig = EMBEDDED_T5,
    windows: tuple[tuple[int, int], ...] | None = T5_WINDOWS,
) -> Path:
    """A random T5-v1.1 encoder in the HF folder layout (config.json, model.safetensors in fp16) with the
    tokenizer files copied from ``tokenizer``; returns ``folder``. Its weights are random from ``seed``, but
    for its position bias: ``windowed_position_bias(config, windows)``, or random too where ``windows`` is None
    (the T5 of the embedded teacher's first three runs)."""
    from transformers import T5Config

    folder.mkdir(parents=True, exist_ok=True)
    weights = t5_weights(config, seed)
    if windows is not None:
        weights[POSITION_BIAS] = windowed_position_bias(config, windows)
    weights = {k: v.half().contiguous() for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf = T5Config(**config.transformers_kwargs(), architectures=["T5EncoderModel"], torch_dtype="float16")
    (folder / "config.json").write_text(json.dumps(hf.to_dict(), indent=1, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, folder / name)
    return folder


PICTURE = {"width": 128, "height": 128, "resolution_binning": False}  # what the models were trained at (no bins)
TRAINING_SCENES = 8000  # the world's scenes the models were trained on: seeds 0 .. 7999 (held-out prompts avoid them)
MODELS = {
    "shapes-teacher": "transformer/shapes-teacher.safetensors",
    "shapes-lcm": "transformer/shapes-lcm.safetensors",
    "shapes-controlnet": "controlnet/shapes-edges.safetensors",
    "shapes-taesd": "vae/shapes-taesd.safetensors",
    "shapes-t5": "text_encoders/shapes-t5",
}


# The sub-folders of FOLDER: what each holds, in words, and the command line's option that takes it.
KINDS = {"transformer": "transformer", "controlnet": "ControlNet", "vae": "VAE", "text_encoders": "T5 text encoder"}
OPTIONS = {"transformer": "--transformer", "controlnet": "--controlnet", "vae": "--vae", "text_encoders": "--t5"}


def embedded_path(name: str | Path) -> Path:
    """The file of an embedded model given by name (``shapes-lcm``...), or ``name`` itself as a path."""
    relative = MODELS.get(str(name))
    return FOLDER / relative if relative is not None else Path(name)


def by_name(value: str | Path, option: str | None = None) -> Path:
    """``value`` given to the command line's ``option`` (``--vae``...; None: a command taking every kind, as
    ``info``) as a path: the file of the embedded model of that name, else ``value`` itself.

    An embedded model is also taken by its file's name, with or without its extension (``shapes-edges``, as
    ComfyUI lists it), when no file of that name is here. Raises InputError for a bare name (no folder in it,
    no file here) that is no embedded model of a kind ``option`` takes: the error lists those it takes and, for
    another kind's model (given by its name or its file's), says how to give that model."""
    name = str(value)
    takes = [kind for kind, flag in OPTIONS.items() if option in (None, flag)]
    found = next((model for model in MODELS if name in _names(model)), None)
    kind = None if found is None else _kind(found)
    if found == name and kind in takes:
        return embedded_path(name)
    if Path(name).name != name or Path(name).exists():
        return Path(value)
    if found is not None and kind in takes:
        return embedded_path(found)
    said = [] if found == name else ["no such file or folder"]
    other_case = next((m for m in MODELS if _kind(m) in takes and name.lower() in {n.lower() for n in _names(m)}), None)
    if found is None and other_case is not None:  # names are case-sensitive, as files are on most systems
        said.append(f"did you mean {other_case}?")
    if found is not None:  # another kind's model: the option that takes it
        said.append(f"{name} is the pack's embedded {KINDS[kind]}: give it as {OPTIONS[kind]} {found}")
    listed = sorted(model for model in MODELS if _kind(model) in takes)
    several = len(listed) > 1
    what = "models" if len(takes) > 1 else KINDS[takes[0]] + ("s" if several else "")
    said.append(f"the pack's embedded {what} {'are:' if several else 'is'} {', '.join(listed)}")
    raise InputError(f"{f'{option} ' if option else ''}{name}: {'; '.join(said)}")


def _kind(model: str) -> str:
    """The sub-folder of ``FOLDER`` (a key of ``KINDS``) holding the embedded model ``model``."""
    return Path(MODELS[model]).parts[0]


def _names(model: str) -> set[str]:
    """The names a user may give an embedded model by: its own, its file's (as ComfyUI lists it), its file's stem."""
    relative = Path(MODELS[model])
    return {model, relative.name, relative.stem}
