"""Property-based fuzzing of config.json values (issue 10, kind 5): any value gives a correct load or our error.

Tiny folders as users hold them (a diffusers transformer inside its pipeline folder, a diffusers VAE folder,
a transformers T5 folder) have one config.json value replaced (a wrong JSON type, zero, negative, huge, NaN,
a list...) or removed. Loading must either give a model whose config holds exactly the value the file says
(no silent coercion such as 2.5 -> 2) or raise a ``PixArtDeltaError``: never another exception, a hang or a
huge allocation. As in ``test_fuzz_loading``, the cases run in a child process, each under an alarm, with
its address space capped, and the parent gives the child a wall-clock limit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fuzz_harness import ROOT, cap_address_space, run_child, within_alarm

KINDS = ("transformer", "vae", "t5")
EXAMPLES = int(
    os.environ.get("FUZZ_CONFIG_EXAMPLES", 40)
)  # per kind: about 20 s for the three kinds on a busy shared core

# config.json key -> the config field it sets, where the loaders read it (the others must not matter).
READ = {
    "transformer": {"num_attention_heads": "num_heads", "sample_size": "sample_size"},
    "vae": {"norm_num_groups": "norm_num_groups", "scaling_factor": "scaling_factor", "force_upcast": "force_upcast"},
    "t5": {k: k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "layer_norm_epsilon")},
}

ODD_VALUES = (None, True, False, 0, -1, 1, 2, 3, 4, 8, 32, -32, 2.5, 1e9, 10**9, 2**63, 10**30, 1e308, math.nan)
ODD_VALUES += (10**400, math.inf, -math.inf, "", "abc", "4", [], [4], {}, {"a": 1})


@pytest.mark.skipif(sys.platform != "linux", reason="the child caps its memory with RLIMIT_AS and SIGALRM (Linux)")
def test_config_values_give_a_correct_load_or_our_error() -> None:
    run_child(__file__, KINDS, EXAMPLES)


# --- the child: everything below runs in the fuzzing process --------------------------------------------


def write_valid(kind: str, folder: Path) -> Path:
    """A valid tiny model folder of ``kind``; the path the loader is given."""
    from pixart_delta_core.demo.files import demo_vae
    from tests.helpers import TINY, diffusers_twin, random_t5, random_transformer

    if kind == "transformer":
        diffusers_twin(random_transformer(TINY)).save_pretrained(folder / "transformer")
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
        return folder / "transformer"
    if kind == "vae":
        demo_vae().save_pretrained(folder / "vae")
        return folder / "vae"
    random_t5().save_pretrained(folder / "t5")
    return folder / "t5"


def load(kind: str, path: Path):
    """The loaded model's config, or None when the pack refuses with its own error."""
    from pixart_delta_core.errors import PixArtDeltaError
    from pixart_delta_core.models.transformer import load_transformer
    from pixart_delta_core.text.t5 import inspect_t5, load_t5
    from pixart_delta_core.vae.autoencoder import load_vae

    try:
        if kind == "transformer":
            return load_transformer(path).config
        if kind == "vae":
            return load_vae(path).config
        detected = inspect_t5(path)
        load_t5(detected, "fp32")
        return detected.config
    except PixArtDeltaError as err:
        cause = err.__cause__
        if isinstance(cause, MemoryError) or "allocate" in str(cause):
            raise AssertionError(f"a huge allocation was tried before the config was refused: {err}") from err
        return None


def same_value(ours: object, theirs: object) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    if isinstance(ours, float) and isinstance(theirs, float) and math.isnan(ours):
        return math.isnan(theirs)
    return ours == theirs


def check_case(kind: str, valid: Path, work: Path, key: str | int, value: object, remove: bool) -> bool:
    """One mutated config.json; True when the pack loaded it (with exactly its values), False when it refused."""

    case = work / "case"
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(valid.parent, case)
    path = case / valid.name
    config = json.loads((path / "config.json").read_text())
    if isinstance(key, int):  # any key of the file, read by the pack or not
        key = sorted(config)[key % len(config)]
    if remove:
        del config[key]
    else:
        config[key] = value
    (path / "config.json").write_text(json.dumps(config))

    loaded = within_alarm(f"{kind} case {key}={value!r}", lambda: load(kind, path))
    if loaded is not None and not remove and key in READ[kind] and value is not None:
        field = READ[kind][key]
        found = getattr(loaded, field)
        assert same_value(found, value), f"{kind}: config.json {key}={value!r} loaded as {field}={found!r}"
    return loaded is not None


def fuzz(kind: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "valid").mkdir()
        valid = write_valid(kind, work / "valid")
        assert load(kind, valid) is not None, f"the valid {kind} folder does not load"
        cap_address_space()
        value = st.one_of(
            st.sampled_from(ODD_VALUES),
            st.integers(-(2**64), 2**64),
            st.floats(),
            st.text(max_size=6),
        )
        count = loaded = 0
        tried: set[str] = set()

        keys = st.one_of(st.sampled_from(sorted(READ[kind])), st.integers(0, 64))  # half on the keys the pack reads

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(key=keys, value=value, remove=st.booleans())
        def run(key: str | int, value: object, remove: bool) -> None:
            nonlocal count, loaded
            count += 1
            loaded += check_case(kind, valid, work, key, value, remove)
            tried.add(key if isinstance(key, str) else "other")

        run()
    print(f"{kind}: {count} cases, {loaded} loaded with exactly their values, {count - loaded} refused by our error")
    read = tried & set(READ[kind])
    assert len(read) >= min(3, len(READ[kind])) and "other" in tried, f"{kind}: too few keys tried: {sorted(tried)}"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for kind in KINDS:
        fuzz(kind)
