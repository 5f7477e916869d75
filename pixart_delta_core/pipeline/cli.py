"""The ``generate`` subcommand's arguments: its parser, the ``--lora`` type and the checks of its sampling options
(``cli`` runs the command).

Building the parser imports no torch: the samplers' names and reference settings come from ``sampling.choices``, the
strengths' bounds from ``models.strengths``, and the LoRA reading loads when a ``--lora`` is given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_types import nonempty, number_in, whole_number
from ..errors import InputError
from ..file_kinds import exists
from ..models.strengths import MAX_CONTROL_STRENGTH, MAX_STRENGTH
from ..sampling.choices import MAX_GUIDANCE, MAX_SEED, SAMPLERS, LcmTimesteps, Sampler

if TYPE_CHECKING:
    from ..models.transformer_config import TransformerConfig
    from .generation import Control, Generation, PixArtPipeline
    from .outputs import RunRecord
    from .resolution import Size

SEED = whole_number(least=0, most=MAX_SEED)  # a --seed's type: the generator's range, refused naming it
DEFAULT_INIT_STRENGTH = 0.75  # --strength with an --init-image and none given: the demo_image_to_image workflow's
DTYPES = ("auto", "fp32", "fp16", "bf16")  # devices.DTYPES' names (a test says so), and auto
DEFAULT_OUT = Path("outputs/pixart.png")  # --out not given: its first free name (outputs.free_output)
LATENT_PIXEL = 8  # pixels per latent pixel, the SD and SDXL VAEs' downscale (vae_config's: a test says so)
MODEL = nonempty("a file or folder")  # the model options' type: the text as typed ("./shapes-lcm" is a path)
IMAGE = nonempty("an image file", Path)


def per_sampler(setting: str) -> str:
    """Each sampler's reference ``setting`` (a ``SamplerSpec`` field), for the help: "lcm 4, sa_solver/ddim 25"."""
    samplers: dict[float, list[str]] = {}
    for sampler, spec in SAMPLERS.items():
        samplers.setdefault(getattr(spec, setting), []).append(sampler.value)
    return ", ".join(f"{'/'.join(names)} {value:g}" for value, names in samplers.items())


def check_sampling(args: argparse.Namespace, default: str) -> None:
    """``generate``'s sampling options, checked before any model loads, each error naming the option: --lcm-timesteps
    with another sampler, --steps beyond the sampler's, an init image's --strength that runs none of the --steps, a
    control window that holds no step of the run. ``default``:
    the sampler that runs when no --sampler is given (the transformer's own), which --lcm-timesteps does not change."""
    from ..sampling.samplers import SamplingSettings, check_control_window  # torch: run time, not the parser's

    sampler = args.sampler or default
    found = f"--sampler {sampler}" if args.sampler else f"{sampler} (this model's sampler when no --sampler is given)"
    if args.lcm_timesteps is not None and sampler != Sampler.LCM.value:
        raise InputError(
            f"--lcm-timesteps {args.lcm_timesteps} is for --sampler lcm only, found {found}: "
            f"{'drop it' if args.sampler else 'give --sampler lcm, or drop it'}"
        )
    most = SAMPLERS[Sampler(sampler)].max_steps
    if args.steps is not None and args.steps > most:
        raise InputError(f"--steps {args.steps}: {found} takes 1 to {most} steps")
    strength = (DEFAULT_INIT_STRENGTH if args.strength is None else args.strength) if args.init_image else 1.0
    given = {"steps": args.steps} if args.steps is not None else {}
    try:
        run = SamplingSettings.defaults(sampler, strength=strength, **given).steps_run
    except InputError:  # the steps (above) and the strength (its type) are each in range: together they run none
        steps = SAMPLERS[Sampler(sampler)].steps if args.steps is None else args.steps
        said = f"--strength {strength:g}" if args.strength is not None else f"--strength {strength:g} (its default)"
        said += f" with --steps {steps}" if args.steps is not None else f" with {sampler}'s {steps} steps (no --steps)"
        raise InputError(
            f"{said} runs no step: the init image is noised to run the last int(steps x strength) = "
            f"int({steps} x {strength:g}) = 0 steps; give --strength {math.ceil(100 / steps) / 100:g} or more, or "
            f"more --steps"
        ) from None
    if args.control_image is not None:
        check_control_window(args.control_start, args.control_end, run, ("--control-start", "--control-end"))


