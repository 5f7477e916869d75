"""The trainers on tiny random models: loss goes down, saved files load, resume is bit-for-bit,
the ControlNet starts as the base and trains alone, the LCM parameterisation is the sampler's."""

from __future__ import annotations

import csv
import struct
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pixart_delta_core.models.controlnet import ControlNetTransformer, load_controlnet
from pixart_delta_core.models.transformer import load_transformer
from pixart_delta_core.sampling.choices import Sampler
from pixart_delta_core.sampling.samplers import SamplingSettings, sample
from pixart_delta_core.text.embedding import TextEmbedding
from pixart_delta_core.training.cache import Batch
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.lcm import boundary_scalings, consistency_output
from pixart_delta_core.training.loop import make_optimizer, train
from pixart_delta_core.training.trainers import ControlNetTrainer
from tests.test_training_data import TRAIN_TINY, for_method, run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("trainers"))


def _run(setup: dict, output, method: str, resume: bool = False, **options):
    table = run_table(setup, output, **{"batch_size": 2, "learning_rate": 1e-3, **options})
    if method == "lora":
        table["lora"] = {"rank": 4, "alpha": 8.0}
    return train(config_from_dict(for_method(table, method), method), resume=resume)


@pytest.mark.parametrize("method", ["base", "controlnet", "lora"])
def test_loss_goes_down_and_the_weights_load(setup, tmp_path, method) -> None:
    # Four images, batch 2, learning rate 1e-3: 24 steps fit them; the mean of the last 6 losses is
    # measured at 0.55-0.8 of the first 6's (the per-step loss swings with the drawn timestep).
    validation = {"validate_every": 24, "validation_prompts": ["a box"]}
    result = _run(setup, tmp_path, method, steps=24, checkpoint_every=24, caption_dropout=0.0, **validation)
    assert (tmp_path / "validation" / "step-0000024.png").is_file()
    first, last = sum(result.losses[:6]) / 6, sum(result.losses[-6:]) / 6
    assert last < 0.9 * first, result.losses
    if method == "base":
        model = load_transformer(result.weights)
        assert model.config == TRAIN_TINY
        caption = TextEmbedding(torch.randn(1, 16, 64), torch.ones(1, 16, dtype=torch.long))
        latents = sample(model, caption, SamplingSettings(), torch.randn(1, 4, 8, 8))
        assert torch.isfinite(latents).all()
    elif method == "controlnet":
        assert load_controlnet(result.weights, TRAIN_TINY).config.copies == 1
    else:
        weights = load_file(result.weights)
        assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in weights
        assert weights["transformer.transformer_blocks.0.attn1.to_k.lora_B.weight"].shape == (48, 4)
        assert weights["transformer.adaln_single.linear.lora_A.weight"].shape == (4, 48)


def test_resume_is_bit_for_bit(setup, tmp_path) -> None:
    # LCM: the resumed run also needs the EMA target back, beside the weights, optimizer and scheduler.
    whole = _run(setup, tmp_path / "whole", "lcm", steps=4, checkpoint_every=4)
    _run(setup, tmp_path / "split", "lcm", steps=2, checkpoint_every=2)
    resumed = _run(setup, tmp_path / "split", "lcm", resume=True, steps=4, checkpoint_every=2)
    assert resumed.losses == whole.losses[2:]
    ours, theirs = load_file(whole.weights), load_file(resumed.weights)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_second_run_into_the_same_output_needs_resume(setup, tmp_path) -> None:
    """Starting over where a run left checkpoints would overwrite them and its log: refused, naming --resume."""
    from pixart_delta_core.errors import InputError

    _run(setup, tmp_path, "base", steps=2, checkpoint_every=2)
    log = (tmp_path / "log.csv").read_text()
    with pytest.raises(InputError, match=r"already holds a run .*step-0*2\): add --resume"):
        _run(setup, tmp_path, "base", steps=2, checkpoint_every=2)
    assert (tmp_path / "log.csv").read_text() == log


