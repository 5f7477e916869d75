"""What users choose between when sampling: the samplers with their reference settings, and the LCM timestep
conventions (plain data, no torch, so the command line lists them and their defaults without loading the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Sampler(Enum):
    """The samplers users can pick; the value is the name shown in the UI and on the command line."""

    LCM = "lcm"
    DPM_SOLVER = "dpm_solver++"
    SA_SOLVER = "sa_solver"
    EULER = "euler"
    EULER_ANCESTRAL = "euler_ancestral"
    DDIM = "ddim"


class LcmTimesteps(Enum):
    """Which timesteps LCM visits: the reference repository's, or diffusers' LCMScheduler's."""

    REFERENCE = "reference"  # 4 steps: 999, 759, 519, 279
    DIFFUSERS = "diffusers"  # 4 steps: 999, 759, 499, 259


TRAIN_STEPS = 1000  # the noise schedule's steps (samplers.NOISE_SCHEDULE)
LCM_ORIGINAL_STEPS = 50  # the teacher's DDIM schedule the LCM was distilled on (skip k = 20)
MAX_GUIDANCE = 100.0  # a CFG scale far beyond any useful one (4.5 is the reference's): a typo, refused
MAX_SEED = 2**64 - 1  # the CPU generator's seed range, and ComfyUI's seed widget's


@dataclass(frozen=True)
class SamplerSpec:
    """How to build a sampler's scheduler, and the settings the reference uses with it (the defaults of the pipeline,
    the nodes and the command line, whose help reads them here).

    ``scheduler`` names a diffusers scheduler class: diffusers is imported on first use, not when the pack loads.
    """

    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: int = 20
    guidance: float = 4.5
    max_steps: int = TRAIN_STEPS


# A run from pure noise must start at the top of the noise schedule (t = 999) at every step count.
# diffusers' default spacings for Euler ("linspace") and DDIM ("leading") do not at 1-2 steps (Euler's
# single step is t = 0 with the noise scaled to 1%, DDIM's are 0 or 500); "trailing" spacing always
# does. DPM-Solver++ and SA-Solver start at 999 with their defaults and keep them.
_FROM_NOISE: dict[str, Any] = {"timestep_spacing": "trailing"}

SAMPLERS: dict[Sampler, SamplerSpec] = {
    Sampler.LCM: SamplerSpec(
        "LCMScheduler",
        {"original_inference_steps": LCM_ORIGINAL_STEPS, "timestep_scaling": 10.0, "set_alpha_to_one": True},
        steps=4,
        guidance=0.0,
        max_steps=LCM_ORIGINAL_STEPS,
    ),
    Sampler.DPM_SOLVER: SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, steps=14, guidance=4.5
    ),
    Sampler.SA_SOLVER: SamplerSpec("SASolverScheduler", {}, steps=25, guidance=3.0),
    Sampler.EULER: SamplerSpec("EulerDiscreteScheduler", _FROM_NOISE, steps=20, guidance=4.5),
    Sampler.EULER_ANCESTRAL: SamplerSpec("EulerAncestralDiscreteScheduler", _FROM_NOISE, steps=20, guidance=4.5),
    Sampler.DDIM: SamplerSpec(
        "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, **_FROM_NOISE}, steps=25, guidance=4.5
    ),
}
