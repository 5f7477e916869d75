"""Command line: ``python -m pixart_delta_core {generate,info,demo,train} ...``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError, PixArtDeltaError

log = logging.getLogger(__name__)


def cmd_info(args: argparse.Namespace) -> int:
    from .models.controlnet import inspect_controlnet
    from .models.transformer import inspect_transformer
    from .text.encoder import inspect_text_encoder
    from .vae.autoencoder import inspect_vae

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


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline.generation import Control, PixArtPipeline

    if args.control_image is not None and args.controlnet is None:
        log.info("no --controlnet given: its weights are read from --transformer (a reference ControlNet file)")
    pipeline = PixArtPipeline(
        args.transformer,
        args.t5,
        args.vae,
        tokenizer=args.tokenizer,
        controlnet=args.controlnet,
        device=args.device,
        dtype=args.dtype,
        t5_dtype=args.t5_dtype,
        low_memory=args.low_memory,
        t5_quantization=None if args.t5_quantization == "auto" else args.t5_quantization,
        quantization=args.quantization,
    )
    control = None
    if args.control_image is not None:
        control = Control(args.control_image, args.control_strength, args.control_start, args.control_end)
    with _progress() as on_step:
        result = pipeline(
            args.prompt,
            negative_prompt=args.negative_prompt,
            width=args.width,
            height=args.height,
            resolution_binning=not args.no_binning,
            sampler=args.sampler,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            images_per_prompt=args.batch,
            lcm_timesteps=args.lcm_timesteps,
            init_image=args.init_image,
            strength=args.strength,
            control=control,
            clean_caption=args.clean_caption,
            on_step=on_step,
            on_stage=_announce_stage,
        )
    for path, image in zip(_outputs(args.out, len(result.images)), result.images, strict=True):
        image.save(path)
        print(f"wrote {path} ({image.width}x{image.height}, generated at {result.size[1]}x{result.size[0]})")
    return 0


_STAGES = {
    "text": "encoding the prompts with T5",
    "images": "encoding the init/control image with the VAE",
    "denoise": "denoising with the transformer",
    "decode": "decoding with the VAE",
}


def _announce_stage(name: str) -> None:
    if name in _STAGES:
        print(f"{_STAGES[name]}...", file=sys.stderr, flush=True)


@contextmanager
def _progress():
    """A progress bar over the denoising steps, as an ``on_step`` callback."""
    from tqdm import tqdm

    bar = None

    def on_step(done: int, total: int, latents: object) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="denoising", unit="step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            bar = None

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.close()


def _outputs(out: Path, count: int) -> list[Path]:
    """``x.png`` for one image; ``x-0.png``, ``x-1.png``... for several."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.files import write_demo_models

    print("The demo models are tiny and random, built in memory (no weights can be downloaded): the image")
    print("is noise by design. They are saved as users hold real ones, then loaded and run by the same code.")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_demo_models(Path(tmp))
        cmd_info(argparse.Namespace(files=[files.transformer, files.t5, files.vae]))
        demo_args = [*("--transformer", str(files.transformer), "--t5", str(files.t5), "--vae", str(files.vae))]
        demo_args += ["--tokenizer", str(files.tokenizer), "--prompt", args.prompt, "--out", str(args.out)]
        demo_args += ["--width", "512", "--height", "512", "--no-binning", "--steps", "4", "--seed", "0"]
        return cmd_generate(build_parser().parse_args(["generate", *demo_args]))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from .sampling.samplers import Sampler

    gen = sub.add_parser("generate", help="text (and optionally an init or control image) to images")
    files = gen.add_argument_group("model files (any layout the engine reads)")
    files.add_argument("--transformer", type=Path, required=True, help="PixArt transformer file or diffusers folder")
    files.add_argument("--t5", type=Path, required=True, help="T5 encoder: single file or HF/diffusers folder")
    files.add_argument("--vae", type=Path, required=True, help="VAE: LDM single file or diffusers folder")
    files.add_argument("--tokenizer", type=Path, help="T5 tokenizer folder (default: beside --t5)")
    files.add_argument("--controlnet", type=Path, help="ControlNet file (default: --transformer's, if it has one)")
    gen.add_argument("--prompt", required=True, action="append", help="the prompt; repeat for several")
    gen.add_argument("--negative-prompt", help="used with guidance > 1 (default: the learned null caption)")
    gen.add_argument("--out", type=Path, default=Path("outputs/pixart.png"), help="output PNG (x-N.png for several)")
    size = gen.add_argument_group("size")
    size.add_argument("--width", type=_positive, help="pixels (default: the model's training resolution)")
    size.add_argument("--height", type=_positive, help="pixels (default: the model's training resolution)")
    size.add_argument("--no-binning", action="store_true", help="generate at exactly this size, not the nearest bin")
    run = gen.add_argument_group("sampling")
    run.add_argument("--sampler", default="lcm", choices=[s.value for s in Sampler])
    run.add_argument("--steps", type=int, help="default: the sampler's reference setting (LCM 4, DPM-Solver++ 14)")
    run.add_argument("--guidance", type=float, help="CFG scale, on above 1 (default: LCM 0, others 4.5)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch", type=_positive, default=1, help="images per prompt")
    run.add_argument("--lcm-timesteps", default="reference", choices=["reference", "diffusers"])
    run.add_argument("--clean-caption", action="store_true", help="clean prompts as the reference's training did")
    run.add_argument("--init-image", type=Path, help="img2img: start from this image")
    run.add_argument("--strength", type=float, default=1.0, help="img2img denoise in (0, 1]")
    ctl = gen.add_argument_group("ControlNet-Transformer")
    ctl.add_argument("--control-image", type=Path, help="edge map (HED) steering the generation")
    ctl.add_argument("--control-strength", type=float, default=1.0)
    ctl.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where control starts")
    ctl.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where control ends")
    dev = gen.add_argument_group("devices and memory")
    dev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    dev.add_argument("--dtype", default="auto", help="transformer/VAE dtype: auto, fp32, fp16, bf16")
    dev.add_argument(
        "--t5-dtype", default="auto", help="T5 dtype: auto (bf16: T5-XXL is 9.5 GB in it), fp32, fp16, bf16"
    )
    dev.add_argument("--low-memory", action="store_true", help="one model in memory at a time, tiled VAE decode")
    dev.add_argument(
        "--t5-quantization",
        default="auto",
        choices=["auto", "none", "int8", "nf4"],
        help="T5 weights in 8 or 4 bits (bitsandbytes); auto: int8 with --low-memory, else none",
    )
    dev.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"], help="transformer weights")
    gen.set_defaults(run=cmd_generate)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, found {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pixart_delta_core", description="PixArt-δ engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="say what a checkpoint (transformer or T5) is and its detected configuration")
    info.add_argument("files", nargs="+", type=Path, help="checkpoint files, diffusers or HF T5 folders")
    info.set_defaults(run=cmd_info)
    demo = sub.add_parser("demo", help="generate an image with the built-in (tiny, random) demo models")
    demo.add_argument("--prompt", default="a red fox in the snow, watercolour")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo.png"))
    demo.set_defaults(run=cmd_demo)
    _add_generate(sub)
    from .training.cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except PixArtDeltaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