def check_texts_and_seed(args: argparse.Namespace) -> None:
    """``generate``'s prompts, negative prompts (once, or once per prompt) and seed, refused now as the run would
    refuse them (a lone surrogate
    from a mis-decoded argument; a seed beyond 2^64 - 1), before any warning."""
    from .arguments import check_prompts, check_seed

    check_prompts(args.prompt)
    if args.negative_prompt is not None:
        given, prompts = len(args.negative_prompt), len(args.prompt)
        if given not in (1, prompts):
            raise InputError(
                f"--negative-prompt given {given} times for {prompts} --prompt: expected once (for every prompt) or "
                f"once per --prompt, in order"
            )
        check_prompts(args.negative_prompt, "negative prompt")
    check_seed(args.seed)


def check_size(args: argparse.Namespace, init_size: Size | None, config: TransformerConfig) -> None:
    """The size ``generate`` will draw, refused now as the pipeline would refuse it (``check_size_to_draw``), before
    any model loads and any warning, naming the options it came from: --width and --height (the model's training
    resolution for a side not given), else the --init-image's size (``init_size``, from its header); --batch too for
    a batch beyond memory. ``config``: the transformer's, read from its header, whose resolution sets the bins."""
    from .arguments import check_batch, check_size_to_draw
    from .images import asked_size, init_sets_size
    from .resolution import bins_for

    asked = asked_size(args.height, args.width, (config.resolution, config.resolution), init_size)
    bins = None if args.no_binning else bins_for(config)
    pictures = len(args.prompt) * args.batch
    if init_sets_size(args.height, args.width, init_size):
        source = f"--init-image {args.init_image} is {asked[1]}x{asked[0]} px (width x height)"
        check_size_to_draw(asked, bins, pictures, source)
        return
    given = (("width", args.width), ("height", args.height))
    sides = [f"--{side} {value}" for side, value in given if value is not None]
    try:
        size = check_size_to_draw(asked, bins, 1, "")
    except InputError as err:
        if not sides:  # the training resolution itself: no option to name
            raise
        raise InputError(f"{' '.join(sides)}: {err}") from None
    try:
        check_batch(pictures, *size)
    except InputError as err:
        batch = f"--batch {args.batch}" + (f" for {len(args.prompt)} prompts" if len(args.prompt) > 1 else "")
        raise InputError(f"{' '.join([*sides, batch])}: {err}") from None


def detection_hints(args: argparse.Namespace) -> dict[str, int]:
    """Detection hints given on the command line (diffusers' config names)."""
    hints = {"num_heads": args.heads, "caption_length": args.caption_length, "sample_size": args.sample_size}
    if args.training_resolution is not None:
        from ..models.transformer_config import sample_size_for

        hints["sample_size"] = sample_size_for(args.training_resolution)
    return {k: v for k, v in hints.items() if v is not None}


def run_record(
    args: argparse.Namespace,
    negatives: str | list[str] | None,
    result: Generation,
    pipeline: PixArtPipeline,
    control: Control | None,
) -> RunRecord:
    """What ``generate`` writes in each PNG's ``parameters`` chunk: its settings (the sampler's defaults filled in),
    the model files by name, and the settings that changed the picture where not at their defaults
    (``picture_settings``: the init image's strength, the LCM timesteps, caption cleaning, the LoRAs, the control
    image and the ControlNet's window, quantization)."""
    from .outputs import RunRecord, picture_settings

    models = {"Model": args.transformer.name, "T5": args.t5.name, "VAE": args.vae.name}
    if control is not None:
        models["ControlNet"] = (args.controlnet or args.transformer).name
    settings = picture_settings(
        strength=result.settings.strength,
        lcm_timesteps=args.lcm_timesteps,
        clean_caption=args.clean_caption,
        loras=[(Path(path).name, strength) for path, strength in args.lora],
        lora_controlnet=args.lora_controlnet,
        control=None if control is None else (args.control_image.name, control.strength, control.start, control.end),
        quantization=pipeline.quantization.value,
        t5_quantization=pipeline.t5_quantization.value,
    )
    first = result.images[0]
    size = (first.height, first.width)
    steps, guidance = result.settings.steps, result.settings.guidance
    return RunRecord(args.prompt, negatives, args.seed, steps, args.sampler, guidance, size, models, settings)


