"""Whether a transformer is distilled, where the pack knows it (its embedded ones, by file), and the warnings for a
sampler that does not suit one: guidance under the LCM sampler on a distilled model, a solver in few steps on one that
is not. The pipeline and the ComfyUI sampler node give them; neither is refused.

Plain data and logging, no torch: the command line reads ``SAMPLERS`` before the engine loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..embedded_names import MODELS, embedded_model
from ..sampling.choices import SAMPLERS as SAMPLER_SPECS
from ..sampling.choices import Sampler

if TYPE_CHECKING:
    from ..sampling.samplers import SamplingSettings

log = logging.getLogger(__name__)

# The sampler an embedded transformer draws with when none is given, where it is not the command line's default (lcm):
# the teacher is not distilled; its model card measures it with DPM-Solver++ and guidance 4.5 (20 steps: colour 93.2%,
# kind 81.8%, position 93.8% on 100 held-out prompts). The LCM sampler draws it well too (4 steps, guidance 1: 94.3%,
# 79.7%, 95.8%), but a solver in fewer than SOLVER_STEPS steps does not.
SAMPLERS = {"shapes-teacher": "dpm_solver++"}
# Fewer solver steps than this break the pictures of a transformer that is not distilled: the model card measures the
# teacher with DPM-Solver++ at 4, 6, 8, 10 and 20 steps: 0, 5, 21, 38 and 65 whole pictures in 100.
SOLVER_STEPS = 10


def embedded_transformer(path: str | Path, changed: bool) -> str | None:
    """The name of the embedded transformer whose file ``path`` is, where no LoRA ``changed`` it (an LCM-LoRA distils
    a model); else None, as for any other model."""
    return None if changed else embedded_model(path)


def warn_unsuited_sampler(settings: SamplingSettings, name: str | None) -> None:
    """``warn_guided_lcm``, ``warn_not_distilled`` and ``warn_distilled`` for ``settings`` on ``name``, an embedded
    transformer (None: another model, or one a LoRA changed)."""
    warn_guided_lcm(settings)
    warn_not_distilled(name, settings.sampler.value, settings.steps)
    warn_distilled(name, settings.sampler.value)


def warn_guided_lcm(settings: SamplingSettings) -> None:
    """Log one warning when the LCM sampler runs with guidance above 1: a distilled LCM model has the guidance built
    in (PixArt-δ runs it unguided), so classifier-free guidance on it garbles the picture, and it garbles an
    undistilled model's under this sampler too (the embedded teacher's, measured). Not refused: a model distilled
    otherwise may want it."""
    if settings.guided and settings.sampler is Sampler.LCM:
        log.warning(
            "the LCM sampler with guidance %g: it runs a model unguided (guidance 0 or 1); a distilled LCM model has "
            "the guidance built in, and guidance under it breaks the picture of an undistilled one too (the model "
            "card measures shapes-teacher by lcm in 4 steps at guidance 4.5: 1 whole picture in 100, unguided 65); "
            "a negative prompt needs a guided sampler (dpm_solver++...) and a model that is not distilled "
            "(shapes-teacher)",
            settings.guidance,
        )


def warn_not_distilled(name: str | None, sampler: str, steps: int | None) -> None:
    """Log one warning when ``name``, an embedded transformer (None: another model, whose weights do not say whether
    it is distilled, or one a LoRA changed), is not distilled (it has its own sampler in ``SAMPLERS``) and runs with
    a ``sampler`` other than the LCM one in fewer than ``SOLVER_STEPS`` ``steps`` (None: the sampler's reference),
    which breaks its pictures up; the LCM sampler draws it well in 4 steps, unguided. The reverse of
    ``warn_distilled``; not refused."""
    own = SAMPLERS.get(name or "")
    steps = SAMPLER_SPECS[Sampler(sampler)].steps if steps is None else steps
    if own is None or sampler == Sampler.LCM.value or steps >= SOLVER_STEPS:
        return
    spec = SAMPLER_SPECS[Sampler(own)]
    log.warning(
        "%s is not distilled: drawn with %s in %d step%s, its pictures break up (in fewer than %d steps; its model "
        "card measures %s in 4, 6, 8, 10 and 20 steps: 0, 5, 21, 38 and 65 whole pictures in 100); its own "
        "settings are %s, %d steps, guidance %g; or use the LCM sampler (lcm) in %d steps without guidance, or the "
        "distilled %s",
        name,
        sampler,
        steps,
        "s" * (steps != 1),
        SOLVER_STEPS,
        own,
        own,
        spec.steps,
        spec.guidance,
        SAMPLER_SPECS[Sampler.LCM].steps,
        " or ".join(_distilled()),
    )


def warn_distilled(name: str | None, sampler: str) -> None:
    """Log one warning when ``name``, an embedded transformer that is distilled (an LCM student: embedded, with no
    own sampler in ``SAMPLERS``), runs with a ``sampler`` other than the LCM one, which it was not distilled for.
    Not refused."""
    if name not in _distilled() or sampler == Sampler.LCM.value:
        return
    spec = SAMPLER_SPECS[Sampler.LCM]
    log.warning(
        "%s is an LCM student, distilled for the LCM sampler: drawn with %s its pictures come out worse (its model "
        "card measures dpm_solver++ in 14 steps at guidance 4.5: 36 whole pictures in 100, against 66 by lcm); its "
        "own settings are lcm, %d steps, no guidance",
        name,
        sampler,
        spec.steps,
    )


def _distilled() -> list[str]:
    """The embedded transformers that are distilled: those without an own sampler in ``SAMPLERS``."""
    return sorted(m for m, file in MODELS.items() if Path(file).parts[0] == "transformer" and m not in SAMPLERS)
