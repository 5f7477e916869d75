"""The command line's options: Ctrl-C, the help's defaults, options a sampler or the steps make void, and errors
that name the option typed. Each is answered in one line before any model loads."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core import cli, devices
from pixart_delta_core.cli import main, warn_outside_the_world
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.errors import InputError
from pixart_delta_core.pipeline.cli import DTYPES
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.sampling.samplers import SAMPLERS, ControlSchedule, check_control_window, control_steps

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
A_FILE = "--transformer", "a", "--t5", "b", "--vae", "c", "--prompt", "x"  # argparse refuses before they are read


def generate(tmp_path: Path, *extra: str) -> list[str]:
    return ["generate", *EMBEDDED, "--prompt", "a fox", "--out", str(tmp_path / "x.png"), *extra]


def refused(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def refused_by_argparse(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def hed(tmp_path: Path) -> Path:
    Image.new("RGB", (128, 128)).save(tmp_path / "hed.png")
    return tmp_path / "hed.png"


# --- 1. Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_says_interrupted_in_one_line_and_exits_130(monkeypatch, capsys) -> None:
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info", "x.safetensors"]) == 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended
    assert capsys.readouterr().err == "interrupted\n"


# --- 2. the help's defaults, read from the sampler table ----------------------------------------------


def _help(capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    return " ".join(capsys.readouterr().out.split())


def _per_sampler(said: str) -> dict[str, float]:
    """{"lcm": 4, ...} from help text such as "lcm 4, sa_solver/ddim 25"."""
    return {
        name: float(value)
        for names, value in re.findall(r"([\w+/]+) (\d+(?:\.\d+)?)", said)
        for name in names.split("/")
    }


def test_the_steps_and_guidance_help_give_every_samplers_defaults(capsys, monkeypatch) -> None:
    out = _help(capsys, monkeypatch)
    steps = out.split("--steps STEPS default: the sampler's reference setting (")[1].split(")")[0]
    most = out.split("); at most ")[1].split(" --guidance")[0]
    guidance = out.split("--guidance GUIDANCE CFG scale, on above 1 (default: the sampler's reference setting: ")[1]
    guidance = guidance.split(")")[0]
    names = {sampler.value for sampler in SAMPLERS}
    assert _per_sampler(steps) == {s.value: spec.steps for s, spec in SAMPLERS.items()}
    assert _per_sampler(most) == {s.value: spec.max_steps for s, spec in SAMPLERS.items()}
    assert _per_sampler(guidance) == {s.value: spec.guidance for s, spec in SAMPLERS.items()}
    assert set(_per_sampler(guidance)) == names and _per_sampler(guidance)["sa_solver"] == 3.0


def test_the_help_states_the_defaults_of_out_seed_batch_and_sampler(capsys, monkeypatch) -> None:
    out = _help(capsys, monkeypatch)
    assert "(default: outputs/pixart.png, else the first free of pixart-1.png, pixart-2.png...: a run" in out
    assert "--seed SEED noise seed (default: 0)" in out
    assert "--batch BATCH images per prompt (default: 1)" in out
    assert "where control starts, 0 to 1 (default 0: from the first step)" in out
    assert "where control ends, 0 to 1 (default 1: to the last step)" in out
    assert "ddim} the denoising sampler (default: lcm, PixArt-δ's; dpm_solver++ for shapes-teacher, which" in out


class Sampled(Exception):
    """The sampler the pipeline is called with, raised to stop the run there."""


@pytest.mark.parametrize(
    ("extra", "sampler"),
    [
        (["--transformer", "shapes-teacher"], "dpm_solver++"),  # not distilled: LCM is not its sampler
        (["--transformer", "shapes-lcm"], "lcm"),
        (["--transformer", "shapes-teacher", "--sampler", "lcm"], "lcm"),  # one given is kept
        (["--transformer", "shapes-lcm", "--lcm-timesteps", "diffusers"], "lcm"),  # its own is lcm
    ],
)
def test_the_default_sampler_is_the_transformers_own(
    tmp_path: Path, monkeypatch, extra: list[str], sampler: str
) -> None:
    def sample(self, prompts, **options):
        raise Sampled(options["sampler"])

    monkeypatch.setattr(PixArtPipeline, "__call__", sample)
    with pytest.raises(Sampled) as caught:
        main([*generate(tmp_path), *extra])
    assert caught.value.args[0] == sampler


def test_the_dtype_choices_are_the_engines() -> None:
    assert ("auto", *devices.DTYPES) == DTYPES  # auto, then what devices.parse_dtype reads


# --- 3. a control window holding no step --------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            ["--control-start", "0.55", "--control-end", "0.7"],
            "error: --control-start 0.55 and --control-end 0.7 hold no step of the 4 steps run: step i acts where "
            "start <= i/4 < end (i/4: 0, 0.25, 0.5, 0.75); widen the window or raise the steps",
        ),
        (  # 8 steps at strength 0.5 run 4: 0.375 is not among the steps run
            [
                "--steps",
                "8",
                "--init-image",
                "{hed}",
                "--strength",
                "0.5",
                "--control-start",
                "0.3",
                "--control-end",
                "0.45",
            ],
            "error: --control-start 0.3 and --control-end 0.45 hold no step of the 4 steps run",
        ),
        (
            ["--steps", "100", "--sampler", "euler", "--control-start", "0.501", "--control-end", "0.509"],
            "(i/100: 0, 0.01, 0.02, ..., 0.99)",
        ),
    ],
    ids=["lcm", "img2img", "many-steps"],
)
def test_a_control_window_holding_no_step_is_refused(
    tmp_path: Path, hed: Path, nothing_loads, capsys, extra: list[str], said: str
) -> None:
    extra = [e.replace("{hed}", str(hed)) for e in extra]
    argv = generate(tmp_path, "--controlnet", "shapes-controlnet", "--control-image", str(hed), *extra)
    assert said in refused(argv, capsys)


def test_a_control_window_holding_one_step_runs(tmp_path: Path, hed: Path, nothing_loads) -> None:
    argv = generate(tmp_path, "--controlnet", "shapes-controlnet", "--control-image", str(hed))
    with pytest.raises(AssertionError, match="a model was loaded"):  # step 2 of 4 (2/4 = 0.5): past the checks
        main([*argv, "--control-start", "0.5", "--control-end", "0.55"])


def test_the_checked_window_is_the_one_the_sampler_runs() -> None:
    for start, end, steps in [(0.5, 0.55, 4), (0.55, 0.7, 4), (0.0, 1.0, 3), (0.25, 0.5, 4), (0.1, 0.2, 10)]:
        schedule = ControlSchedule(lambda *a: None, start, end)
        assert control_steps(start, end, steps) == [i for i in range(steps) if schedule.active(i, steps)]
    with pytest.raises(InputError, match=r"^start 0\.55 and end 0\.7 hold no step of the 4 steps run"):
        check_control_window(0.55, 0.7, 4)


# --- 4. an option of another sampler ------------------------------------------------------------------


def test_lcm_timesteps_with_another_sampler_is_refused(tmp_path: Path, nothing_loads, capsys) -> None:
    err = refused(generate(tmp_path, "--sampler", "euler", "--lcm-timesteps", "diffusers"), capsys)
    assert err == "error: --lcm-timesteps diffusers is for --sampler lcm only, found --sampler euler: drop it"
    with pytest.raises(AssertionError, match="a model was loaded"):  # with lcm, or not given: past the checks
        main(generate(tmp_path, "--lcm-timesteps", "diffusers"))


def test_lcm_timesteps_does_not_switch_the_default_sampler(tmp_path: Path, nothing_loads, capsys) -> None:
    """The teacher's own sampler is dpm_solver++: --lcm-timesteps alone is refused as with it given, not run as lcm."""
    err = refused(generate(tmp_path, "--transformer", "shapes-teacher", "--lcm-timesteps", "diffusers"), capsys)
    assert err == (
        "error: --lcm-timesteps diffusers is for --sampler lcm only, found dpm_solver++ (this model's sampler when no "
        "--sampler is given): give --sampler lcm, or drop it"
    )
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(generate(tmp_path, "--transformer", "shapes-teacher", "--sampler", "lcm", "--lcm-timesteps", "diffusers"))
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(generate(tmp_path, "--sampler", "euler", "--steps", "2"))


