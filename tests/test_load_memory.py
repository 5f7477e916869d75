"""Loading never holds a second full copy of the weights (measured in a fresh process): transformer and T5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "load_memory.py"
BOUND = 1.3  # peak resident-memory growth while loading / size of the loaded weights


LINUX_ONLY = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc"
)


def measure_ours(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCHMARK), *args, "--ours-only"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["ours"]


@LINUX_ONLY
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "diffusers"])
def test_peak_memory_while_loading_a_mid_size_checkpoint(tmp_path: Path, fmt: str) -> None:
    """A 4-block, 1152-wide transformer stored in fp32 and loaded as bf16 (the conversion path)."""
    result = measure_ours("--format", fmt, "--dtype", "bf16", "--cache", str(tmp_path))
    assert result["model_bytes"] > 150e6
    assert result["ratio"] <= BOUND, f"loading grew memory by {result['ratio']}x the model's size"


@LINUX_ONLY
def test_peak_memory_while_loading_a_mid_size_t5_single_file(tmp_path: Path) -> None:
    """A 4-layer, 1024-wide T5-v1.1 with XXL's vocabulary, stored in fp8 and loaded as bf16 (the conversion path)."""
    result = measure_ours("--model", "t5", "--file-dtype", "fp8_e4m3fn", "--dtype", "bf16", "--cache", str(tmp_path))
    assert result["model_bytes"] > 150e6
    assert result["ratio"] <= BOUND, f"loading grew memory by {result['ratio']}x the model's size"
