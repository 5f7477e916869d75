"""Copy the embedded model's trained files into the pack (pixart_delta_core/embedded_model/), in fp16.

    python scripts/embedded_model/ship.py TEACHER LCM CONTROLNET AUTOENCODER T5_FOLDER

Each file keeps its layout and metadata (the transformers' head count); only the dtype changes (the
autoencoder's vae_scale and vae_shift stay fp32: they are exact constants, not weights).

    python scripts/embedded_model/ship.py --as-shipped FILE...

rewrites each fp32 checkpoint FILE in place as its fp16 copy in the pack reads back upcast: every weight that
``half`` halves rounded to fp16 and kept fp32, the rest as it was. Some runs started from such copies, their
fp32 checkpoints lost (train.sh); rounding a file twice changes nothing, so a rerun may repeat it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pixart_delta_core.demo.embedded_files import FOLDER, MODELS, embedded_path  # noqa: E402


def half(source: Path, target: Path) -> None:
    with safe_open(source, "pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    tensors = {k: (v.half() if v.is_floating_point() and v.ndim else v).contiguous() for k, v in tensors.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=metadata)
    print(f"{source} -> {target} ({target.stat().st_size / 2**20:.1f} MiB)")


def as_shipped(path: Path) -> None:
    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    rounded = {k: (v.half().to(v.dtype) if v.is_floating_point() and v.ndim else v) for k, v in tensors.items()}
    part = path.with_name(path.name + ".part")  # written whole, then put in its place: an interruption spoils nothing
    save_file({k: v.contiguous() for k, v in rounded.items()}, str(part), metadata=metadata)
    part.replace(path)
    print(f"{path}: its weights rounded to fp16, as shipped (kept fp32)")


def main(teacher: str, lcm: str, controlnet: str, autoencoder: str, t5: str) -> None:
    for name, source in (("shapes-teacher", teacher), ("shapes-lcm", lcm), ("shapes-controlnet", controlnet),
                         ("shapes-taesd", autoencoder)):  # fmt: skip
        half(Path(source), embedded_path(name))
    target = embedded_path("shapes-t5")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(t5, target)
    total = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    print(f"{len(MODELS)} models, {total / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-shipped"]:
        for name in sys.argv[2:]:
            as_shipped(Path(name))
    else:
        main(*sys.argv[1:6])
