"""What the fuzz tests share: each runs its cases in one child process (torch and hypothesis start once), each case
under an alarm so a hang fails it, with the child's address space capped so a huge allocation fails it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE_SECONDS = 10
SPARE_ADDRESS_SPACE = 2 << 30  # what a case may map beyond the child's start: far above the tiny files

T = TypeVar("T")


class Hung(BaseException):  # not an Exception: no handler in the pack may swallow it
    pass


def run_child(test_file: str, kinds: Iterable[str], examples: int) -> None:
    """Run ``test_file`` as the fuzzing child; it must exit 0 and report ``examples`` cases for every kind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        run = subprocess.run(
            [sys.executable, test_file], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"fuzzing hung: {err}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    for kind in kinds:
        assert f"{kind}: {examples} cases" in run.stdout, run.stdout  # hypothesis ran every case it was given


def within_alarm(label: str, work: Callable[[], T]) -> T:
    """``work()``, raising ``Hung`` (naming ``label``) if it runs past ``CASE_SECONDS``."""

    def hang(*_: object) -> None:
        raise Hung(f"{label} ran past {CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(CASE_SECONDS)
    try:
        return work()
    finally:
        signal.alarm(0)


def cap_address_space() -> None:
    """Cap the child's address space at what it maps now plus ``SPARE_ADDRESS_SPACE`` (unless already capped)."""
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + SPARE_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
