"""Writing the shapes world as a training data set: pictures, same-name ``.txt`` captions, edge maps, a JSONL.

The layout is the one the trainers read (``training/data.py``): ``NNNNNN.png`` with ``NNNNNN.txt`` beside
it, the edge maps in ``control/``, and ``data.jsonl`` listing image, caption and control of each record.
Scene ``i`` is ``sample_scene(first_seed + i)``, so a data set is rebuilt exactly from its seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..file_kinds import file_kind
from .render import edge_map, render
from .scenes import sample_scene

JSONL = "data.jsonl"


def check_output_folder(folder: Path) -> None:
    """Refuse, before anything is written, a ``folder`` that is not one (or cannot become one) or that already
    holds a data set: writing over it would replace its data.jsonl and leave its old pictures orphaned."""
    above = folder
    while not above.exists() and above != above.parent:  # the nearest part of the path that is there
        above = above.parent
    if above.exists() and not above.is_dir():
        where = "" if above == folder else f" (its part {above})"
        raise InputError(f"--out {folder}: expected a folder{where}, found {file_kind(above.stat().st_mode)}")
    if (folder / JSONL).exists():
        raise InputError(
            f"--out {folder}: already holds a data set ({folder / JSONL}); writing over it would replace its "
            f"records and orphan its pictures: choose another folder, or delete this one first"
        )
    try:
        (folder / "control").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {folder}: expected a folder that can be written, found {err.strerror}") from None


def write_dataset(folder: Path, count: int, first_seed: int = 0, max_shapes: int = 2) -> Path:
    """Write ``count`` scenes into ``folder`` (created; refused if it already holds a data set); returns the JSONL."""
    if count <= 0:
        raise ValueError(f"a data set needs at least one scene, asked for {count}")
    check_output_folder(folder)
    lines = []
    for i in range(count):
        scene = sample_scene(first_seed + i, max_shapes)
        name = f"{first_seed + i:06d}.png"
        render(scene).save(folder / name)
        edge_map(scene).save(folder / "control" / name)
        caption = scene.caption()
        (folder / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        lines.append(json.dumps({"image": name, "caption": caption, "control": f"control/{name}"}))
    path = folder / JSONL
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
