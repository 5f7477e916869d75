"""Command line: ``python -m pixart_delta_core {info,demo} ...``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import CheckpointError, PixArtDeltaError


def cmd_info(args: argparse.Namespace) -> int:
    from .loading import inspect_controlnet, inspect_transformer
    from .text import inspect_text_encoder
    from .vae import inspect_vae

    inspectors = (("PixArt transformer", inspect_transformer), ("PixArt ControlNet", inspect_controlnet))
    inspectors += (("T5 text encoder", inspect_text_encoder), ("VAE", inspect_vae))
    for path in args.files:
        detected, what = _first_that_reads(path, inspectors)
        source = detected.tensors
        dtypes = sorted({str(d).removeprefix("torch.") for d in source.dtypes.values()})
        print(f"{path}")
        print(f"  {what}, {detected.describe()}")
        print(f"  {len(source)} tensors, {source.nbytes() / 2**20:.1f} MiB as stored ({', '.join(dtypes)})")
    return 0


def _first_that_reads(path: Path, inspectors: tuple) -> tuple[object, str]:
    """The first inspector that recognises ``path``; else the first one's error (it says what the file is)."""
    first: CheckpointError | None = None
    for what, inspect in inspectors:
        try:
            return inspect(path), what
        except CheckpointError as err:
            first = first or err
    assert first is not None
    raise first


def cmd_demo(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .demo import demo_transformer

    model = demo_transformer()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo-transformer.safetensors"
        save_file(model.state_dict(), str(path))
        print("The built-in demo model is a tiny PixArt transformer with random weights, built in memory;")
        print("it was saved to a temporary file and detected back from its keys and shapes:")
        return cmd_info(argparse.Namespace(files=[path]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pixart_delta_core", description="PixArt-δ engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="say what a checkpoint (transformer or T5) is and its detected configuration")
    info.add_argument("files", nargs="+", type=Path, help="checkpoint files, diffusers or HF T5 folders")
    info.set_defaults(run=cmd_info)
    demo = sub.add_parser("demo", help="run the engine on its built-in demo model")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except PixArtDeltaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