def test_lora_loss_in_lcm_mode_runs_and_validates(setup, tmp_path) -> None:
    options = {"validate_every": 2, "validation_prompts": ["a box", "a red box"], "validation_seed": 3}
    table = run_table(setup, tmp_path, batch_size=2, steps=2, checkpoint_every=2, **options)
    table["lora"] = {"rank": 2, "alpha": 2.0, "lcm": True, "targets": ["attn.qkv"]}
    result = train(config_from_dict(for_method(table, "lora"), "lora"))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sorted(load_file(result.weights))[0] == "transformer.transformer_blocks.0.attn1.to_k.lora_A.weight"
    with Image.open(tmp_path / "validation" / "step-0000002.png") as grid:
        assert grid.size == (128, 64)  # two 64 px images side by side
        assert len(np.unique(np.asarray(grid).reshape(-1, 3), axis=0)) > 100  # an image, not a blank


def test_controlnet_starts_as_the_base_and_trains_alone() -> None:
    from tests.helpers import random_transformer

    base = random_transformer(TRAIN_TINY, seed=1)
    trainer = ControlNetTrainer(base, ControlNetTransformer.from_base(base, 2), 0.18215, 0.5)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    caption = torch.randn(2, 16, 64)
    mask = torch.ones(2, 16, dtype=torch.long)
    with torch.no_grad():
        controlled = trainer.module(x, t, caption, mask, (64, 64), torch.randn(2, 4, 8, 8))
        assert torch.equal(controlled, base(x, t, caption, mask, (64, 64)))
    config = config_from_dict(
        {
            "model": {"transformer": "t", "t5": "t", "vae": "v"},
            "data": {"path": "d", "cache": "c"},
            "train": {"output": "o"},
        },
        "base",
    )
    optimizer = make_optimizer(trainer.trainable_parameters(), config)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.controlled.controlnet.parameters()}
    assert not any(p.requires_grad for p in base.parameters())


def test_lcm_boundary_conditions_are_the_samplers() -> None:
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[1] == pytest.approx(0.25 / (9990**2 + 0.25)) and c_out[1] == pytest.approx(1.0, abs=1e-8)
    from tests.helpers import random_transformer

    model = random_transformer(TRAIN_TINY, seed=2)
    caption = TextEmbedding(torch.randn(1, 16, 64), torch.ones(1, 16, dtype=torch.long))
    noise = torch.randn(1, 4, 8, 8)
    # One LCM step from t = 999 returns the consistency output the student is trained to produce there.
    sampled = sample(model, caption, SamplingSettings(sampler=Sampler.LCM, steps=1), noise)
    t = torch.tensor([999])
    with torch.no_grad():
        eps = model(noise, t, caption.embeddings, caption.mask)[:, :4]
    torch.testing.assert_close(consistency_output(noise, eps, t), sampled, rtol=1e-5, atol=1e-5)


def test_saved_lora_is_the_trained_adapter_in_diffusers_names(tmp_path) -> None:
    from peft import LoraConfig

    from pixart_delta_core.training.config import LcmSection, LoraSection
    from pixart_delta_core.training.lora import LoraTrainer
    from tests.helpers import random_transformer

    settings = LoraSection(rank=3, alpha=6.0, targets=("attn.qkv", "cross_attn.kv_linear", "t_block.1"))
    trainer = LoraTrainer(random_transformer(TRAIN_TINY), 0.18215, 0.0, settings, LcmSection())
    with torch.no_grad():
        for parameter in trainer.trainable_parameters():  # lora_B starts at zero: give it values
            parameter.normal_()
    path = trainer.save(tmp_path)
    saved = load_file(path)
    assert LoraConfig.from_pretrained(str(tmp_path)).r == 3
    for ours, theirs in (("blocks.1.attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
                         ("blocks.0.cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v"))):  # fmt: skip
        block = ours.split(".")[1]
        up = torch.cat([saved[f"transformer.transformer_blocks.{block}.{t}.lora_B.weight"] for t in theirs])
        downs = [saved[f"transformer.transformer_blocks.{block}.{t}.lora_A.weight"] for t in theirs]
        layer = trainer.transformer.get_submodule(ours)
        torch.testing.assert_close(up @ downs[0], layer.get_delta_weight("default"))  # alpha / rank = 2 inside
        assert all(torch.equal(d, downs[0]) for d in downs)
    delta = (
        saved["transformer.adaln_single.linear.lora_B.weight"] @ saved["transformer.adaln_single.linear.lora_A.weight"]
    )
    torch.testing.assert_close(delta, trainer.transformer.t_block[1].get_delta_weight("default"))


