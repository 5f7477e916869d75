"""Writing the shapes world as a training data set: pictures, same-name ``.txt`` captions, edge maps, a JSONL.

The layout is the one the trainers read (``training/data.py``): ``NNNNNN.png`` with ``NNNNNN.txt`` beside
it, the edge maps in ``control/``, and ``data.jsonl`` listing image, caption and control of each record.
Scene ``i`` is ``sample_scene(first_seed + i)``, so a data set is rebuilt exactly from its seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from ..file_kinds import non_folder_part
from .render import edge_map, render
from .scenes import MAX_SEED, sample_scene

JSONL = "data.jsonl"
CONTROL = "control"
SCENE_FILE = re.compile(r"\d{6,}\.(png|txt)")  # a scene's picture or caption, named by its seed as write_dataset does
EDGE_MAP = re.compile(r"\d{6,}\.png")


def check_output_folder(folder: Path) -> None:
    """Refuse, before anything is written, a ``folder`` that is not one (or cannot become one) or that already
    holds files a run writes (``written_before``): writing into it would replace them, or leave pictures of an
    interrupted run that the new data.jsonl does not list. A new folder, an empty one or one holding other files
    is taken."""
    try:
        blocked = non_folder_part(folder)
        if blocked is not None:
            part, kind = blocked
            where = "" if part == folder else f" (its part {part})"
            raise InputError(f"--out {folder}: expected a folder{where}, found {kind}")
        found = written_before(folder)
        if found:
            raise InputError(
                f"--out {folder}: already holds a data set or part of one: {', '.join(found)}; writing into it "
                f"would replace those files or leave them out of the new {JSONL}: choose another --out, or delete "
                f"this folder first"
            )
        (folder / CONTROL).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {folder}: expected a folder that can be written, found {err.strerror}") from None


def written_before(folder: Path) -> list[str]:
    """What ``folder`` holds of the files ``write_dataset`` writes, in words: data.jsonl, how many scene files
    (``NNNNNN.png`` and ``.txt``) and edge maps (``control/NNNNNN.png``), each with its first; empty when none."""
    found = [JSONL] if (folder / JSONL).exists() else []
    for place, name, what in ((folder, SCENE_FILE, "scene file"), (folder / CONTROL, EDGE_MAP, "edge map")):
        names = sorted(p.name for p in place.iterdir() if name.fullmatch(p.name)) if place.is_dir() else []
        if names:
            found.append(f"{len(names)} {what}{'s' if len(names) != 1 else ''} ({place / names[0]}, ...)")
    return found


def check_seeds(count: int, first_seed: int, names: tuple[str, str] = ("count", "first_seed")) -> None:
    """Refuse ``count`` scenes from ``first_seed`` unless both are whole numbers, ``count`` at least 1, and every
    scene's seed, ``first_seed`` to ``first_seed + count - 1``, within 0..``MAX_SEED``; ``names`` are the two
    values' names in the error (``--count``...)."""
    for name, value, least in ((names[0], count, 1), (names[1], first_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name}: expected a whole number, {least} or more, found {value!r}")
    last = first_seed + count - 1
    if last > MAX_SEED:
        raise InputError(
            f"{names[1]} {first_seed} with {names[0]} {count}: the last scene's seed would be {last}, past the "
            f"largest, {MAX_SEED} (2^64 - 1): expected {names[1]} at most {max(0, MAX_SEED - count + 1)}"
        )


def write_dataset(folder: Path, count: int, first_seed: int = 0, max_shapes: int = 2) -> Path:
    """Write ``count`` scenes into ``folder`` (created; refused if it already holds a data set or part of one, see
    ``check_output_folder``); returns the JSONL. Raises InputError, before anything is written, for seeds that
    ``check_seeds`` refuses."""
    check_seeds(count, first_seed)
    check_output_folder(folder)
    lines = []
    for i in range(count):
        scene = sample_scene(first_seed + i, max_shapes)
        name = f"{first_seed + i:06d}.png"
        render(scene).save(folder / name)
        edge_map(scene).save(folder / CONTROL / name)
        caption = scene.caption()
        (folder / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        lines.append(json.dumps({"image": name, "caption": caption, "control": f"{CONTROL}/{name}"}))
    path = folder / JSONL
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
