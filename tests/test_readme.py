"""The README's Python examples run as written, on tiny random models in place of the released files.

Only the file names and the device change: each name the README uses is swapped for a tiny model in
the same layout (trained, as far as its files say, at 256 px, so that the examples' default size is
small), and ``"cuda"`` for ``"cpu"``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixart_delta_core.demo.files import DEMO_TRANSFORMER, demo_transformer, write_demo_models
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.controlnet import ControlNetTransformer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The README's file names -> tiny random models in the same layouts."""
    folder = tmp_path_factory.mktemp("readme")
    base = demo_transformer(config=replace(DEMO_TRANSFORMER, sample_size=32))  # 256 px by default: a fast test
    demo = write_demo_models(folder, transformer=base)
    controlnet = randomize_(ControlNetTransformer.from_base(base, 1), seed=4)
    whole = {f"base_model.{k}": v for k, v in base.reference_state_dict().items()}  # the reference's layout
    torch.save({"state_dict": {**whole, **controlnet.state_dict()}}, folder / "controlnet.pth")
    Image.new("RGB", (64, 64)).save(folder / "hed.png")
    return {
        "PixArt-LCM-XL-2-1024-MS/": demo.transformer,
        "PixArt-XL-2-1024-MS.pth": demo.transformer,
        "PixArt-XL-2-1024-ControlNet.pth": folder / "controlnet.pth",
        "t5xxl_fp16.safetensors": demo.t5,
        "t5_tokenizer/": demo.tokenizer,
        "sd-vae-ft-ema/": demo.vae,
        "hed.png": folder / "hed.png",
        "house.png": folder / "house.png",
    }


def test_the_readme_has_python_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_a_readme_example_runs(example: str, files: dict[str, Path], one_thread) -> None:
    code = example.replace('"cuda"', '"cpu"')
    for name, path in files.items():
        code = code.replace(f'"{name}"', repr(str(path)))
    unknown = re.findall(r'"[^"\s]+\.(?:pth|safetensors|png)"|"[\w.-]+/"', code)
    assert not unknown, f"the README names files this test has no tiny model for: {unknown}"
    exec(compile(code, "README.md", "exec"), {})
