"""The shapes world's subcommands: ``world`` writes a data set of it, ``scene`` draws one scene and its edge map,
``judge`` reads pictures against their prompts."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from ..cli_types import nonempty, whole_number
from ..errors import InputError
from .scenes import DEFAULT_CAPTION, DRAWN_SIDES, GRAMMAR, IMAGE_SIZE, MAX_SEED

MAX_SIDE = 4096  # px: judge refuses larger pictures (a 12000 px one took ~10 GB and ~50 s to read)


SCENE_SEED = whole_number(least=0, most=MAX_SEED)  # a scene's seed: 0 to 2^64 - 1, as generate's --seed


def add_world_parsers(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, draw_scene: Callable[[argparse.Namespace], int]
) -> None:
    """Add ``world``, ``scene`` and ``judge``; ``draw_scene`` runs ``scene`` (the command line's own: it checks
    its outputs with generate's checks, which sit a layer above the world)."""
    world = sub.add_parser(
        "world",
        parents=[common],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="write a data set of the procedural shapes world (pictures, captions, edge maps)",
        description="Write scenes of the shapes world (coloured circles, squares, triangles and stars at named "
        "places on a background) as a training data set: NNNNNN.png with its .txt caption, its edge map in "
        "control/, and data.jsonl. Scene i is drawn from seed first_seed + i.",
    )
    world.add_argument(  # no default to show: SUPPRESS keeps ArgumentDefaultsHelpFormatter's "(default: None)" off
        "--out",
        type=nonempty("a folder for the data set", Path),
        required=True,
        default=argparse.SUPPRESS,
        help="the data set's folder: a new or empty one (required)",
    )
    world.add_argument("--count", type=whole_number("scenes"), default=1000, help="how many scenes")
    world.add_argument(
        "--first-seed",
        type=SCENE_SEED,
        default=0,
        help="the seed of the first scene (0 to 2^64 - 1, as generate's --seed)",
    )
    world.add_argument(
        "--max-shapes",
        type=whole_number("shapes", 1, 9),
        default=2,
        help="at most this many shapes a scene (1 to 9: one a grid cell)",
    )
    world.set_defaults(run=cmd_world)
    scene = sub.add_parser(
        "scene",
        parents=[common],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="draw the scene a caption asks for: its picture and its edge map (the embedded ControlNet's input)",
        description="Draw the scene a caption of the shapes world asks for, as the PixArt-δ Shapes Scene node "
        "does: its picture at --out and the outlines of its shapes, white on black, beside it as NAME-edges.EXT "
        "(the control image of the embedded ControlNet, shapes-controlnet). A caption's shapes sit at their places' "
        "centres; --seed instead draws the world's scene of that seed, as world does (its shapes moved within their "
        "cells). Prints the scene's caption: the prompt to give generate (a PNG picture also holds it, for judge). A "
        "file already at either name is replaced, and the run says so.",
    )
    scene.add_argument(
        "--caption",
        help=f"the scene, in the world's grammar: {GRAMMAR} (default without --seed: {DEFAULT_CAPTION!r})",
    )
    scene.add_argument(
        "--seed",
        type=SCENE_SEED,
        help="instead of a caption: which scene of the world to draw (0 to 2^64 - 1, as world's --first-seed)",
    )
    scene.add_argument(
        "--size",
        type=whole_number("pixels", *DRAWN_SIDES),
        default=IMAGE_SIZE,
        help=f"pixels per side, {DRAWN_SIDES[0]} to {DRAWN_SIDES[1]} in steps of {DRAWN_SIDES[2]} ({IMAGE_SIZE}: the "
        "size the embedded model makes)",
    )
    scene.add_argument(
        "--out",
        type=nonempty("an image file name", Path),
        default=Path("outputs/scene.png"),
        help="the picture; its edge map is written beside it, NAME-edges.EXT",
    )
    scene.set_defaults(run=draw_scene)
    judge = sub.add_parser(
        "judge",
        parents=[common],
        help="read pictures of the shapes world and judge them against their prompts",
        description="Read each picture back into the shapes world's attributes (background, each shape's colour, "
        "kind, size and place) and judge them against its prompt: --prompt, else the prompt generate wrote into "
        "the PNG's parameters chunk, else the same-name .txt caption beside it. Prints each picture's verdict, "
        "then the fraction right per attribute. Pictures are square, as the world draws them (128 px; any size "
        f"up to {MAX_SIDE} px a side). Exit status 1 when a picture could not be judged (each is named), not "
        "when a verdict is wrong.",
    )
    judge.add_argument("images", nargs="+", type=nonempty("a picture", Path), help="pictures (PNG, JPEG, ...)")
    judge.add_argument("--prompt", help="the prompt every picture was made for")
    judge.add_argument("--json", action="store_true", help="print one JSON object: each verdict and the scores")
    judge.add_argument(
        "--overlap",
        action="store_true",
        help="also say how well each picture's shapes cover the scene its prompt asks: the IoU (0 to 1) of its "
        "foreground with the scene's filled shapes, those whose outlines `scene --caption PROMPT` draws in its "
        "edge map",
    )
    judge.add_argument(
        "--scene-seed",
        type=SCENE_SEED,
        metavar="N",
        help="the overlap (as --overlap) with the world's scene of seed N instead: the scene an edge map made "
        "from a seed shows (`scene --seed N`; world's control/NNNNNN.png too, at its default "
        "--max-shapes 2)",
    )
    judge.set_defaults(run=cmd_judge)


def cmd_world(args: argparse.Namespace) -> int:
    from .dataset import check_seeds, write_dataset

    check_seeds(args.count, args.first_seed, ("--count", "--first-seed"))  # in the options' names
    path = write_dataset(args.out, args.count, args.first_seed, args.max_shapes)
    print(f"wrote {args.count} scene{'s' if args.count != 1 else ''} to {args.out}; records: {path}")
    return 0


def prompt_of(path: Path) -> str | None:
    """The prompt a picture was made for: the one in its PNG ``parameters`` chunk (as generate writes it: the
    prompt's lines, then an optional "Negative prompt: " line and one settings line), else the text of the
    same-name ``.txt`` beside it; None when neither is there. Raises InputError for what is not a picture."""
    from PIL import Image, UnidentifiedImageError

    from ..file_kinds import exists, file_kind
    from ..pictures import bomb_pixels, upright_size

    if not exists(path) or not path.is_file():
        found = file_kind(path.stat().st_mode) if path.exists() else "no such file"
        raise InputError(f"{path}: expected a picture, found {found}")
    largest = (
        f"{path}: expected a picture of at most {MAX_SIDE} x {MAX_SIDE} px (the shapes world draws 128 px; PixArt's "
        f"largest is 4096), found"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_SIDE is checked below
            image = Image.open(path)
        with image:
            if max(image.size) > MAX_SIDE:  # from the header: decoding and reading it would take gigabytes
                width, height = upright_size(image)
                raise InputError(f"{largest} {width} x {height} px: shrink it first")
            image.load()  # a truncated or damaged file fails here, before any picture is judged
            parameters = image.info.get("parameters")
    except Image.DecompressionBombError as err:  # Pillow's words ("decompression bomb DOS attack") are not ours
        pixels = bomb_pixels(err)
        found = "more pixels than Pillow decodes" if pixels is None else f"{pixels / 1e6:.0f} megapixels"
        raise InputError(f"{largest} {found} (from its header): shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"{path}: expected a picture, found a file Pillow cannot read ({err})") from None
    if parameters:
        lines = parameters.splitlines()
        negative = [i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")]
        return "\n".join(lines[: negative[0] if negative else max(1, len(lines) - 1)])
    caption = path.with_suffix(".txt")
    if not caption.is_file():
        return None
    try:
        return caption.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as err:
        raise InputError(
            f"{caption}: expected the picture's prompt in UTF-8 text, found {err.reason} at byte {err.start}"
        ) from None


def cmd_judge(args: argparse.Namespace) -> int:
    from PIL import Image

    from .judge import Scores, foreground_iou, judge, parse_caption
    from .reading import read_picture
    from .scenes import sample_scene

    given = None  # --prompt's scene: one prompt for every picture, refused once, before any picture is read
    if args.prompt is not None:
        try:
            given = parse_caption(args.prompt)
        except InputError as err:
            raise InputError(f"--prompt: {err}") from None
    overlap = args.overlap or args.scene_seed is not None
    seeded = None if args.scene_seed is None else sample_scene(args.scene_seed)  # what scene_for draws for ""

    asked, failed = [], []
    for path in args.images:  # every picture is judged; the bad ones are named at the end, with a failing exit
        try:
            found = prompt_of(path)  # also refuses what is not a picture
            prompt = found if args.prompt is None else args.prompt
            if prompt is None:
                where = path.with_suffix(".txt")
                raise InputError(f"{path}: no prompt found (expected --prompt, a PNG parameters chunk or {where})")
            try:  # with several pictures, the error names the one it is about
                scene = given or parse_caption(prompt)
                with Image.open(path) as image:
                    reading = read_picture(image)  # refuses a picture that is not square first
                    iou = foreground_iou(image, scene if seeded is None else seeded) if overlap else None
                    asked.append((path, prompt, scene, reading, iou))
            except InputError as err:
                raise InputError(f"{path}: {err}") from None
        except InputError as err:
            failed.append({"image": str(path), "error": str(err)})
    scores, records = Scores(), []
    for path, prompt, scene, reading, iou in asked:
        verdict = judge(scene, reading)
        scores.add(verdict)
        records.append({"image": str(path), "prompt": prompt, **verdict.as_dict()})
        if iou is not None:
            records[-1]["overlap"] = iou
        if not args.json:
            said = "" if iou is None else f"; overlap of the shapes with the scene's (IoU): {iou:.2f}"
            print(f"{path}: {verdict.line()}{said}")
    if args.json:
        print(json.dumps({"images": records, "scores": scores.as_dict(), "errors": failed}, indent=2))
    elif records:
        print()
        print(scores.table())
    for failure in failed:
        print(f"error: {failure['error']}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(args.images)} pictures could not be judged", file=sys.stderr)
    return 1 if failed else 0
