"""What a careless first run meets: every check of ``generate`` comes before any model loads."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixart_delta_core.cli import build_parser, main
from pixart_delta_core.demo.embedded_files import MODELS, by_name, embedded_model, embedded_path
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.errors import InputError
from pixart_delta_core.models.strengths import MAX_CONTROL_STRENGTH
from pixart_delta_core.pipeline import generation
from pixart_delta_core.pipeline.generation import PixArtPipeline
from tests.helpers import png_header


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


def generate_args(files, tmp_path: Path, **changes: str | None) -> list[str]:
    options = {"--transformer": str(files.transformer), "--t5": str(files.t5), "--vae": str(files.vae)}
    options |= {"--tokenizer": str(files.tokenizer), "--prompt": "a fox", "--out": str(tmp_path / "x.png")}
    options |= {"--device": "cpu"} | changes
    return ["generate", *(item for key, value in options.items() if value is not None for item in (key, value))]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"--vae": "missing-vae"}, "--vae missing-vae: no such file or folder"),
        ({"--t5": "missing-t5.safetensors"}, "--t5 missing-t5.safetensors: no such file or folder"),
        ({"--transformer": "none.pth"}, "--transformer none.pth: no such file or folder"),
        ({"--tokenizer": "no-tokenizer"}, "--tokenizer no-tokenizer: no such file or folder"),
        ({"--init-image": "init.png"}, "--init-image init.png: no such file or folder"),
        ({"--control-image": "hed.png"}, "--control-image hed.png: no such file or folder"),
        ({"--tokenizer": None}, "no T5 tokenizer found .*--tokenizer on the command line"),
        ({"--tokenizer": "{file}"}, "a-file: no T5 tokenizer there: expected a folder with tokenizer.json"),
        ({"--tokenizer": "{out}"}, "no T5 tokenizer there"),
        ({"--controlnet": "{transformer}"}, "--controlnet needs --control-image"),
        ({"--vae": "{t5}"}, "demo-t5.safetensors: not a VAE: it looks like a T5 text encoder"),
        (  # its kind is read before a tokenizer beside it is looked for
            {"--t5": "{taesd}", "--tokenizer": None},
            "shapes-taesd.safetensors: not a T5 text encoder: it looks like a TAESD autoencoder",
        ),
        ({"--controlnet": "{taesd}", "--control-image": "{image}"}, "not a PixArt ControlNet: it looks like a TAESD"),
        ({"--control-image": "{image}"}, "a control image needs a ControlNet.*--controlnet FILE on the command line"),
        ({"--out": "{out}/x.txt"}, r"\.txt is not an image format"),
        ({"--out": "{out}/noextension"}, "the name has no extension: give one such as .png"),
        ({"--out": "{out}/x.xbm"}, r"\.xbm is not an image format"),  # Pillow's XBM saver writes 1-bit only
        ({"--init-image": "{image}", "--out": "{image}"}, "is the --init-image: the picture would replace it"),
        ({"--out": "{out}"}, "is a folder: give a file name"),
        ({"--out": "{file}/x.png"}, "a-file is a regular file, not a folder"),
        ({"--device": "tpu"}, "--device: device 'tpu' is not a device name"),
        ({"--width": "1", "--height": "1"}, "must be at least 16 px, found 1"),
        ({"--strength": "0.5"}, "--strength 0.5 needs --init-image"),
        ({"--control-start": "0.8", "--control-end": "0.2"}, "--control-start 0.8 and --control-end 0.2 must"),
    ],
)
def test_a_wrong_argument_stops_before_any_model_loads(
    files, tmp_path: Path, nothing_loads, capsys, changes: dict, message: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    image = tmp_path / "hed.png"
    Image.new("RGB", (64, 64)).save(image)
    where = {"out": tmp_path, "file": a_file, "transformer": files.transformer, "image": image, "t5": files.t5}
    where["taesd"] = embedded_path("shapes-taesd")
    changes = {k: v if v is None else v.format(**where) for k, v in changes.items()}
    assert main(generate_args(files, tmp_path, **changes)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"--transformer": "shapes-lcmm"},
            "--transformer shapes-lcmm: no such file or folder; the pack's embedded transformers are: shapes-lcm, "
            "shapes-teacher",
        ),
        (
            {"--t5": "shapes-edges"},  # the ControlNet's file, as ComfyUI lists it
            "--t5 shapes-edges: no such file or folder; shapes-edges is the pack's embedded ControlNet: give it as "
            "--controlnet shapes-controlnet; the pack's embedded T5 text encoder is shapes-t5",
        ),
        (
            {"--vae": "shapes-t5"},
            "--vae shapes-t5: shapes-t5 is the pack's embedded T5 text encoder: give it as --t5 shapes-t5; the pack's "
            "embedded VAE is shapes-taesd",
        ),
        (
            {"--vae": "shapes-edges.safetensors"},
            "--vae shapes-edges.safetensors: no such file or folder; shapes-edges.safetensors is the pack's "
            "embedded ControlNet: give it as --controlnet shapes-controlnet; the pack's embedded VAE is shapes-taesd",
        ),
    ],
)
def test_a_bare_name_of_no_file_says_which_embedded_models_the_option_takes(
    files, tmp_path: Path, nothing_loads, capsys, changes: dict, message: str
) -> None:
    assert main(generate_args(files, tmp_path, **changes)) == 1
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("option", ["--controlnet", None])  # None: info, which takes every kind
@pytest.mark.parametrize("name", ["shapes-edges", "shapes-edges.safetensors", "shapes-controlnet"])
def test_an_embedded_model_is_taken_by_its_files_name_as_comfyui_lists_it(option: str | None, name: str) -> None:
    assert by_name(name, option) == embedded_path("shapes-controlnet")
    assert by_name("shapes-lcm.safetensors", "--transformer") == embedded_path("shapes-lcm")


def test_a_file_here_of_an_embedded_models_file_name_is_that_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes-edges.safetensors").write_bytes(b"")  # a user's own file beside them comes first
    assert by_name("shapes-edges.safetensors", "--controlnet") == Path("shapes-edges.safetensors")


def test_an_embedded_models_name_is_read_back_from_its_path(tmp_path: Path) -> None:
    for name in MODELS:
        assert embedded_model(embedded_path(name)) == name
    assert embedded_model(tmp_path / "shapes-lcm.safetensors") is None


def test_the_generate_help_names_the_embedded_models_taesd_and_the_control_strength(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping: argparse would break a name at its hyphen
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # an option's help starts on its own line when it is long
    helps = [
        "--transformer TRANSFORMER PixArt transformer file or diffusers folder, or the embedded shapes-lcm or "
        "shapes-teacher --t5",
        "--t5 T5 T5 encoder: single file or HF/diffusers folder, or the embedded shapes-t5 --vae",
        "--vae VAE VAE: LDM single file or diffusers folder; TAESD: ComfyUI's file, the taesd_encoder and "
        "taesd_decoder files or diffusers folder, or the embedded shapes-taesd --tokenizer",
        "--controlnet CONTROLNET ControlNet file (default: --transformer's, if it has one), or the embedded "
        "shapes-controlnet",
    ]
    for help_text in helps:
        assert help_text in out
    named = re.findall(r"the embedded ([\w-]+(?: or [\w-]+)*)", out)
    assert sorted(" or ".join(named).split(" or ")) == sorted(MODELS)  # every embedded model, once
    assert "--control-strength CONTROL_STRENGTH how strongly the edge map steers" in out
    bounds = f"{-MAX_CONTROL_STRENGTH:g} to {MAX_CONTROL_STRENGTH:g}"  # the engine's check_control_strength's
    assert f"the ControlNet's output times this, {bounds} (default 1" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA device exists here: nothing to refuse")
def test_cuda_on_a_machine_without_it_is_refused_first(files, tmp_path: Path, nothing_loads, capsys) -> None:
    assert main(generate_args(files, tmp_path, **{"--device": "cuda"})) == 1
    assert "--device: device 'cuda': this torch" in capsys.readouterr().err


def test_the_python_api_checks_images_before_t5_runs(files, tmp_path: Path, nothing_loads) -> None:
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    with pytest.raises(InputError, match=r"init image .*missing.png does not exist"):
        pipeline("a fox", init_image=tmp_path / "missing.png", strength=0.5)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"control image .*broken.png is not an image that can be read"):
        pipeline("a fox", control=generation.Control(tmp_path / "broken.png"))


@pytest.mark.parametrize("argv", [["-v", "info", "x"], ["info", "-v", "x"], ["demo", "--verbose"]])
def test_verbose_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args([a for a in argv if not a.startswith("-")] or ["demo"]).verbose is False


def test_subcommand_help_describes_the_options(capsys) -> None:
    for command in ("demo", "info", "generate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "the grid written (default: outputs/demo.png)" in out
    assert "a PixArt transformer, a PixArt ControlNet, a T5 text encoder, a VAE or a PixArt LoRA" in out
    assert "--training-resolution PX" in out and "--heads" in out
    # the size's default with an init image is the init image's (test_img2img_without_a_size_keeps_...)
    assert "--width WIDTH pixels (default: the init image's with --init-image (to the nearest multiple of 16)" in out


@pytest.mark.parametrize(
    "said",
    [
        "--init-image INIT_IMAGE img2img: start from this image; one",
        "--control-image CONTROL_IMAGE edge map steering the generation, of the kind the ControlNet was trained on "
        "(HED edges for the reference's; white outlines on black, as `world` draws them, for shapes-controlnet); one",
    ],
    ids=["init-image", "control-image"],
)
def test_the_image_options_help_says_another_aspect_ratio_is_cropped(said: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert (
        f"{said} of another aspect ratio than the picture is scaled to cover it and centre-cropped, with a warning"
        in out
    )


def test_img2img_without_a_size_keeps_the_init_image_size(files, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (96, 48), (200, 40, 40)).save(init)
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    result = pipeline("a fox", init_image=init, strength=0.5, steps=2, resolution_binning=False)
    assert result.size == (48, 96) and result.images[0].size == (96, 48)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"--device": "cuda:99"}, "--device: device 'cuda:99'"),
        ({"--steps": "100"}, "--steps 100: lcm (this model's sampler when no --sampler is given) takes 1 to 50"),
        ({"--sampler": "euler", "--lcm-timesteps": "diffusers"}, "--lcm-timesteps diffusers is for --sampler lcm"),
        ({"--vae": "{t5}"}, "not a VAE: it looks like a T5 text encoder"),  # refused as the files are recognised
    ],
    ids=["device", "steps", "lcm-timesteps", "file-kind"],
)
def test_a_refused_run_leaves_no_output_folder(
    files, tmp_path: Path, nothing_loads, capsys, changes: dict[str, str], said: str
) -> None:
    changes = {k: v.format(t5=files.t5) for k, v in changes.items()} | {
        "--out": str(tmp_path / "new" / "deep" / "x.png")
    }
    assert main(generate_args(files, tmp_path, **changes)) == 1
    assert said in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# --- image sizes: what the init and control images' headers say, checked before any model loads ------------------

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
WORLD_PROMPT = "a small red circle at the top left, on a white background"


@pytest.mark.parametrize(
    ("option", "width", "height", "said"),
    [
        ("--init-image", 12000, 12000, "is 12000x12000 px (width x height, 144.0 megapixels): expected at most 134.2"),
        ("--control-image", 12000, 12000, "is 12000x12000 px (width x height, 144.0 megapixels): expected at most"),
        ("--control-image", 4, 4, "is 4x4 px (width x height): expected at least 32 px a side"),
        ("--init-image", 8, 64, "is 8x64 px (width x height): expected at least 16 px a side"),
    ],
)
def test_an_image_of_a_size_that_cannot_work_is_refused_by_its_option(
    files, tmp_path: Path, nothing_loads, capsys, option: str, width: int, height: int, said: str
) -> None:
    image = png_header(tmp_path / "image.png", width, height)  # a header only: the check must not decode it
    extra = {"--controlnet": str(files.transformer)} if option == "--control-image" else {}
    assert main(generate_args(files, tmp_path, **{option: str(image)}, **extra)) == 1
    assert capsys.readouterr().err.startswith(f"error: {option} {image} {said}")
    assert not (tmp_path / "x.png").exists()


def test_an_init_images_size_is_drawn_to_a_multiple_of_16_or_refused_naming_the_init_image(
    tmp_path: Path, nothing_loads, capsys, caplog
) -> None:
    """The embedded model draws the size asked, a multiple of 16: a 1000 x 750 photo as the size is drawn at the
    nearest, 992 x 752 (it is scaled to the picture anyway); one too large to draw is refused, naming it."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (1000, 750)).save(photo)
    argv = ["generate", *EMBEDDED, "--prompt", WORLD_PROMPT, "--init-image", str(photo)]
    with pytest.raises(AssertionError, match="a model was loaded"):  # past every check
        main([*argv, "--out", str(tmp_path / "x.png")])
    assert "this picture is 992x752 px (width x height, the init image's size)" in caplog.text
    capsys.readouterr()  # the stage it reached
    large = png_header(tmp_path / "large.png", 4800, 4800)  # decoded, scaled: fine with a width and height given
    assert main([*argv[:-1], str(large), "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == (
        f"error: --init-image {large} is 4800x4800 px (width x height), the picture's size when no width or height is "
        f"given: 4800x4800 is 23.0 megapixels; the limit is 16.8 (4096x4096); give a width and height (--width and "
        f"--height on the command line)\n"
    )


@pytest.mark.parametrize(
    ("init", "extra", "said"),
    [
        ((256, 256), [], "this picture is 256x256 px (width x height, the init image's size), so expect it"),
        ((1024, 512), [], "this picture is 1024x512 px (width x height, the init image's size), so expect it"),
        (None, ["--width", "256"], "this picture is 256x128 px (width x height), so expect it to be unclear ("),
        (
            None,
            ["--width", "1024", "--height", "1024"],
            "so expect it to be unclear and slow (64 times the pixels: each step 64 to 4,096 times as long) (",
        ),
        ((256, 256), ["--width", "128", "--height", "128"], None),
        (None, [], None),
    ],
)
def test_an_embedded_transformer_warns_once_of_a_size_it_was_not_trained_at(
    tmp_path: Path, nothing_loads, caplog, init: tuple[int, int] | None, extra: list[str], said: str | None
) -> None:
    if init is not None:
        Image.new("RGB", init).save(tmp_path / "init.png")  # decoded: the run goes past the checks
        extra = [*extra, "--init-image", str(tmp_path / "init.png")]
    argv = ["generate", *EMBEDDED, "--prompt", WORLD_PROMPT, "--out", str(tmp_path / "x.png"), *extra]
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main(argv)  # past every check: the warnings come after them, before the load
    warned = [r.getMessage() for r in caplog.records if "was trained at" in r.getMessage()]
    if said is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith("shapes-lcm was trained at 128x128 px only; "), warned
        assert said in warned[0] and warned[0].endswith("(--width 128 --height 128 draws the size it knows)")


MULTIPLE = "width must be a multiple of 16 px, found 100 (nearest: 96 or 112)"


@pytest.mark.parametrize(
    ("refused", "said"),
    [
        (["--steps", "2000"], "--steps 2000: lcm (this model's sampler when no --sampler is given) takes 1 to 50"),
        (["--width", "100"], f"--width 100: {MULTIPLE}"),
        (["--no-binning", "--width", "100", "--height", "128"], f"--width 100 --height 128: {MULTIPLE}"),
        (["--init-image", "{wide}"], "--init-image {wide} is 4800x4800 px (width x height), the picture's size when"),
        (["--width", "4096", "--height", "4096", "--batch", "64"], "--width 4096 --height 4096 --batch 64: 64 images"),
    ],
    ids=["steps", "width", "no-binning", "init-image-size", "batch"],
)
def test_a_refused_run_warns_of_nothing(tmp_path: Path, nothing_loads, capsys, caplog, refused, said) -> None:
    """Refusals first: a run refused shows its error alone, not the warnings of a run that will not happen; the size
    it would draw too, from the options, the init image's header and the transformer's."""
    wide = png_header(tmp_path / "wide.png", 4800, 4800)  # a header only: refused (too large) before it is decoded
    argv = ["generate", *EMBEDDED, "--prompt", "a purple elephant", "--out", str(tmp_path / "x.png")]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, *(option.format(wide=wide) for option in refused)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said.format(wide=wide)}") and err.count("\n") == 1, err
    assert caplog.records == []
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main([*argv, "--width", "256"])  # a run not refused: both warnings, then the load
    assert len(caplog.records) == 2, caplog.text


