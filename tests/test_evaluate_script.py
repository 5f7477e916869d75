"""scripts/embedded_model/evaluate.py's options: 0 prompts skips a part cleanly (no rows of NaN), a count below 0
or not a whole number is refused by argparse with what it expected. The runs themselves are not drawn here."""

from __future__ import annotations

import importlib.util

import pytest

from pixart_delta_core.demo.evaluation import evaluation_scenes
from tests.helpers import ROOT


def load_evaluate_script():
    spec = importlib.util.spec_from_file_location(
        "evaluate_script", ROOT / "scripts" / "embedded_model" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def evaluate(monkeypatch):
    """The script, its two parts recording the scenes they were given instead of drawing them."""
    module = load_evaluate_script()
    module.given = {}
    monkeypatch.setattr(module, "prompt_runs", lambda scenes, args: module.given.update(prompts=scenes))
    monkeypatch.setattr(module, "control_runs", lambda scenes, args: module.given.update(control=scenes))
    return module


def test_zero_control_prompts_skips_the_controlnet_and_says_so(evaluate, capsys) -> None:
    evaluate.main(["--prompts", "2", "--control-prompts", "0"])
    assert evaluate.given == {"prompts": evaluation_scenes(2)}
    assert capsys.readouterr().err == "--control-prompts 0: skipped the ControlNet's runs\n"


def test_zero_prompts_leaves_the_controlnet_its_own_prompts(evaluate, capsys) -> None:
    evaluate.main(["--prompts", "0", "--control-prompts", "3"])
    assert evaluate.given == {"control": evaluation_scenes(3)}
    assert capsys.readouterr().err == "--prompts 0: skipped all but the ControlNet's runs\n"


def test_each_part_takes_the_first_held_out_prompts_of_its_count(evaluate) -> None:
    evaluate.main(["--prompts", "2", "--control-prompts", "3"])
    assert evaluate.given == {"prompts": evaluation_scenes(2), "control": evaluation_scenes(3)}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--control-prompts", "-1"],
            "argument --control-prompts: expected a whole number of prompts (0 or more), found -1",
        ),
        (
            ["--prompts", "-3"],
            "argument --prompts: expected a whole number of prompts (0 or more), found -3",
        ),
        (["--prompts", "1.5"], "argument --prompts: expected a whole number of prompts (0 or more), found 1.5"),
        (["--prompts", "\u0663"], "argument --prompts: expected a whole number of prompts (0 or more), found \u0663"),
        (["--seed", "-1"], "argument --seed: expected a whole number (0 to 18446744073709551615), found -1"),
        (
            ["--prompts", "0", "--control-prompts", "0"],
            "nothing to measure: --prompts and --control-prompts are both 0",
        ),
    ],
)
def test_counts_below_0_or_not_whole_are_refused_with_what_was_expected(evaluate, capsys, argv, said) -> None:
    with pytest.raises(SystemExit) as refused:
        evaluate.main(argv)
    assert refused.value.code == 2 and said in capsys.readouterr().err
    assert evaluate.given == {}


def test_the_seed_reaches_both_parts(evaluate) -> None:
    seen = []
    evaluate.prompt_runs = lambda scenes, args: seen.append(args.seed)
    evaluate.control_runs = lambda scenes, args: seen.append(args.seed)
    evaluate.main(["--prompts", "1", "--control-prompts", "1", "--seed", "7"])
    assert seen == [7, 7]
