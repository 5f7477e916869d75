"""``generate`` refuses before it warns: a bad model file (T5, VAE, LoRA, ControlNet) or a value the run would refuse
(a prompt) is one error line, with no warning of a run that will not happen before it; a file's error names the
option it was given to."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.pipeline import generation

OUTSIDE = "a fox"  # outside the shapes world: the embedded transformer warns of it once the checks pass


def argv(tmp_path: Path, *extra: str) -> list[str]:
    models = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
    return ["generate", *models, "--prompt", OUTSIDE, "--out", str(tmp_path / "x.png"), *extra]


@pytest.fixture
def where(tmp_path: Path) -> dict[str, Path]:
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64)).save(picture)
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "empty.safetensors").touch()
    _write_lora(tmp_path / "lora.safetensors")
    _write_lora(tmp_path / "nan.safetensors", float("nan"))
    return {
        "picture": picture,
        "folder": tmp_path / "empty-folder",
        "empty": tmp_path / "empty.safetensors",
        "lora": tmp_path / "lora.safetensors",
        "nan": tmp_path / "nan.safetensors",
        "taesd": embedded_path("shapes-taesd"),
        "t5": embedded_path("shapes-t5") / "model.safetensors",
        "lcm": embedded_path("shapes-lcm"),
    }


NOT_A_CHECKPOINT = "a PNG picture, not a checkpoint"
CONTROL = ("--control-image", "{picture}")


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--t5", "{picture}"), "--t5 {picture}: " + NOT_A_CHECKPOINT),
        (("--t5", "{folder}"), "--t5 {folder}: a folder, but no T5 weights in it"),
        (("--t5", "{taesd}"), "--t5 {taesd}: not a T5 text encoder: it looks like a TAESD autoencoder"),
        (("--vae", "{picture}"), "--vae {picture}: " + NOT_A_CHECKPOINT),
        (("--vae", "{t5}"), "--vae {t5}: not a VAE: it looks like a T5 text encoder"),
        (
            ("--vae", "{folder}"),  # in a VAE's terms, not a transformer's (it was "no model weights ... transformer/")
            "--vae {folder}: a folder, but no VAE weights in it: expected diffusion_pytorch_model.safetensors (or a "
            "sharded index) in the folder or in its vae/ subfolder",
        ),
        (("--vae", "{lora}"), "--vae {lora}: not a VAE: it looks like a LoRA (give it as --lora)"),  # the option
        (
            ("--transformer", "{lora}"),
            "--transformer {lora}: not a PixArt transformer: it looks like a LoRA (give it as --lora)",
        ),
        (
            ("--transformer", "{taesd}"),
            "--transformer {taesd}: not a PixArt transformer: it looks like a TAESD autoencoder (give it as --vae)",
        ),
        (("--lora", "{picture}"), "--lora {picture}: " + NOT_A_CHECKPOINT),
        (("--lora", "{lcm}"), "shapes-lcm.safetensors"),
        (("--lora", "{folder}"), "--lora {folder}: a folder without adapter_model.safetensors"),
        (("--lora", "{empty}"), "--lora {empty}: not a checkpoint: the file is empty (0 bytes)"),
        (("--lora", "{nan}"), "--lora {nan}: 'transformer.transformer_blocks.0.attn1.to_q.lora_A.weight' holds NaN"),
        (("--controlnet", "{picture}", *CONTROL), "--controlnet {picture}: " + NOT_A_CHECKPOINT),
        (("--controlnet", "{taesd}", *CONTROL), "--controlnet {taesd}: not a PixArt ControlNet: it looks like a TAESD"),
        (
            ("--controlnet", "{folder}", *CONTROL),  # a ControlNet's terms, not a transformer's
            "--controlnet {folder}: a folder, but no ControlNet weights in it: expected "
            "diffusion_pytorch_model.safetensors (or a sharded index) in the folder or in its controlnet/ subfolder",
        ),
        (("--control-image", "{picture}"), "--control-image needs --controlnet"),
        (("--prompt", "\udcff"), "prompt 2 holds a lone surrogate"),
        (("--negative-prompt", "\udcff", "--sampler", "euler", "--guidance", "2"), "negative prompt 1 holds a lone"),
    ],
    ids=[
        "t5-picture",
        "t5-empty-folder",
        "t5-taesd",
        "vae-picture",
        "vae-t5",
        "vae-empty-folder",
        "vae-lora",
        "transformer-lora",
        "transformer-taesd",
        "lora-picture",
        "lora-transformer",
        "lora-empty-folder",
        "lora-empty-file",
        "lora-nan",
        "controlnet-picture",
        "controlnet-taesd",
        "controlnet-empty-folder",
        "no-controlnet",
        "prompt",
        "negative-prompt",
    ],
)
def test_a_bad_file_or_value_is_refused_before_any_warning(
    tmp_path: Path, where: dict[str, Path], nothing_loads, capsys, caplog, extra: tuple[str, ...], said: str
) -> None:
    given = [e.format(**where) for e in extra]
    with caplog.at_level(logging.WARNING):
        assert main(argv(tmp_path, *given)) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert said.format(**where) in err
    assert caplog.records == [], caplog.text


def test_a_run_past_the_checks_warns_then_reads_each_file_once(tmp_path: Path, nothing_loads, caplog, monkeypatch):
    """The files are checked before the warnings, and the run does not check them again (a .pth is read whole)."""
    calls: list[str] = []
    for name in ("inspect_t5", "inspect_vae", "inspect_controlnet", "read_lora"):
        real = getattr(generation, name)
        monkeypatch.setattr(generation, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    lora = tmp_path / "lora.safetensors"
    _write_lora(lora)
    hed = tmp_path / "hed.png"
    Image.new("RGB", (128, 128)).save(hed)
    extra = ("--controlnet", "shapes-controlnet", "--control-image", str(hed), "--lora", str(lora))
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main(argv(tmp_path, *extra))
    assert sorted(calls) == ["inspect_controlnet", "inspect_t5", "inspect_vae", "read_lora"]
    assert len([r for r in caplog.records if r.getMessage().startswith("shapes-lcm was trained only on")]) == 1


def _write_lora(path: Path, value: float = 0.0) -> None:
    """A PEFT LoRA of rank 1 on the embedded transformer's first attention query, every weight ``value``."""
    import torch
    from safetensors.torch import save_file

    from pixart_delta_core.models.transformer import inspect_transformer

    width = inspect_transformer(embedded_path("shapes-lcm")).config.hidden_size
    prefix = "transformer.transformer_blocks.0.attn1.to_q"
    save_file(
        {f"{prefix}.lora_A.weight": torch.full((1, width), value), f"{prefix}.lora_B.weight": torch.zeros(width, 1)},
        str(path),
    )