def lora_spec(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:STRENGTH`` -> (path, strength). The text after the last colon is a strength unless the
    whole text names a file that exists or that text holds a path separator (``C:\\loras\\x.safetensors``)."""
    from ..models.lora import check_strength  # torch: imported when a --lora is given, not at start-up

    path, colon, tail = nonempty("a LoRA file or folder")(text).rpartition(":")
    try:
        named_file = exists(Path(text))
    except InputError as err:  # argparse reports only its own error type in one line
        raise argparse.ArgumentTypeError(str(err)) from None
    if not colon or "/" in tail or "\\" in tail or named_file:
        return Path(text), 1.0
    try:
        if "_" in tail:  # float() reads 1_0 as 10: a typo, not a strength
            raise ValueError(tail)
        strength = check_strength(float(tail))
    except (ValueError, InputError) as err:
        raise argparse.ArgumentTypeError(
            f"{text}: the strength after the last colon should be a number from {-MAX_STRENGTH:g} to "
            f"{MAX_STRENGTH:g}, found {tail!r} (and {text} is no file)"
        ) from err
    if not path:  # ":0.5": Path("") would be the current folder
        raise argparse.ArgumentTypeError(f"{text}: expected a LoRA file or folder before the strength, found nothing")
    return Path(path), strength


def add_generate_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, embedded: Callable[[str], list[str]]
) -> argparse.ArgumentParser:
    """Add ``generate`` and its options to ``sub``; its ``run`` is for the caller to set (``cli.cmd_generate``).

    ``embedded(option)``: the names of the pack's embedded models that ``option`` (``--vae``...) takes, for the help
    (``demo.embedded_files.names_for``: demo sits above the pipeline, so the caller hands them down)."""
    pixels = whole_number("pixels")

    def or_embedded(option: str) -> str:
        return f", or the embedded {' or '.join(embedded(option))}"

    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="text (and optionally an init or control image) to images",
        description="Text (and optionally an init or control image) to images. Every file, the output and the "
        "device are checked before any model loads.",
    )
    # The options that take an embedded model's name keep the text as typed, not a Path: "./shapes-lcm" is a path,
    # "shapes-lcm" the embedded model (the caller's by_name makes each a path).
    files = gen.add_argument_group("model files (any layout the engine reads)")
    files.add_argument(
        "--transformer",
        type=MODEL,
        required=True,
        help=f"PixArt transformer file or diffusers folder{or_embedded('--transformer')}",
    )
    files.add_argument(
        "--t5", type=MODEL, required=True, help=f"T5 encoder: single file or HF/diffusers folder{or_embedded('--t5')}"
    )
    files.add_argument(
        "--vae",
        type=MODEL,
        required=True,
        help="VAE: LDM single file or diffusers folder; TAESD: ComfyUI's file, the taesd_encoder and taesd_decoder "
        f"files or diffusers folder{or_embedded('--vae')}",
    )
    files.add_argument(
        "--tokenizer", type=nonempty("a folder", Path), help="T5 tokenizer folder (default: beside --t5)"
    )
    files.add_argument(
        "--controlnet",
        type=MODEL,
        help=f"ControlNet file (default: --transformer's, if it has one){or_embedded('--controlnet')}",
    )
    gen.add_argument("--prompt", required=True, action="append", help="the prompt; repeat for several")
    gen.add_argument(
        "--negative-prompt",
        action="append",
        help="acts only with guidance > 1, which is for a guided sampler (dpm_solver++...) on a model that is not "
        "distilled: a distilled LCM model runs unguided, guidance 0 or 1 (default: the learned null caption); once "
        "for every prompt, or once per --prompt, in order",
    )
    gen.add_argument(
        "--out",
        type=nonempty("an image file name", Path),
        help="output image (.png carries the generation parameters); several: x-p<prompt>-<n>.png, both counted "
        "from 1. A file already at a given --out is replaced, and the run says so (default: "
        f"{DEFAULT_OUT}, else the first free of {DEFAULT_OUT.stem}-1{DEFAULT_OUT.suffix}, "
        f"{DEFAULT_OUT.stem}-2{DEFAULT_OUT.suffix}...: a run without --out replaces no earlier picture)",
    )
    size = gen.add_argument_group("size")
    default = "default: the init image's with --init-image (to the nearest multiple of 16), else the model's "
    default += "training resolution"
    size.add_argument("--width", type=pixels, help=f"pixels ({default})")
    size.add_argument("--height", type=pixels, help=f"pixels ({default})")
    size.add_argument("--no-binning", action="store_true", help="generate at exactly this size, not the nearest bin")
    run = gen.add_argument_group("sampling")
    run.add_argument(
        "--sampler",
        choices=[s.value for s in Sampler],
        help="the denoising sampler (default: lcm, PixArt-δ's; dpm_solver++ for shapes-teacher, which is not "
        "distilled)",
    )
    run.add_argument(
        "--steps",
        type=whole_number("steps"),
        help=f"default: the sampler's reference setting ({per_sampler('steps')}); at most {per_sampler('max_steps')}",
    )
    run.add_argument(
        "--guidance",
        type=number_in(0.0, MAX_GUIDANCE),
        help=f"CFG scale, on above 1 (default: the sampler's reference setting: {per_sampler('guidance')})",
    )
    run.add_argument("--seed", type=SEED, default=0, help="noise seed (default: %(default)s)")
    run.add_argument("--batch", type=whole_number("images"), default=1, help="images per prompt (default: %(default)s)")
    run.add_argument(
        "--lcm-timesteps",
        choices=[t.value for t in LcmTimesteps],
        help="the timesteps --sampler lcm visits: the reference's (default) or diffusers' LCMScheduler's",
    )
    run.add_argument("--clean-caption", action="store_true", help="clean prompts as the reference's training did")
    run.add_argument(
        "--init-image",
        type=IMAGE,
        help="img2img: start from this image; one of another aspect ratio than the picture is scaled to cover it "
        "and centre-cropped, with a warning. Read upright (EXIF orientation), deep grey scaled to 8 bits, "
        "transparency onto black (as for --control-image)",
    )
    run.add_argument(
        "--strength",
        type=number_in(0.0, 1.0, low_open=True),
        help="image-to-image denoise in (0, 1]: the share of the steps run from the noised init image (default "
        f"with --init-image: {DEFAULT_INIT_STRENGTH:g}; 1 starts from pure noise, the init image then sets only the "
        "size)",
    )
    lora = gen.add_argument_group("LoRA")
    lora.add_argument(
        "--lora",
        type=lora_spec,
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="apply a LoRA (any layout: PEFT, kohya, OneTrainer, ComfyUI, LoHa, LoKr) at STRENGTH (default 1, "
        f"{-MAX_STRENGTH:g} to {MAX_STRENGTH:g}, negative allowed); repeat to stack several. LCM-LoRA: --sampler lcm "
        "--steps 4 --guidance 0",
    )
    lora.add_argument("--lora-controlnet", action="store_true", help="the ControlNet's copies take the LoRAs too")
    ctl = gen.add_argument_group("ControlNet-Transformer")
    ctl.add_argument(
        "--control-image",
        type=IMAGE,
        help="edge map steering the generation, of the kind the ControlNet was trained on (HED edges for the "
        "reference's; white outlines on black, as `world` draws them, for shapes-controlnet); one of another "
        "aspect ratio than the picture is scaled to cover it and centre-cropped, with a warning. Transparency is "
        "black: an edge map drawn on a transparent layer reads as edges on black",
    )
    ctl.add_argument(
        "--control-strength",
        type=number_in(-MAX_CONTROL_STRENGTH, MAX_CONTROL_STRENGTH),  # the engine's bounds, refused naming the option
        default=1.0,
        help="how strongly the edge map steers: the ControlNet's output times this, "
        f"{-MAX_CONTROL_STRENGTH:g} to {MAX_CONTROL_STRENGTH:g} (default 1, the reference; 0: not at all; negative: "
        "the opposite)",
    )
    fraction = number_in(0.0, 1.0)  # refused naming the option; start before end is checked with the others
    ctl.add_argument(
        "--control-start",
        type=fraction,
        default=0.0,
        help="fraction of the steps where control starts, 0 to 1 (default %(default)g: from the first step)",
    )
    ctl.add_argument(
        "--control-end",
        type=fraction,
        default=1.0,
        help="fraction of the steps where control ends, 0 to 1 (default %(default)g: to the last step)",
    )
    hint = gen.add_argument_group("detection hints (for files that do not say it; refused where a file says otherwise)")
    hint.add_argument(
        "--heads",
        type=whole_number("attention heads"),
        help="attention heads of a transformer whose width is not 72 x heads",
    )
    resolution = hint.add_mutually_exclusive_group()
    resolution.add_argument(
        "--training-resolution",
        type=whole_number("pixels", multiple_of=LATENT_PIXEL),
        metavar="PX",
        help="pixels the transformer was trained at, a multiple of 8 (256, 512, 1024, 2048), for files without "
        "pos_embed or micro-conditions such as PixArt-Σ 256 px (diffusers' sample_size x 8)",
    )
    resolution.add_argument(
        "--sample-size",
        type=whole_number("latent pixels"),
        help="the same in diffusers' config.json units: latent pixels (32 = 256 px)",
    )
    hint.add_argument(
        "--caption-length", type=whole_number("tokens"), help="caption tokens: 120 (PixArt-α/δ) or 300 (PixArt-Σ)"
    )
    dev = gen.add_argument_group("devices and memory")
    dev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    dev.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="transformer/VAE dtype (auto: fp16 on a GPU, fp32 on the CPU)"
    )
    dev.add_argument(
        "--t5-dtype", default="auto", choices=DTYPES, help="T5 dtype (auto: bf16, in which T5-XXL is 9.5 GB)"
    )
    dev.add_argument("--low-memory", action="store_true", help="one model in memory at a time, tiled VAE decode")
    dev.add_argument(
        "--t5-quantization",
        default="auto",
        choices=["auto", "none", "int8", "nf4"],
        help="T5 weights in 8 or 4 bits (bitsandbytes); auto: int8 with --low-memory, else none",
    )
    dev.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"], help="transformer weights")
    return gen
