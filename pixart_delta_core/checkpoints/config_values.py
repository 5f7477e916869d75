"""Checks every model config runs on its own fields in ``__post_init__``: type, sign, finiteness, bounds.

Config values reach the engine from tensor shapes, ``config.json``, safetensors metadata and hints; all of
them pass through a config dataclass, so checking there covers every route. The upper bounds are far above
any released model and exist so that a hand-edited value cannot make a loader allocate terabytes before
the strict load compares shapes. Each check raises ``CheckpointError`` naming the config, the field and
the value found.
"""

from __future__ import annotations

import math

from ..errors import CheckpointError

# Upper bounds shared by the configs (each well above every released PixArt, T5 and SD VAE size).
MAX_DEPTH = 1024  # blocks / layers (PixArt-XL: 28, T5-XXL: 24)
MAX_WIDTH = 65536  # hidden / model widths and channel counts (PixArt-XL: 1152, T5-XXL: 4096)
MAX_FEED_FORWARD = 262144  # MLP / feed-forward widths (PixArt-XL: 4608, T5-XXL: 10240)
MAX_HEADS = 4096
MAX_VOCABULARY = 1 << 20  # T5: 32128


def check_int(owner: str, name: str, value: object, low: int, high: int) -> None:
    """Refuse ``value`` unless it is an ``int`` (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{owner}: {name} must be an integer in {low}..{high}, found {value!r:.80}")


def check_float(owner: str, name: str, value: object, high: float, *, zero: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number above 0 (or equal to 0 when ``zero``) and at most ``high``."""
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # ints: no float overflow
    if isinstance(value, bool) or not finite or not (value >= 0 if zero else value > 0) or value > high:  # type: ignore[operator]
        low = "0 <=" if zero else "0 <"
        raise CheckpointError(
            f"{owner}: {name} must be a finite number with {low} {name} <= {high:g}, found {value!r:.80}"
        )


def check_bool(owner: str, name: str, value: object) -> None:
    """Refuse anything but ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise CheckpointError(f"{owner}: {name} must be true or false, found {value!r:.80}")


def int_text(origin: str, name: str, text: object) -> int:
    """An integer written as text (safetensors metadata values are strings), or an error naming it."""
    try:
        return int(str(text).strip())
    except ValueError:
        raise CheckpointError(f"{origin}: metadata {name} must be an integer, found {text!r:.80}") from None