# --- 5. errors naming the option typed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            ["--t5-dtype", "fp8"],
            "argument --t5-dtype: invalid choice: 'fp8' (choose from 'auto', 'fp32', 'fp16', 'bf16')",
        ),
        (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["--strength", "0"], "argument --strength: expected a number in (0, 1], found 0"),
        (["--strength", "1.5"], "argument --strength: expected a number in (0, 1], found 1.5"),
        (["--strength", "nan"], "argument --strength: expected a number in (0, 1], found nan"),
        (["--guidance", "200"], "argument --guidance: expected a number in [0, 100], found 200"),
        (["--guidance", "-1"], "argument --guidance: expected a number in [0, 100], found -1"),
        (["--seed", str(2**64)], f"argument --seed: expected a whole number (0 to {2**64 - 1}), found {2**64}"),
        (["--seed", "-1"], f"argument --seed: expected a whole number (0 to {2**64 - 1}), found -1"),
        (["--control-strength", "nan"], "argument --control-strength: expected a number in [-1000, 1000], found nan"),
        (["--control-strength", "1e30"], "argument --control-strength: expected a number in [-1000, 1000], found 1e"),
        (["--control-strength", "x"], "argument --control-strength: expected a number in [-1000, 1000], found x"),
        (["--control-strength", "-1001"], "argument --control-strength: expected a number in [-1000, 1000], found -1"),
        (["--control-start", "abc"], "argument --control-start: expected a number in [0, 1], found abc"),
        (["--control-end", "1.5"], "argument --control-end: expected a number in [0, 1], found 1.5"),
    ],
)
def test_a_value_out_of_range_names_its_option(capsys, extra: list[str], said: str) -> None:
    assert said in refused_by_argparse(["generate", *A_FILE, *extra], capsys)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            ["--steps", "100"],
            "error: --steps 100: lcm (this model's sampler when no --sampler is given) takes 1 to 50 steps",
        ),
        (["--sampler", "ddim", "--steps", "1001"], "error: --steps 1001: --sampler ddim takes 1 to 1000 steps"),
        (["--lora", "{tmp}/none.safetensors"], "error: --lora {tmp}/none.safetensors: no such file or folder"),
        (["--lora", "{tmp}/none.safetensors:0.5"], "error: --lora {tmp}/none.safetensors: no such file or folder"),
    ],
)
def test_a_value_refused_after_parsing_names_its_option(
    tmp_path: Path, nothing_loads, capsys, extra: list[str], said: str
) -> None:
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert refused(generate(tmp_path, *extra), capsys) == said.replace("{tmp}", str(tmp_path))


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--strength", "0.1", "--steps", "4"], "--strength 0.1 with --steps 4 runs no step: the init image is noised "
         "to run the last int(steps x strength) = int(4 x 0.1) = 0 steps; give --strength 0.25 or more, or more"),
        (["--strength", "0.2"], "--strength 0.2 with lcm's 4 steps (no --steps) runs no step: the init image is "
         "noised to run the last int(steps x strength) = int(4 x 0.2) = 0 steps; give --strength 0.25 or more, or"),
        (["--steps", "1"], "--strength 0.75 (its default) with --steps 1 runs no step: the init image is noised to run "
         "the last int(steps x strength) = int(1 x 0.75) = 0 steps; give --strength 1 or more, or more --steps"),
        (["--strength", "0.3", "--steps", "3"], "give --strength 0.34 or more"),  # int(3 x 0.34) = 1
    ],
)  # fmt: skip
def test_a_strength_that_runs_no_step_names_strength_and_steps(
    tmp_path: Path, nothing_loads, capsys, extra: list[str], said: str
) -> None:
    Image.new("RGB", (128, 128)).save(tmp_path / "start.png")
    assert said in refused(generate(tmp_path, "--init-image", str(tmp_path / "start.png"), *extra), capsys)


