"""An empty path given to a file option is refused naming the option: ``Path("")`` is the current folder, which the
run's later refusals showed as "." ("--lora ''" was ".: a folder without adapter_model.safetensors...")."""

from __future__ import annotations

import pytest

from pixart_delta_core.cli import main

MODELS = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--prompt", "x"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["generate", *MODELS, "--lora", ""], "argument --lora: expected a LoRA file or folder, found an empty path"),
        (
            ["generate", *MODELS, "--lora", ":0.5"],
            "argument --lora: :0.5: expected a LoRA file or folder before the strength, found nothing",
        ),
        (["generate", *MODELS, "--transformer", ""], "argument --transformer: expected a file or folder, found"),
        (["generate", *MODELS, "--t5", ""], "argument --t5: expected a file or folder, found an empty path"),
        (["generate", *MODELS, "--vae", ""], "argument --vae: expected a file or folder, found an empty path"),
        (["generate", *MODELS, "--controlnet", ""], "argument --controlnet: expected a file or folder, found an empty"),
        (["generate", *MODELS, "--tokenizer", ""], "argument --tokenizer: expected a folder, found an empty path"),
        (["generate", *MODELS, "--init-image", ""], "argument --init-image: expected an image file, found an empty"),
        (["generate", *MODELS, "--control-image", ""], "argument --control-image: expected an image file, found an"),
        (["generate", *MODELS, "--out", ""], "argument --out: expected an image file name, found an empty path"),
        (["info", "shapes-lcm", ""], "argument files: expected a file or folder, found an empty path"),
        (["demo", "--out", ""], "argument --out: expected an image file name, found an empty path"),
        (["train", "--config", ""], "argument --config: expected a TOML file, found an empty path"),
        (["judge", ""], "argument images: expected a picture, found an empty path"),
        (["world", "--out", ""], "argument --out: expected a folder for the data set, found an empty path"),
        (["scene", "--out", ""], "argument --out: expected an image file name, found an empty path"),
    ],
)
def test_an_empty_path_is_refused_naming_its_option(capsys, argv: list[str], said: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in last, last
    assert "." not in last.split("error: ", 1)[1].replace(":0.5", ""), last  # no "." for the folder never given
