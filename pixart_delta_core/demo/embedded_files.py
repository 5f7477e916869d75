"""The names a user gives the embedded model's files by (``shapes-lcm``...) on the command line and in a training
config: ``by_name``, with ``shadowed`` for a file here of that name, and ``config_model``. The table of names and
files and the ways between them (``FOLDER``, ``embedded_path``, ``embedded_model``) are ``embedded_names``', given
here too.

Plain paths and names, no torch: the command line's parser lists the names in its help without loading the engine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..embedded_names import FOLDER as FOLDER
from ..embedded_names import MODELS, embedded_path
from ..embedded_names import embedded_model as embedded_model
from ..errors import InputError
from ..file_kinds import exists

log = logging.getLogger(__name__)

# The sub-folders of FOLDER: what each holds, in words, and the command line's option that takes it.
KINDS = {"transformer": "transformer", "controlnet": "ControlNet", "vae": "VAE", "text_encoders": "T5 text encoder"}
OPTIONS = {"transformer": "--transformer", "controlnet": "--controlnet", "vae": "--vae", "text_encoders": "--t5"}
# The command line's options that take a kind of file the pack embeds none of, and that kind, in words.
NOT_EMBEDDED = {"--lora": "LoRA"}


def names_for(option: str) -> list[str]:
    """The embedded models the command line's ``option`` (``--vae``...) takes by name, sorted."""
    return sorted(model for model in MODELS if OPTIONS[_kind(model)] == option)


def by_name(value: str | Path, option: str | None = None) -> Path:
    """``value`` given to the command line's ``option`` (``--vae``...; None: a command taking every kind, as
    ``info``) as a path: the file of the embedded model of that name, else ``value`` itself.

    An embedded model's own name is that model even where a file or folder of that name is here (``shadowed``
    says so); a path spelling (``./shapes-lcm``, an absolute path) is always a path. An embedded model is also taken
    by its file's name, with or without its extension (``shapes-edges``, as ComfyUI lists it), when no file of that
    name is here. Raises InputError for a bare name (no folder in it, no file here) that is no embedded model of a
    kind ``option`` takes: the error lists those it takes and, for another kind's model (given by its name or its
    file's), says how to give that model; and for a path spelling of an embedded model's name where no file is."""
    name = str(value)
    takes = _takes(option)
    found = next((model for model in MODELS if name in _names(model)), None)
    kind = None if found is None else _kind(found)
    if found == name and kind in takes:
        return embedded_path(name)
    if Path(name).name != name and not exists(Path(name)) and Path(name).parent == Path("."):
        bare = next((m for m in MODELS if _kind(m) in takes and Path(name).name in _names(m)), None)
        if bare is not None:  # "./shapes-lcm" reads as "shapes-lcm" in every later message: say which is which
            raise InputError(
                f"{f'{option} ' if option else ''}{name}: no such file or folder here; {Path(name).name} alone is "
                f"the pack's embedded {KINDS[_kind(bare)]}"
            )
    if Path(name).name != name or exists(Path(name)):
        return Path(value)
    if found is not None and kind in takes:
        return embedded_path(found)
    said = [] if found == name else ["no such file or folder"]
    other_case = next((m for m in MODELS if _kind(m) in takes and name.lower() in {n.lower() for n in _names(m)}), None)
    if found is None and other_case is not None:  # names are case-sensitive, as files are on most systems
        said.append(f"did you mean {other_case}?")
    if found is not None:  # another kind's model: the option that takes it
        wanted = f", not a {NOT_EMBEDDED[option]}" if option in NOT_EMBEDDED else ""
        said.append(f"{name} is the pack's embedded {KINDS[kind]}{wanted}: give it as {OPTIONS[kind]} {found}")
    if not takes:  # an option no embedded model is for (--lora)
        raise InputError(f"{f'{option} ' if option else ''}{name}: {'; '.join(said)}")
    listed = sorted(model for model in MODELS if _kind(model) in takes)
    several = len(listed) > 1
    what = "models" if len(takes) > 1 else KINDS[takes[0]] + ("s" if several else "")
    said.append(f"the pack's embedded {what} {'are:' if several else 'is'} {', '.join(listed)}")
    raise InputError(f"{f'{option} ' if option else ''}{name}: {'; '.join(said)}")


def shadowed(value: str | Path, option: str | None = None) -> str | None:
    """A note for ``value`` given to ``option`` (None: every kind, as ``info``) when it is an embedded model's own
    name that ``option`` takes and a file or folder of that name is here too, which ``by_name`` passes over for the
    embedded model: what is used, and how to give the one here. None otherwise."""
    name = str(value)
    if name not in MODELS or _kind(name) not in _takes(option) or not exists(Path(name)):
        return None
    what = "folder" if Path(name).is_dir() else "file"
    return (
        f"{f'{option} ' if option else ''}{name} is the pack's embedded {KINDS[_kind(name)]}: using it, not the "
        f"{what} ./{name} here (give ./{name} to use that {what})"
    )


# A training config's model settings (``[model]`` in ``train --config``) that take an embedded model, by kind.
CONFIG_SETTINGS = {"transformer": "transformer", "controlnet": "controlnet", "vae": "vae", "text_encoders": "t5"}


def config_model(value: str, setting: str, folder: Path) -> Path | None:
    """The file of the embedded model a training config's ``setting`` (``model.t5``...) names by ``value``, as
    ``by_name`` reads the command line's names: its own name (``shapes-t5``) is that model, with a warning where
    ``folder`` (the config's, from which its relative paths are read) holds a file of that name too; its file's name
    (``shapes-edges``) is, where ``folder`` holds none. None for a path, to read from ``folder`` as before (a bare
    name of no embedded model, or of another kind's where ``folder`` holds a file of that name).

    Raises InputError for another kind's model (``model.vae = "shapes-lcm"``), saying which setting takes it."""
    takes = next((kind for kind, key in CONFIG_SETTINGS.items() if setting == f"model.{key}"), None)
    found = next((model for model in MODELS if value in _names(model)), None)
    if takes is None or found is None or Path(value).name != value:
        return None
    kind = _kind(found)
    if (found != value or kind != takes) and exists(folder / value):  # a file there named as a model's file is
        return None
    if kind != takes:
        listed = ", ".join(model for model in sorted(MODELS) if _kind(model) == takes)
        raise InputError(
            f"{setting} {value}: {value} is the pack's embedded {KINDS[kind]}, not a {KINDS[takes]}: give it as "
            f'model.{CONFIG_SETTINGS[kind]} = "{found}" (the embedded {KINDS[takes]}: {listed})'
        )
    if exists(folder / value):
        log.warning(
            "%s %s is the pack's embedded %s: using it, not the %s %s beside the config (give ./%s to use that)",
            setting,
            value,
            KINDS[kind],
            "folder" if (folder / value).is_dir() else "file",
            folder / value,
            value,
        )
    return embedded_path(found)


def _takes(option: str | None) -> list[str]:
    """The sub-folders of ``FOLDER`` (keys of ``KINDS``) whose models ``option`` takes; None: all of them."""
    return [kind for kind, flag in OPTIONS.items() if option in (None, flag)]


def _kind(model: str) -> str:
    """The sub-folder of ``FOLDER`` (a key of ``KINDS``) holding the embedded model ``model``."""
    return Path(MODELS[model]).parts[0]


def _names(model: str) -> set[str]:
    """The names a user may give an embedded model by: its own, its file's (as ComfyUI lists it), its file's stem."""
    relative = Path(MODELS[model])
    return {model, relative.name, relative.stem}
