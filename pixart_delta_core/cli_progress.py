"""The command line's progress display on stderr: a line per stage of a run, with how long the previous one took,
and a bar over the denoising steps."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_STAGES = {
    "text": "loading T5 and encoding the prompts",
    "images": "loading the VAE and encoding the init/control image",
    "denoise": "loading the transformer and denoising",
    "decode": "loading the VAE and decoding",
}


@contextmanager
def stages() -> Iterator[Callable[[str], None]]:
    """An ``on_stage`` callback printing one line per stage on stderr, and how long the previous one took."""
    started: list[tuple[str, float]] = []

    def on_stage(name: str) -> None:
        now = time.perf_counter()
        if started:
            print(f"  {started[-1][0]}: {now - started[-1][1]:.1f} s", file=sys.stderr, flush=True)
        if name in _STAGES:
            print(f"{_STAGES[name]}...", file=sys.stderr, flush=True)
            started.append((_STAGES[name], now))
        else:
            started.clear()

    yield on_stage


@contextmanager
def progress() -> Iterator[Callable[[int, int, object], None]]:
    """A progress bar over the denoising steps, as an ``on_step`` callback."""
    from tqdm import tqdm

    bar = None

    def on_step(done: int, total: int, latents: object) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="denoising", unit="step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            bar = None

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.close()
