"""Reading a training configuration from TOML: sections and settings checked by name and type, relative paths
taken from the file's folder, into the dataclasses of ``config.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
import sys
import types
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..file_kinds import file_kind
from .config import SECTIONS, Method, TrainingConfig

log = logging.getLogger(__name__)


# A model setting's value as written (``model.t5 = "shapes-t5"``), its name (``model.t5``) and the config's folder ->
# the file that name stands for, or None to read it as a path (the command line's embedded names: demo.embedded_files)
Named = Callable[[str, str, Path], Path | None]


def load_config(path: str | Path, method: Method | str | None = None, named: Named | None = None) -> TrainingConfig:
    """Read a TOML training config; ``method`` (from the command line) overrides the file's ``method``.

    Relative paths in the file are taken from the file's folder; a ``[model]`` value that ``named`` makes a file (an
    embedded model's name) is that file. Raises ``InputError`` naming the unknown or bad key.
    """
    path = Path(path)
    tomllib = toml_reader()
    try:
        table = tomllib.loads(_config_text(path))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"training config {path} is not valid TOML: {err}") from None
    return config_from_dict(table, method, root=path.parent, named=named)


def _config_text(path: Path) -> str:
    """The text of the config file at ``path``, or an ``InputError`` saying why it cannot be one: absent, not a
    regular file (a folder; a FIFO or device would block ``open`` forever), unreadable, or not UTF-8 text."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"training config {path} does not exist") from None
    except OSError as err:
        raise InputError(f"training config {path}: cannot look at it ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"training config {path}: expected a TOML file, found {file_kind(mode)}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"training config {path}: cannot read it ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"training config {path}: expected UTF-8 TOML text, found a byte 0x{data[err.start]:02x} at offset "
            f"{err.start} that is not UTF-8 (save the file as UTF-8)"
        ) from None


def config_from_dict(
    table: dict[str, Any], method: Method | str | None = None, root: Path = Path("."), named: Named | None = None
) -> TrainingConfig:
    """A ``TrainingConfig`` from parsed TOML (see ``load_config``)."""
    table = dict(table)
    if named is not None and isinstance(models := table.get("model"), dict):  # a bad table is _section's to refuse
        for key, value in models.items():
            if isinstance(value, str) and (path := named(value, f"model.{key}", root)) is not None:
                table["model"] = {**table["model"], key: str(path)}  # absolute: root / path is path
    written = table.pop("method", None)
    chosen = method if method is not None else written
    unknown = sorted(set(table) - set(SECTIONS))
    if unknown:
        raise InputError(f"unknown section(s) {unknown} in the training config: expected {list(SECTIONS)}")
    if chosen is None:
        raise InputError(
            f"no training method: expected one of {[m.value for m in Method]} on the command line (train METHOD "
            '--config FILE) or as the config\'s method = "...", found neither'
        )
    hints = typing.get_type_hints(TrainingConfig)
    sections = {name: _section(hints[name], table.get(name, {}), name, root) for name in SECTIONS}
    config = TrainingConfig(method=_convert(Method, chosen, "method", root), **sections)
    if written is not None and written != config.method.value:
        log.warning("training method %r (command line) overrides the config's method = %r", config.method.value,
                    written)  # fmt: skip
    if "architecture" in table and (config.method is not Method.BASE or config.model.transformer is not None):
        raise InputError(
            "[architecture] shapes a new transformer (base training without model.transformer); this run "
            f"{'loads model.transformer' if config.model.transformer else 'trains ' + config.method.value}: drop it"
        )
    return config


def _section(cls: type, values: Any, name: str, root: Path) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"[{name}] must be a table of settings, found {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(
            f"unknown setting(s) {', '.join(f'{name}.{k}' for k in unknown)}: [{name}] takes {list(known)}"
        )
    missing = [k for k, f in known.items() if k not in values and f.default is f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"missing setting(s) {', '.join(f'{name}.{k}' for k in missing)}")
    return cls(**{k: _convert(hints[k], v, f"{name}.{k}", root) for k, v in values.items()})


def _convert(kind: Any, value: Any, name: str, root: Path) -> Any:
    """``value`` as the annotated type ``kind``, or an ``InputError`` naming the setting."""
    if isinstance(kind, types.UnionType):  # X | None
        inner = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _convert(inner[0], value, name, root)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list):
            raise InputError(f"{name} must be a list, found {value!r}")
        return tuple(_convert(typing.get_args(kind)[0], v, name, root) for v in value)
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            raise InputError(f"{name} must be one of {[m.value for m in kind]}, found {value!r}") from None
    if kind is Path:
        if not isinstance(value, str):
            raise InputError(f"{name} must be a path, found {value!r}")
        return root / Path(value).expanduser()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{name} must be {kind.__name__}, found {value!r}")
    return value


def toml_reader() -> types.ModuleType:
    """``tomllib`` (Python 3.11+), or its backport ``tomli`` on 3.10 (the ``train`` extra installs it)."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ModuleNotFoundError:
        raise InputError(
            "reading a training config on Python 3.10 needs tomli: pip install 'pixart-delta[train]'"
        ) from None
    return tomli
