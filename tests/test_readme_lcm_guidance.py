"""The README's workflow table says the LCM demo's guidance 1 is no guidance, as 0 is (the docs give 0 elsewhere, the
demo workflows 1.0): CFG acts only above 1, so both run the distilled student unguided."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixart_delta_core.sampling.samplers import SamplingSettings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_lcm_demos_row_says_0_and_1_both_run_unguided() -> None:
    (row,) = re.findall(r"^\| `demo_lcm_text_to_image` \|.*$", README.read_text(), flags=re.M)
    assert "guidance 1 (none; 0 and 1 both run unguided)" in row


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_0_and_1_both_run_the_lcm_sampler_unguided(guidance: float) -> None:
    assert not SamplingSettings.defaults("lcm", guidance=guidance).guided
