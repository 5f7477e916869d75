"""Command line: ``python -m pixart_delta_core {generate,info,demo,train,world,scene,judge} ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_kinds import INSTEAD, OPTIONS, check_is_lora, first_that_reads, inspectors_of_kinds
from .cli_progress import progress, stages
from .cli_types import Parser, nonempty
from .demo.embedded_files import MODELS, by_name, config_model, embedded_model, names_for, shadowed
from .errors import InputError, PixArtDeltaError, given_as
from .pipeline.distillation import SAMPLERS

if TYPE_CHECKING:
    from .pipeline.resolution import Size

log = logging.getLogger(__name__)

LONG_PROMPT, SHOWN_PROMPT = 80, 60  # a prompt of more characters is shown by its first SHOWN_PROMPT in a warning


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints.sources import printable_path

    inspectors = inspectors_of_kinds()
    failed, noted = 0, set()
    for given in args.files:  # every file is told; the bad ones are named where they come, with a failing exit
        if (note := shadowed(given)) is not None and note not in noted:  # once for a name given twice
            noted.add(note)
            log.warning(note)
        try:
            path = by_name(given)
            detected, what = first_that_reads(path, inspectors)
        except PixArtDeltaError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        source = detected.tensors
        dtypes = sorted({str(d).removeprefix("torch.") for d in source.dtypes.values()})
        print(printable_path(path))  # a name that is not UTF-8 would make a plain print raise
        print(f"  {what}, {detected.describe()}")
        print(f"  {len(source)} tensors, {source.nbytes() / 2**20:.1f} MiB as stored ({', '.join(dtypes)})")
    if failed and len(args.files) > 1:
        print(f"error: {failed} of {len(args.files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def embedded_names(args: argparse.Namespace, *options: str) -> list[str]:
    """Put the embedded models' files for their names in ``options`` (``by_name``: the values as typed, so that
    ``./shapes-lcm`` is a path); the notes of the files here those names pass over (``shadowed``), for the caller
    to give after its checks."""
    notes = []
    for option in options:
        if (value := getattr(args, option)) is not None:
            notes.append(shadowed(value, f"--{option}"))
            setattr(args, option, by_name(value, f"--{option}"))
    return [note for note in notes if note is not None]


def warn_outside_the_world(transformer: Path, prompts: list[str], what: str = "prompt") -> None:
    """Log one warning when an embedded transformer is given prompts outside the shapes world's grammar; ``what``
    they are in the message ("prompt", "negative prompt")."""
    if (name := embedded_model(transformer)) is None:
        return
    from .world.judge import GRAMMAR, parse_caption

    outside = []
    for prompt in prompts:
        try:
            parse_caption(prompt)
        except InputError:
            outside.append(prompt)
    if outside:
        several = len(outside) > 1
        log.warning(
            "%s was trained only on the shapes world's prompts; the %s%s %s %s outside its grammar, so expect an "
            "unclear picture (the grammar: %s)",
            name,
            what,
            "s" * several,
            ", ".join(repr(p) if len(p) <= LONG_PROMPT else f"{p[:SHOWN_PROMPT]!r}…" for p in outside),
            "are" if several else "is",
            GRAMMAR,
        )


def _guided(args: argparse.Namespace) -> bool:
    """Whether ``generate`` runs with guidance (above 1): only then does a negative prompt act."""
    from .sampling.samplers import SamplingSettings

    return SamplingSettings.defaults(
        args.sampler, **({} if args.guidance is None else {"guidance": args.guidance})
    ).guided


def check_generate(args: argparse.Namespace, sampler: str) -> Size | None:
    """What ``generate`` can check before any model loads, all before anything is written: files, the images' sizes,
    option pairs, the sampling options (``sampler``: the one that runs when no --sampler is given), the prompts and
    seed, the device, the output. Returns the init image's (height, width) from its header, or None."""
    from .devices import device_option
    from .file_kinds import exists, file_kind
    from .pipeline.arguments import check_images
    from .pipeline.cli import DEFAULT_OUT, check_sampling, check_texts_and_seed
    from .pipeline.outputs import check_output

    named = {"--transformer": args.transformer, "--t5": args.t5, "--vae": args.vae, "--tokenizer": args.tokenizer}
    named |= {"--controlnet": args.controlnet, "--init-image": args.init_image, "--control-image": args.control_image}
    for option, path in named.items():
        if path is not None and not exists(path):
            raise InputError(f"{option} {path}: no such file or folder")
    for path, _ in args.lora:
        if not exists(path):
            by_name(str(path), "--lora")  # an embedded model's name: which model it is, and not a LoRA
            raise InputError(f"--lora {path}: no such file or folder")
    for path, _ in args.lora:
        check_is_lora(path)
    for option in ("--init-image", "--control-image"):
        if named[option] is not None and not named[option].is_file():
            found = file_kind(named[option].stat().st_mode)
            raise InputError(f"{option} {named[option]}: expected an image file, found {found}")
    init_size = check_images(args.init_image, args.control_image, ("--init-image", "--control-image"))
    if args.controlnet is not None and args.control_image is None:
        raise InputError("--controlnet needs --control-image (the edge map that steers the generation)")
    if args.lora_controlnet and args.control_image is None:
        raise InputError("--lora-controlnet needs a ControlNet (--controlnet and --control-image): this run has none")
    if args.lora_controlnet and not args.lora:
        raise InputError("--lora-controlnet needs --lora (the LoRAs the ControlNet's copies are to take): none given")
    if args.strength is not None and args.init_image is None:
        raise InputError(f"--strength {args.strength} needs --init-image (the image to start from)")
    if args.out is not None:
        _check_out_keeps_inputs(args)
    if not args.control_start < args.control_end:  # each in [0, 1]: their type (number_in) checks it
        raise InputError(
            f"--control-start {args.control_start} and --control-end {args.control_end} must satisfy "
            f"0 <= start < end <= 1"
        )
    control = {"--control-strength": (args.control_strength, 1.0), "--control-start": (args.control_start, 0.0)}
    control["--control-end"] = (args.control_end, 1.0)
    given = [f"{option} {value:g}" for option, (value, default) in control.items() if value != default]
    if given and args.control_image is None:
        raise InputError(f"{' and '.join(given)} need{'s' * (len(given) == 1)} --control-image (the edge map)")
    if args.control_image is not None and args.controlnet is None and (name := embedded_model(args.transformer)):
        raise InputError(
            f"--control-image needs --controlnet: the embedded transformer {name} holds no ControlNet (the pack's "
            f"embedded one is shapes-controlnet)"
        )
    check_sampling(args, sampler)  # --steps, --lcm-timesteps, the control window
    check_texts_and_seed(args)
    device_option(args.device)
    check_output(args.out or DEFAULT_OUT, len(args.prompt), args.batch, keep_earlier=args.out is None)
    return init_size


