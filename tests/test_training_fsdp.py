"""``train.fsdp``: accelerate's FSDP with every transformer ``Block`` a shard unit, whole checkpoints.

accelerate turns FSDP on only for GPU-type processes: on the CPU a run trains unsharded (checked below, and the
run says so). What the CPU can show runs here: accelerate's own FSDP2 preparation (``fsdp2_prepare_model``)
with our plugin in a one-process gloo group shards exactly the blocks and trains as the unsharded module does;
accelerate's checkpoint of it is written whole and loads back; the gathered weights save and load with the
engine's loaders. Two GPU processes run where there are two.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from pixart_delta_core.errors import InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer, load_controlnet
from pixart_delta_core.models.layers import Block
from pixart_delta_core.training.cache import Batch
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.draws import draw
from pixart_delta_core.training.loop import train
from pixart_delta_core.training.sharding import fsdp_plugin
from pixart_delta_core.training.trainers import ControlNetTrainer
from tests.helpers import ROOT, random_transformer
from tests.test_training_data import TRAIN_TINY, run_table, tiny_setup
from tests.test_training_distributed import _key_bias_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("fsdp"))


def _trainer(seed: int = 3) -> ControlNetTrainer:
    """A ControlNet trainer whose projections are not zero (so every copy gets a gradient)."""
    base = random_transformer(TRAIN_TINY, seed=seed)
    controlnet = ControlNetTransformer.from_base(base, 2)
    nudge = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=nudge))
    return ControlNetTrainer(base, controlnet, 0.18215, 0.5)


def _step(trainer: ControlNetTrainer, module: torch.nn.Module) -> float:
    """One loss, backward and AdamW step on a fixed batch (two of its four captions dropped)."""
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 4, 8, 8, generator=generator)
    caption, mask = torch.randn(4, 16, 64, generator=generator), torch.ones(4, 16, dtype=torch.long)
    control = torch.randn(4, 4, 8, 8, generator=generator)
    batch = Batch(caption, mask, mean, torch.full_like(mean, 0.1), control, (64, 64))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    loss = trainer.loss(module, batch, draw(0, 0, 0, 4, (4, 8, 8)))
    loss.backward()
    optimizer.step()
    return loss.item()


def test_fsdp_is_refused_where_it_cannot_shard(setup) -> None:
    for method in ("lcm", "lora"):
        with pytest.raises(InputError, match=rf"train\.fsdp shards base and controlnet training only; {method}"):
            config_from_dict({**setup, "train": {**setup["train"], "fsdp": True}}, method)


def test_accelerates_fsdp2_shards_each_block_and_trains_as_unsharded(tmp_path, monkeypatch) -> None:
    from accelerate.utils import fsdp_utils
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model, load_fsdp_model, save_fsdp_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    plain = _trainer()
    plain_loss = _step(plain, plain.module)
    sharded = _trainer()
    # accelerate's own logger wants an accelerate state, which only a whole Accelerator run sets up
    monkeypatch.setattr(fsdp_utils, "logger", logging.getLogger(fsdp_utils.__name__))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        # what accelerate's prepare does for a FSDP2 plugin, given the settings its state would hold
        state = SimpleNamespace(fsdp_plugin=fsdp_plugin())
        accelerator = SimpleNamespace(
            state=state, torch_device_mesh=None, mixed_precision="no", device=torch.device("cpu"), is_main_process=True,
            num_processes=1, process_index=0, is_fsdp2=True, wait_for_everyone=lambda: None,
        )  # fmt: skip
        module = fsdp2_prepare_model(accelerator, sharded.module)
        units = [name for name, m in module.named_modules() if isinstance(m, FSDPModule)]
        blocks = [name for name, m in module.named_modules() if isinstance(m, Block)]
        assert units == ["", *blocks] and len(blocks) == TRAIN_TINY.depth + 2  # the base's blocks, the 2 copies
        sharded_loss = _step(sharded, module)
        # read again after sharding (as the loop does for clipping), the trained parameters are the shards
        assert all(isinstance(p.grad, DTensor) for p in sharded.trainable_parameters())
        # accelerate's get_state_dict under FSDP2: the shards gathered whole, on the CPU
        whole = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # accelerate's save_state writes the model whole, and its load_state puts it back into another sharded copy
        save_fsdp_model(state.fsdp_plugin, accelerator, module, tmp_path / "state")
        written = torch.load(tmp_path / "state" / "pytorch_model_fsdp.bin", weights_only=True)
        assert written.keys() == whole.keys() and all(torch.equal(written[k], v) for k, v in whole.items())
        again = _trainer(seed=4)
        load_fsdp_model(
            state.fsdp_plugin, accelerator, fsdp2_prepare_model(accelerator, again.module), tmp_path / "state"
        )
        restored = get_model_state_dict(again.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        assert all(torch.equal(restored[k], v) for k, v in whole.items())
    finally:
        torch.distributed.destroy_process_group()
    assert sharded_loss == pytest.approx(plain_loss, rel=1e-6)
    path = sharded.save(tmp_path, whole)
    loaded = load_controlnet(path, TRAIN_TINY)
    trained = plain.controlled.controlnet.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=1e-5, atol=1e-6)
    start = _trainer().controlled.controlnet.state_dict()
    assert all(not torch.equal(value, start[key]) for key, value in loaded.state_dict().items())  # it did train


def test_on_cpu_processes_fsdp_trains_unsharded_and_says_so(setup, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # accelerate sets it to true for the run: put back after
    table = run_table(setup, tmp_path, batch_size=2, steps=2, checkpoint_every=2, fsdp=True)
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core.training.sharding"):
        result = train(config_from_dict(table, "controlnet"))
    assert "accelerate shards over several GPU processes only" in caplog.text
    assert "this run has 1 process(es) on cpu" in caplog.text
    assert load_controlnet(result.weights, TRAIN_TINY).config.copies == 1


@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="FSDP needs 2 GPUs: accelerate (1.15, state.py) turns FSDP on for GPU-type processes only (MULTI_GPU and "
    "the like), never on the CPU; a CPU run with train.fsdp trains unsharded, as test_on_cpu_processes_fsdp_trains_"
    "unsharded_and_says_so checks",
)
def test_two_gpu_processes_with_fsdp_train_the_weights_of_one(setup, tmp_path) -> None:
    options = {"batch_size": 2, "steps": 3, "checkpoint_every": 3, "learning_rate": 1e-3, "cpu": False}
    config = config_from_dict(run_table(setup, tmp_path / "two", fsdp=True, **options), "controlnet")
    (tmp_path / "two.toml").write_text(config.to_toml())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pixart_delta_core"]
    command += ["train", "controlnet", "--config", str(tmp_path / "two.toml")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_file(tmp_path / "two" / "checkpoints" / "step-0000003" / "controlnet.safetensors")
    one = load_file(train(config_from_dict(run_table(setup, tmp_path / "one", **options), "controlnet")).weights)
    assert two.keys() == one.keys()
    for key, value in one.items():  # as for DDP (test_training_distributed.py): fp32 rounding, scaled up by Adam
        rows = _key_bias_rows(key, value)
        tight_one, tight_two = value.clone(), two[key].clone()
        if rows is not None:
            torch.testing.assert_close(two[key][rows], value[rows], rtol=0, atol=1e-3 * 3)
            tight_one[rows] = tight_two[rows] = 0
        torch.testing.assert_close(tight_two, tight_one, rtol=1e-4, atol=1e-5)