def _activation_bytes(model: torch.nn.Module, run) -> tuple[torch.Tensor, int]:
    """``run()``'s loss and the bytes of the distinct activations autograd keeps for its backward pass
    (the parameters, kept either way, left out)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run()
    return loss, sum(kept.values())


@pytest.mark.parametrize("method", ["base", "controlnet"])
def test_gradient_checkpointing_gives_the_same_gradients_with_less_memory(method) -> None:
    """The same loss and gradients; the activations held when the forward ends (where a step's memory peaks, the
    weights aside) counted exactly, as the CPU has no allocator statistics to ask: measured 0.23-0.24 of them."""
    from pixart_delta_core.models.layers import Block, set_gradient_checkpointing
    from pixart_delta_core.training.draws import draw
    from pixart_delta_core.training.trainers import Trainer
    from tests.helpers import random_transformer

    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 4, 8, 8, generator=generator)
    caption, mask = torch.randn(2, 16, 64, generator=generator), torch.ones(2, 16, dtype=torch.long)
    batch = Batch(caption, mask, mean, torch.full_like(mean, 0.1), torch.randn_like(mean), (64, 64))
    losses, gradients, kept = [], [], []
    for checkpointed in (False, True):
        base = random_transformer(TRAIN_TINY).requires_grad_(True)
        if method == "base":
            trainer = Trainer(base, 0.18215, 0.0)
        else:
            controlnet = ControlNetTransformer.from_base(base, 2)
            nudge = torch.Generator().manual_seed(1)
            with torch.no_grad():  # zero projections would give the copies no gradient
                for parameter in controlnet.parameters():
                    parameter.add_(0.02 * torch.randn(parameter.shape, generator=nudge))
            trainer = ControlNetTrainer(base, controlnet, 0.18215, 0.0)
        set_gradient_checkpointing(trainer.module, checkpointed)
        blocks = [m for m in trainer.module.modules() if isinstance(m, Block)]
        assert all(block.gradient_checkpointing is checkpointed for block in blocks)
        draws = draw(0, 0, 0, 2, (4, 8, 8))
        loss, activations = _activation_bytes(trainer.module, partial(trainer.loss, trainer.module, batch, draws))
        loss.backward()
        losses.append(loss.detach())
        gradients.append([p.grad for p in trainer.trainable_parameters()])
        # a checkpointed block also keeps its input [B, N, C] (outside autograd's saved tensors)
        kept.append(activations + (len(blocks) * 2 * 16 * TRAIN_TINY.hidden_size * 4 if checkpointed else 0))
    assert torch.equal(losses[0], losses[1])
    for plain, recomputed in zip(*gradients, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)
    assert kept[1] < 0.5 * kept[0], kept


def test_lcm_in_bf16_mixed_precision_with_gradient_checkpointing(setup, tmp_path) -> None:
    options = {"mixed_precision": "bf16", "gradient_checkpointing": True}
    result = _run(setup, tmp_path, "lcm", steps=2, checkpoint_every=2, **options)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert load_transformer(result.weights).config == TRAIN_TINY


def test_8bit_adamw_trains(setup, tmp_path) -> None:
    pytest.importorskip("bitsandbytes", reason="8-bit AdamW comes from bitsandbytes")
    # The whole transformer: bitsandbytes keeps tensors under 4096 values (all LoRA factors here) in 32 bits.
    result = _run(setup, tmp_path, "base", steps=2, checkpoint_every=2, optimizer="adamw8bit")
    state = torch.load(tmp_path / "checkpoints" / "step-0000002" / "optimizer.bin", weights_only=True)
    assert torch.uint8 in set(_tensor_dtypes(state["state"]))  # 8-bit moments were kept
    assert all(torch.isfinite(torch.tensor(result.losses)))


def _tensor_dtypes(tree: object):
    """The dtypes of every tensor in nested dicts (bitsandbytes nests its quantized state)."""
    if torch.is_tensor(tree):
        yield tree.dtype
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensor_dtypes(value)


def test_gradient_accumulation_steps_the_optimizer_once_per_step(setup, tmp_path) -> None:
    result = _run(setup, tmp_path, "base", steps=2, checkpoint_every=2, batch_size=1, gradient_accumulation=2)
    state = torch.load(tmp_path / "checkpoints" / "step-0000002" / "optimizer.bin", weights_only=True)
    assert {s["step"].item() for s in state["state"].values()} == {2.0}  # 4 micro-batches, 2 optimizer steps
    assert len(result.losses) == 2


def test_a_trained_lora_loads_with_the_packs_lora_loader(tmp_path) -> None:
    """What the LoRA trainer saves is what the LoRA loader (and so ``--lora``, ``loras=`` and the node) applies:
    the base with the loaded file computes what the trainer's adapted model computes (fp32, tiny model)."""
    from pixart_delta_core.models.lora import apply_loras
    from pixart_delta_core.models.lora_config import read_lora
    from pixart_delta_core.training.config import LcmSection, LoraSection
    from pixart_delta_core.training.lora import LoraTrainer
    from tests.helpers import random_transformer

    settings = LoraSection(rank=3, alpha=6.0)
    trainer = LoraTrainer(random_transformer(TRAIN_TINY, seed=4), 0.18215, 0.0, settings, LcmSection())
    with torch.no_grad():
        for parameter in trainer.trainable_parameters():  # lora_B starts at zero: give the adapter an effect
            parameter.normal_(std=0.05)
    path = trainer.save(tmp_path)
    base = random_transformer(TRAIN_TINY, seed=4)
    loaded = apply_loras(base, [(read_lora(path), 1.0)])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    caption, mask = torch.randn(2, 16, 64), torch.ones(2, 16, dtype=torch.long)
    with torch.no_grad():
        trained = trainer.transformer(x, t, caption, mask)
        plain = base(x, t, caption, mask)
        ours = loaded(x, t, caption, mask)
    assert (trained - plain).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(ours, trained, rtol=1e-5, atol=1e-5)