def test_the_written_pictures_size_names_the_init_image_as_its_source(files, tmp_path: Path, capsys) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (96, 48), (200, 40, 40)).save(init)
    extra = {"--init-image": str(init), "--strength": "0.5", "--steps": "2"}
    assert main([*generate_args(files, tmp_path, **extra), "--no-binning"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'x.png'} (96x48, the init image's size, generated at 96x48)\n"


@pytest.mark.parametrize(("given", "used"), [([], 0.75), (["--strength", "1"], 1.0), (["--strength", "0.3"], 0.3)])
def test_an_init_image_without_a_strength_is_denoised_at_the_default(
    files, tmp_path: Path, monkeypatch, given: list[str], used: float
) -> None:
    """At strength 1 an init image would only set the size: without --strength it is denoised at 0.75."""
    from pixart_delta_core.pipeline import generation

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(init)
    seen = {}

    def stop(self, prompt, **options):  # records what the command asked for, loads nothing
        seen.update(options)
        raise InputError("stopped")

    monkeypatch.setattr(generation.PixArtPipeline, "__call__", stop)
    assert main([*generate_args(files, tmp_path, **{"--init-image": str(init)}), *given]) == 1
    assert seen["strength"] == used


LONG = "a" * 300  # over the file system's 255-byte name limit: Path.exists raises OSError on it


@pytest.mark.parametrize(
    "argv",
    [
        ["info", LONG],
        ["generate", *EMBEDDED, "--prompt", WORLD_PROMPT, "--transformer", LONG],
        ["generate", *EMBEDDED, "--prompt", WORLD_PROMPT, "--init-image", f"{LONG}.png"],
        ["generate", *EMBEDDED, "--prompt", WORLD_PROMPT, "--lora", f"{LONG}:0.5"],
        ["judge", f"{LONG}.png"],
    ],
    ids=["info", "transformer", "init-image", "lora", "judge"],
)
def test_a_name_too_long_for_the_file_system_is_the_users_error(capsys, nothing_loads, argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own error, for an option's type
        code = stop.code
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert "not a path this file system can look up (File name too long)" in err and "Traceback" not in err, err
