"""The shapes world's subcommands: ``world`` writes a data set of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def add_world_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    world = sub.add_parser(
        "world",
        parents=[common],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="write a data set of the procedural shapes world (pictures, captions, edge maps)",
        description="Write scenes of the shapes world (coloured circles, squares, triangles and stars at named "
        "places on a background) as a training data set: NNNNNN.png with its .txt caption, its edge map in "
        "control/, and data.jsonl. Scene i is drawn from seed first_seed + i.",
    )
    world.add_argument("--out", type=Path, required=True, help="the data set's folder")
    world.add_argument("--count", type=int, default=1000, help="how many scenes")
    world.add_argument("--first-seed", type=int, default=0, help="the seed of the first scene")
    world.add_argument("--max-shapes", type=int, default=2, help="at most this many shapes a scene (1 to 9)")
    world.set_defaults(run=cmd_world)


def cmd_world(args: argparse.Namespace) -> int:
    from .dataset import write_dataset

    if args.count <= 0:
        raise InputError(f"--count must be a positive number of scenes, found {args.count}")
    if not 1 <= args.max_shapes <= 9:
        raise InputError(f"--max-shapes must be 1 to 9 (one shape a grid cell), found {args.max_shapes}")
    if args.first_seed < 0:
        raise InputError(f"--first-seed must be 0 or more, found {args.first_seed}")
    path = write_dataset(args.out, args.count, args.first_seed, args.max_shapes)
    print(f"wrote {args.count} scenes to {args.out}; records: {path}")
    return 0