def test_a_size_is_checked_by_the_bins_of_the_transformer_header_the_run_reads(
    tmp_path: Path, nothing_loads, capsys, monkeypatch
) -> None:
    """A 1024 px model draws --width 100 at its nearest bin; without binning, 100 px is no multiple of 16. The header
    that check reads is the run's own: the transformer file is recognised once (a .pth is read whole to recognise)."""
    import pixart_delta_core.models.transformer as loading

    files = write_demo_models(tmp_path / "models")
    argv = ["generate", "--transformer", str(files.transformer), "--t5", str(files.t5), "--vae", str(files.vae)]
    argv += ["--tokenizer", str(files.tokenizer), "--prompt", "a fox", "--device", "cpu", "--width", "100"]
    argv += ["--out", str(tmp_path / "x.png")]
    calls: list[object] = []
    detect = loading.detect_transformer
    monkeypatch.setattr(loading, "detect_transformer", lambda *a, **k: calls.append(a) or detect(*a, **k))
    with pytest.raises(AssertionError, match="a model was loaded"):  # past the checks
        main(argv)
    assert len(calls) == 1 and "error" not in capsys.readouterr().err
    said = "error: --width 100: width must be a multiple of 16 px, found 100 (nearest: 96 or 112)"
    assert refused([*argv, "--no-binning"], capsys) == said


# --- 6. a long prompt outside the world, shortened in the warning --------------------------------------


def test_a_long_prompt_outside_the_world_is_shortened_in_the_warning(caplog) -> None:
    long = "a photograph of a purple elephant riding a red bicycle along a beach at sunset, highly detailed"
    with caplog.at_level(logging.WARNING):
        warn_outside_the_world(embedded_path("shapes-lcm"), [long, "a fox"])
    message = caplog.records[0].getMessage()
    assert f"the prompts {long[:60]!r}…, 'a fox' are outside its grammar" in message
    assert long not in message


# --- 7. the negative prompts made a list once ----------------------------------------------------------


class Encoded(Exception):
    """What the pipeline hands the text encoder, raised to stop the run there."""


@pytest.mark.parametrize(
    ("negative", "encoded"),
    [
        ("blurry", ["blurry", "blurry"]),
        (["blurry", "dark"], ["blurry", "dark"]),
        (iter(["blurry", "dark"]), ["blurry", "dark"]),  # read once: a second list() of it would be empty
    ],
    ids=["text", "list", "iterator"],
)
def test_the_negative_prompts_reach_the_encoder_one_per_prompt(
    tmp_path: Path, monkeypatch, negative: object, encoded: list[str]
) -> None:
    files = write_demo_models(tmp_path)

    def encode(self, prompts, negatives, *args):
        raise Encoded(negatives)

    monkeypatch.setattr(PixArtPipeline, "encode_prompts", encode)
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    with pytest.raises(Encoded) as caught:
        pipeline(["a fox", "an owl"], negative_prompt=negative, sampler="dpm_solver++", steps=2)
    assert caught.value.args[0] == encoded