def _event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """The scalars of every TensorBoard event file under ``folder``: tag -> [(step, value)].

    Event files are TFRecords: a little-endian uint64 length, its CRC (4 bytes), the Event, its CRC."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_gets_the_csvs_scalars_when_installed(setup, tmp_path) -> None:
    pytest.importorskip("tensorboardX", reason="reading the event files needs tensorboardX (the test extra has it)")
    _run(setup, tmp_path, "base", steps=3, checkpoint_every=3)
    with (tmp_path / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    scalars = _event_scalars(tmp_path / "tensorboard")
    assert sorted(scalars) == ["learning_rate", "loss", "samples_per_s"]
    for tag in scalars:
        expected = [(int(row["step"]), float(row[tag])) for row in rows]
        assert [step for step, _ in scalars[tag]] == [1, 2, 3]
        # the CSV rounds to 6 (rates: 4) significant digits, TensorBoard keeps fp32
        assert [value for _, value in scalars[tag]] == pytest.approx([value for _, value in expected], rel=1e-3)


def test_without_tensorboard_the_csv_alone_is_written(setup, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("accelerate.utils.is_tensorboard_available", lambda: False)
    result = _run(setup, tmp_path, "base", steps=2, checkpoint_every=2)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + len(result.losses)
    assert not (tmp_path / "tensorboard").exists()
