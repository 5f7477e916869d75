"""The bounds of the strengths users give a LoRA and a ControlNet: plain numbers, no torch, so that the command line's
help states them without loading the engine (``lora.check_strength`` and ``controlnet.check_control_strength`` refuse
what lies beyond them)."""

from __future__ import annotations

# |strength| above this is a mistake, not a style: a LoRA at 1000x its trained strength already swamps the model,
# and much larger values overflow the weights (1e308 times anything is inf).
MAX_STRENGTH = 1e3
MAX_CONTROL_STRENGTH = 1000.0  # as a LoRA's: far past any use (1e30 overflows the residuals to a black picture)
