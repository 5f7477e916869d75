"""The pack's embedded model's files by the names users give them (``shapes-lcm``...), both ways: a name to its file
(``embedded_path``) and a file to its name (``embedded_model``).

Plain paths, no torch, below every package: the pipeline tells the embedded teacher by its file (its warnings), the
command line's parser lists the names in its help without loading the engine (``demo.embedded_files`` reads the
names users type).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "embedded_model"
MODELS = {
    "shapes-teacher": "transformer/shapes-teacher.safetensors",
    "shapes-lcm": "transformer/shapes-lcm.safetensors",
    "shapes-controlnet": "controlnet/shapes-edges.safetensors",
    "shapes-taesd": "vae/shapes-taesd.safetensors",
    "shapes-t5": "text_encoders/shapes-t5",
}


def embedded_path(name: str | Path) -> Path:
    """The file of an embedded model given by name (``shapes-lcm``...), or ``name`` itself as a path."""
    relative = MODELS.get(str(name))
    return FOLDER / relative if relative is not None else Path(name)


def embedded_model(path: str | Path) -> str | None:
    """The name of the embedded model whose file or folder ``path`` is, else None (``embedded_path``'s inverse)."""
    return next((name for name in MODELS if embedded_path(name) == Path(path).resolve()), None)
