"""Safe, lazy reading of checkpoint files and diffusers folders: names and shapes first, one tensor at a time after.

Every format is recognised by its structure, not its extension (``formats``); safetensors headers are
checked against all the format's rules (``safetensors_file``); PyTorch files are checked for damage and
unpickled with ``weights_only=True`` only (``torch_file``). Any bytes and any path give either the
tensors the file holds or a ``CheckpointError`` naming the path, what was expected and what was found.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from ..errors import CheckpointError
from .formats import CheckpointFormat, check_regular_file, path_kind, sniff_format
from .safetensors_file import SafetensorsSource
from .sources import TensorSource, printable_path, reading
from .torch_file import TorchFileSource


def open_checkpoint(path: str | Path, kind: str = "model", subfolder: str = "transformer") -> TensorSource:
    """Open a checkpoint file (.safetensors, .pth, .bin) or a diffusers model folder for lazy reading: a folder's
    weights are in it or in its ``subfolder`` (a pipeline's ``transformer/``, ``vae/``), and a folder without them
    is refused as one holding no ``kind`` ("model", "VAE") weights.

    Raises ``CheckpointError`` for a path that is not a regular file or folder, cannot be read, or holds
    anything but an undamaged checkpoint.
    """
    path = Path(path)
    if stat.S_ISDIR(path_kind(path)):
        return _open_folder(path, kind, subfolder)
    if sniff_format(path) is CheckpointFormat.SAFETENSORS:
        return _safetensors([path], path)
    return TorchFileSource(path)


def _safetensors(paths: list[Path], origin: Path) -> SafetensorsSource:
    source = SafetensorsSource(paths, printable_path(origin))
    source.path = origin
    return source


_FOLDER_WEIGHTS = ("diffusion_pytorch_model", "model")
STEP_FILE = "step.json"  # in a training checkpoint folder: its step and the name of its weights file


def _open_folder(folder: Path, kind: str, subfolder: str) -> TensorSource:
    """A diffusers model folder, a pipeline folder whose ``subfolder`` holds the model, or a training
    checkpoint folder (its ``step.json`` names the weights: the folder also holds accelerate's own files)."""
    if (folder / STEP_FILE).is_file():
        weights = read_json(folder / STEP_FILE).get("weights")
        if not isinstance(weights, str) or not (folder / weights).is_file():
            raise CheckpointError(
                f"{printable_path(folder)}: a training checkpoint whose {STEP_FILE} names no weights file in it "
                f"(found {weights!r})"
            )
        return open_checkpoint(folder / weights)
    for candidate in (folder, folder / subfolder):
        for stem in _FOLDER_WEIGHTS:
            index = candidate / f"{stem}.safetensors.index.json"
            if index.is_file():
                return _sharded(index, candidate)
            single = candidate / f"{stem}.safetensors"
            if single.is_file():
                return _safetensors([single], candidate)
            pickled = candidate / f"{stem}.bin"
            if pickled.is_file():
                return TorchFileSource(pickled)
    raise CheckpointError(
        f"{printable_path(folder)}: a folder, but no {kind} weights in it: expected diffusion_pytorch_model"
        f".safetensors (or a sharded index) in the folder or in its {subfolder}/ subfolder"
    )


def _sharded(index: Path, folder: Path) -> SafetensorsSource:
    """The shards a ``*.safetensors.index.json`` names, once they hold exactly the tensors it lists, each
    in the shard it says (plain file names beside the index)."""
    name = printable_path(index)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{name}: expected a weight_map from tensor names to shard file names, found {type(weight_map).__name__}"
        )
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard in ("", ".", "..") or Path(shard).name != shard:
            raise CheckpointError(f"{name}: shard {shard!r} is not a file name in the index's folder")
    source = _safetensors([folder / s for s in shards], folder)
    misplaced = sorted(k for k in weight_map if k not in source or source.file_of(k).name != weight_map[k])
    unlisted = sorted(source.keys() - weight_map.keys())
    problems = [f"{misplaced[:4]} are not in the shards it names"] if misplaced else []
    problems += [f"the shards hold {unlisted[:4]}, which it does not list"] if unlisted else []
    if problems:
        raise CheckpointError(f"{name}: the index does not match its shards: " + "; ".join(problems))
    return source


def read_json(path: Path) -> dict:
    """A JSON object from a regular file; ``CheckpointError`` naming the file for anything else."""
    check_regular_file(path)
    name = printable_path(path)
    with reading(path):
        raw = path.read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{name}: expected UTF-8 JSON, found text that is not UTF-8 ({err})") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{name}: expected UTF-8 JSON, found text that is not valid JSON ({err.msg} at line {err.lineno} column "
            f"{err.colno})"
        ) from err
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{name}: expected UTF-8 JSON, found text that is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{name}: expected a JSON object, found {type(value).__name__}")
    return value


def folder_config(source: TensorSource) -> dict:
    """The diffusers ``config.json`` of a diffusers folder's weights, with the pipeline class if known.

    A lone file is only read with the folder around it when it carries the diffusers file name, so a
    ``config.json`` of some other model in a shared models folder is never taken for its own.
    """
    base = source.path
    if base is None:
        return {}
    if base.is_dir():
        folder = base
    elif base.name.startswith("diffusion_pytorch_model"):
        folder = base.parent
    else:
        return {}
    config: dict = {}
    path = folder / "config.json"
    if path.is_file():
        config = read_json(path)
        _class_name(config, path)
    pipeline = folder.parent / "model_index.json"
    if pipeline.is_file():
        config["_pipeline_class"] = _class_name(read_json(pipeline), pipeline)
    return config


def _class_name(config: dict, path: Path) -> str | None:
    """A diffusers JSON file's ``_class_name``: text when present, else ``CheckpointError`` naming the file."""
    name = config.get("_class_name")
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{printable_path(path)}: _class_name must be a class name (text), found {name!r}")
    return name
