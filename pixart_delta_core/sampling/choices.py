"""What users choose between when sampling: the samplers and the LCM timestep conventions (plain names, no torch,
so the command line lists them without loading the engine)."""

from __future__ import annotations

from enum import Enum


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
