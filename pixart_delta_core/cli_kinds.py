"""What kind of model file a path is, for the command line: the kinds ``info`` tells, in the order it tries them,
and ``generate``'s refusal of a model given as a --lora (which would otherwise list every tensor as unmatched)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import CheckpointError, InputError, give_as

# generate's option for each kind of model file, by the pipeline's argument that takes it (errors.GIVEN_AS's keys).
OPTIONS = {
    "transformer": "--transformer",
    "controlnet": "--controlnet",
    "t5": "--t5",
    "vae": "--vae",
    "loras": "--lora",
}
# Where generate takes each kind, for a file given where another kind was expected (a LoRA as --vae).
INSTEAD = {kind: f"give it as {option}" for kind, option in OPTIONS.items()}


def inspectors_of_kinds() -> tuple[tuple[str, Callable, str], ...]:
    """The kinds of file ``info`` tells, in the order it tries them: (kind in words, inspector, the pipeline's
    argument that takes it: a key of ``OPTIONS``)."""
    from .models.controlnet import inspect_controlnet
    from .models.lora import inspect_lora
    from .models.transformer import inspect_transformer
    from .text.t5 import inspect_t5
    from .vae.autoencoder import inspect_vae

    return (
        ("PixArt transformer", inspect_transformer, "transformer"),
        ("PixArt ControlNet", inspect_controlnet, "controlnet"),
        ("T5 text encoder", inspect_t5, "t5"),
        ("VAE", inspect_vae, "vae"),
        ("PixArt LoRA", inspect_lora, "loras"),
    )


def first_that_reads(path: Path, inspectors: tuple) -> tuple[object, str]:
    """The first inspector that recognises ``path``; else the first one's error (it says what the file is)."""
    first: CheckpointError | None = None
    for what, inspect, *_ in inspectors:
        try:
            return inspect(path), what
        except CheckpointError as err:
            first = first or err
    assert first is not None
    raise first


def check_is_lora(path: Path, given: str = "--lora", instead: Mapping[str, str] | None = None) -> None:
    """Refuse a LoRA file ``path`` none of whose tensors is an adapter's that ``info`` reads as a model, saying which:
    a LoRA's own read would list every tensor of it as landing on no module. ``given``: what the file was given as,
    leading the error (generate's ``--lora``, a node's widget); ``instead``: where to give each kind of model (by
    the pipeline's argument that takes it, as ``INSTEAD``) instead, in words (default: ``INSTEAD``, generate's)."""
    from .models.lora_config import holds_adapters

    if holds_adapters(path):
        return
    models = inspectors_of_kinds()[:-1]
    try:
        detected, what = first_that_reads(path, models)
    except CheckpointError:  # no model either: reading it as a LoRA says what is wrong
        return
    kind = next(kind for words, _, kind in models if words == what)
    raise InputError(
        f"{given} {path}: expected a LoRA, found no adapter tensor in it: it is a {what} ({detected.describe()}); "
        f"{give_as(kind, instead or INSTEAD)}"
    )