def _check_out_keeps_inputs(args: argparse.Namespace) -> None:
    """Refuse an --out any of whose names (``x.png``, or the numbered ``x-p1-2.png``... of a batch or several
    prompts) is the init or control image: the run would replace the picture it reads."""
    from .pipeline.outputs import output_paths

    inputs = {"--init-image": args.init_image, "--control-image": args.control_image}
    for path in output_paths(args.out, len(args.prompt), args.batch):
        for option, image in inputs.items():
            if image is not None and path.exists() and path.resolve() == image.resolve():
                which = "" if path == args.out else f" writes {path}, which"
                raise InputError(
                    f"--out {args.out}{which} is the {option}: the picture would replace it; give another --out"
                )


def warn_untrained_size(transformer: Path, height: int | None, width: int | None, init_size: Size | None) -> None:
    """Log one warning when an embedded transformer, trained at one size only, is asked a picture of another
    (``height`` x ``width`` px as given, else the init image's ``init_size``, else the size it was trained at)."""
    if (name := embedded_model(transformer)) is None:
        return
    from .demo.embedded import PICTURE
    from .pipeline.images import INIT_IMAGE_SIZE, asked_size, init_sets_size

    trained_width, trained_height = PICTURE["width"], PICTURE["height"]
    asked_height, asked_width = asked_size(height, width, (trained_height, trained_width), init_size)
    if (asked_height, asked_width) != (trained_height, trained_width):
        times = asked_height * asked_width / (trained_height * trained_width)  # attention's cost grows as its square
        slow = f" and slow ({times:.0f} times the pixels: each step {times:.0f} to {times**2:,.0f} times as long)"
        log.warning(
            "%s was trained at %dx%d px only; this picture is %dx%d px (width x height%s), so expect it to be "
            "unclear%s (--width %d --height %d draws the size it knows)",
            name,
            trained_width,
            trained_height,
            asked_width,
            asked_height,
            f", {INIT_IMAGE_SIZE}" if init_sets_size(height, width, init_size) else "",
            slow if times >= 4 else "",
            trained_width,
            trained_height,
        )


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline.cli import DEFAULT_INIT_STRENGTH, DEFAULT_OUT, check_size, detection_hints, run_record
    from .pipeline.generation import Control, PixArtPipeline
    from .pipeline.images import INIT_IMAGE_SIZE, init_sets_size
    from .pipeline.outputs import save_images

    notes = embedded_names(args, "transformer", "t5", "vae", "controlnet")
    own = SAMPLERS.get(embedded_model(args.transformer) or "", "lcm")  # lcm, the teacher's DPM-Solver++
    init_size = check_generate(args, own)  # every refusal, then the warnings, then the load
    args.sampler = args.sampler or own
    pipeline = PixArtPipeline(  # loads nothing: its transformer's header is read once, for check_size and the run
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
        loras=args.lora,
        lora_controlnet=args.lora_controlnet,
        hints=detection_hints(args),
    )
    with given_as(OPTIONS["transformer"], INSTEAD):
        config = pipeline.transformer_checkpoint.config
    check_size(args, init_size, config)  # its training resolution sets the bins
    control = None
    if args.control_image is not None:  # its strength is checked here
        control = Control(args.control_image, args.control_strength, args.control_start, args.control_end)
    encodes = args.init_image is not None or control is not None
    with given_as(None, INSTEAD):
        pipeline.check_files(control is not None, encodes, OPTIONS)  # from headers
    for note in notes:  # an embedded model's name that a file here also has
        log.warning(note)
    warn_outside_the_world(args.transformer, args.prompt)
    negatives = args.negative_prompt  # once for every prompt (a text), or once per prompt (a list)
    negatives = negatives[0] if negatives is not None and len(negatives) == 1 else negatives
    if (judged := [n for n in args.negative_prompt or [] if n]) and _guided(args):  # "": no text to judge
        warn_outside_the_world(args.transformer, judged, "negative prompt")  # unguided: the pipeline says unused
    warn_untrained_size(args.transformer, args.height, args.width, init_size)
    if args.control_image is not None and args.controlnet is None:
        log.info("no --controlnet given: its weights are read from --transformer (a reference ControlNet file)")
    with progress() as on_step, stages() as on_stage:
        result = pipeline(
            args.prompt,
            negative_prompt=negatives,
            width=args.width,
            height=args.height,
            resolution_binning=not args.no_binning,
            sampler=args.sampler,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            images_per_prompt=args.batch,
            lcm_timesteps=args.lcm_timesteps or "reference",
            init_image=args.init_image,
            strength=(DEFAULT_INIT_STRENGTH if args.strength is None else args.strength) if args.init_image else 1.0,
            control=control,
            clean_caption=args.clean_caption,
            on_step=on_step,
            on_stage=on_stage,
        )
    first, record = result.images[0], run_record(args, negatives, result, pipeline, control)
    source = f", {INIT_IMAGE_SIZE}" if init_sets_size(args.height, args.width, init_size) else ""
    for path, replaced in save_images(result.images, args.out or DEFAULT_OUT, record, keep_earlier=args.out is None):
        size = f"{first.width}x{first.height}{source}, generated at {result.size[1]}x{result.size[0]}"
        print(f"wrote {path} ({size}{'; replaced an earlier file' * replaced})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.showcase import check_demo, introduction, next_steps, verdict_lines, write_demo

    check_demo(args.out, args.device)  # a refusal before the introduction
    replaced = args.out.exists()
    print("\n".join(introduction()))
    shown = write_demo(args.out, args.device, args.seed)
    print("\n".join([*verdict_lines(shown), "", *next_steps(args.out, replaced)]))
    return 0


def cmd_scene(args: argparse.Namespace) -> int:
    """Draw ``scene``'s caption (or the world's scene of its seed): the picture at --out, its edge map beside it."""
    from .pipeline.outputs import check_output, make_output_folder, save_picture
    from .world.judge import scene_for
    from .world.render import edge_map, render
    from .world.scenes import DEFAULT_CAPTION

    if args.caption and args.seed is not None:
        raise InputError(
            f"--seed draws the world's scene of a seed in place of a caption, found both --seed {args.seed} and "
            f"--caption {args.caption!r}: give one (a caption's shapes sit at their places' centres, with no seed)"
        )
    caption = DEFAULT_CAPTION if args.caption is None and args.seed is None else args.caption or ""
    try:
        scene = scene_for(caption, args.seed or 0)
    except InputError as err:
        raise InputError(f"--caption: {err}") from None
    edges = args.out.with_name(f"{args.out.stem}-edges{args.out.suffix}")
    for path in (args.out, edges):
        check_output(path)
    # the picture keeps its caption, the prompt judge reads, as generate's pictures do
    pictures = {args.out: ("the scene", render, scene.caption()), edges: ("its edge map", edge_map, None)}
    make_output_folder(args.out)
    for path, (what, draw, parameters) in pictures.items():
        replaced = path.exists()
        save_picture(draw(scene, args.size), path, parameters)
        print(f"wrote {path} ({what}, {args.size}x{args.size} px{'; replaced an earlier file' * replaced})")
    print(f"caption: {scene.caption()}")
    return 0


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes after its name too (``generate -v``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what it does")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m pixart_delta_core", description="PixArt-δ engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)
    what = "a PixArt transformer, a PixArt ControlNet, a T5 text encoder, a VAE or a PixArt LoRA"
    info = sub.add_parser(
        "info",
        parents=[_common()],
        help=f"say what a file is ({what}) and its detected configuration",
        description=f"Say what each file is ({what}: single files, diffusers, HF or PEFT folders), its detected "
        "configuration (a LoRA's: its rank and the layers it adapts), how many tensors it holds and their size and "
        "dtypes. Reads no weights but a LoRA's, which are small, to check them.",
    )
    info.add_argument(
        "files",
        nargs="+",  # as typed, not Path: "./shapes-lcm" is a path, "shapes-lcm" the embedded model (by_name)
        type=nonempty("a file or folder"),
        help=f"checkpoint files, diffusers or HF T5 folders, or the embedded models' names ({', '.join(MODELS)})",
    )
    info.set_defaults(run=cmd_info)
    from .pipeline.cli import SEED, add_generate_parser

    demo = sub.add_parser(
        "demo",
        parents=[_common()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="draw held-out prompts with the embedded model and judge the pictures",
        description="Draw held-out prompts of the shapes world with the embedded model (a small PixArt-δ trained "
        "by this pack: the LCM student in 4 steps, then the ControlNet on an edge map), write them as one grid, "
        "and print each prompt with the judge's verdict. Runs offline in seconds.",
    )
    demo.add_argument(
        "--out", type=nonempty("an image file name", Path), default=Path("outputs/demo.png"), help="the grid written"
    )
    demo.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    demo.add_argument("--seed", type=SEED, default=0, help="the noise's seed: other seeds draw the same prompts anew")
    demo.set_defaults(run=cmd_demo)
    from .training.cli import add_train_parser
    from .world.cli import add_world_parsers

    add_generate_parser(sub, _common(), names_for).set_defaults(run=cmd_generate)
    add_train_parser(sub, _common(), config_model)
    add_world_parsers(sub, _common(), cmd_scene)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
        return code
    except PixArtDeltaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 (128 + SIGINT), as a shell reports it
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed early (``| head -1``): stop quietly, as cat or ls do. Python ignores SIGPIPE, so say
        # what a process ended by it says, 141 (128 + SIGPIPE): the shell's convention, which ``set -o pipefail``
        # reads, and not 0, since not everything was written. stdout goes to devnull so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
