"""A detection hint is only for what a checkpoint does not say: one that contradicts the file is refused on every
surface, before any model loads, naming the option and both values; one equal to the file's value, or for a
file that does not say it, is taken (checkpoints/hints.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from pixart_delta_core.cli import main
from pixart_delta_core.demo.files import DEMO_VAE, demo_vae
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.controlnet import ControlNetTransformer, inspect_controlnet
from pixart_delta_core.models.controlnet_config import ControlNetConfig
from pixart_delta_core.models.transformer import inspect_transformer, load_transformer
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.training.trainers import heads_metadata
from pixart_delta_core.vae.autoencoder import inspect_vae, load_vae
from pixart_delta_core.vae.taesd_layout import TAESD_KWARGS, comfy_taesd_state_dict
from tests.comfy_helpers import ENGINE, PACK, call_node
from tests.helpers import TINY, diffusers_twin, random_transformer

# TINY: 4 heads of 12 (not PixArt's 72), 16 caption tokens, trained at 16 latent pixels (128 px).
CONTRADICTIONS = [
    ({"num_heads": 2}, r"its metadata says num_heads 4, but the hint gives 2 \(--heads on the command line"),
    (
        {"caption_length": 120},
        r"its y_embedding .*says caption_length 16, but the hint gives 120 \(--caption-length on the command line",
    ),
    (
        {"sample_size": 128},
        r"its pos_embed says sample_size 16 \(128 px\), but the hint gives 128 \(1024 px\) \(--training-resolution.*"
        r"leave it out, or give 128 as a training resolution in px, or 16 as a sample size$",
    ),
]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    """TINY as the trainers save it: reference layout (with pos_embed) and its heads in the metadata."""
    path = tmp_path_factory.mktemp("hints") / "tagged.safetensors"
    save_file(random_transformer(TINY).reference_state_dict(), str(path), metadata=heads_metadata(TINY))
    return path


@pytest.mark.parametrize(("hints", "message"), CONTRADICTIONS)
def test_a_hint_the_file_contradicts_is_refused_naming_both_values(tagged: Path, hints: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        inspect_transformer(tagged, hints)
    with pytest.raises(CheckpointError, match=message):
        load_transformer(tagged, hints=hints)
    with pytest.raises(CheckpointError, match=message):
        PixArtPipeline(tagged, "t5", "vae", hints=hints).transformer_checkpoint  # noqa: B018


def test_a_hint_equal_to_the_file_or_for_what_it_does_not_say_is_taken(tagged: Path, tmp_path: Path) -> None:
    assert inspect_transformer(tagged, {"num_heads": 4, "caption_length": 16, "sample_size": 16}).config == TINY
    untagged = tmp_path / "untagged.safetensors"  # 48 wide, no metadata: the weights do not say its heads
    save_file(random_transformer(TINY).state_dict(), str(untagged))  # nor, without pos_embed, its resolution
    config = inspect_transformer(untagged, {"num_heads": 2, "sample_size": 32}).config
    assert (config.num_heads, config.sample_size) == (2, 32)


def test_a_hint_the_folders_config_json_contradicts_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    diffusers_twin(random_transformer(TINY)).save_pretrained(folder)  # config.json: 4 heads, sample_size 16
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "interpolation_scale": 1.0}))
    hints = {"num_heads": 4, "sample_size": 16, "interpolation_scale": 1, "caption_length": 16}
    assert inspect_transformer(folder, hints).config.num_heads == 4
    for hint, said in (("num_heads", 4), ("num_attention_heads", 4), ("sample_size", "16 \\(128 px\\)")):
        with pytest.raises(CheckpointError, match=f"its config.json says .* {said}, but the hint gives 8"):
            inspect_transformer(folder, {hint: 8, "caption_length": 16})
    with pytest.raises(CheckpointError, match=r"interpolation_scale 1.0, but the hint gives 2.0 \(hints="):
        inspect_transformer(folder, {"interpolation_scale": 2.0, "caption_length": 16})


def test_a_controlnet_hint_its_metadata_contradicts_is_refused(tmp_path: Path) -> None:
    config = ControlNetConfig.for_base(TINY, copies=1)
    path = tmp_path / "controlnet.safetensors"
    save_file(ControlNetTransformer(config).state_dict(), str(path), metadata=heads_metadata(config))
    assert inspect_controlnet(path, {"num_heads": 4}).config.num_heads == 4
    with pytest.raises(CheckpointError, match="its metadata says num_heads 4, but the hint gives 2"):
        inspect_controlnet(path, {"num_heads": 2})


@pytest.mark.parametrize(
    ("option", "given"), [("--heads 2", "2"), ("--caption-length 120", "120"), ("--training-resolution 1024", "128")]
)
def test_the_command_line_refuses_it_before_any_model_loads(
    tagged: Path, tmp_path: Path, capsys, monkeypatch, option: str, given: str
) -> None:
    import pixart_delta_core.pipeline.generation as generation

    for loader in ("load_transformer", "load_text_encoder", "load_vae"):
        monkeypatch.setattr(generation, loader, lambda *a, **k: pytest.fail("a model loaded"))
    out = tmp_path / "h.png"
    command = ["generate", "--transformer", str(tagged), "--t5", "shapes-t5", "--vae", "shapes-taesd", "--prompt", "x"]
    assert main([*command, *option.split(), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"but the hint gives {given} " in err and f"({option.split()[0]}" in err
    assert not out.exists()


def test_the_checkpoint_node_refuses_a_widget_the_file_contradicts(tagged: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / tagged.name).write_bytes(tagged.read_bytes())
    monkeypatch.setenv(PACK.nodes.host.MODELS_ENV, str(tmp_path))
    loader = PACK.NODE_CLASS_MAPPINGS["PixArtDeltaCheckpointLoader"]
    with pytest.raises(ENGINE.errors.CheckpointError, match=r"num_heads 4, but the hint gives 8 .*loader's heads"):
        call_node(loader, ckpt_name=tagged.name, heads="8")
    with pytest.raises(ENGINE.errors.CheckpointError, match=r"caption_length 16, but the hint gives 120"):
        call_node(loader, ckpt_name=tagged.name, caption_length="120")
    model, _ = call_node(loader, ckpt_name=tagged.name, heads="auto", caption_length="auto")
    assert repr(model.transformer.config) == repr(TINY)  # the pack's own copy of the engine's class


def test_a_vae_hint_its_config_json_contradicts_is_refused_naming_both_values(tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    demo_vae(5).save_pretrained(folder)  # its config.json says scaling_factor 0.18215, 4 latent channels
    said = json.loads((folder / "config.json").read_text())
    for name, hint in (
        ("scaling_factor", 0.13025),
        ("latent_channels", 16),
        ("force_upcast", not said["force_upcast"]),
    ):
        message = re.escape(
            f"its config.json says {name} {said[name]!r}, but the hint gives {hint!r} (hints={{{name!r}: ...}} of "
            f"load_vae or inspect_vae): a hint is only for what a checkpoint does not say"
        )
        with pytest.raises(CheckpointError, match=message):
            inspect_vae(folder, hints={name: hint})
        with pytest.raises(CheckpointError, match=message):
            load_vae(folder, hints={name: hint})
    equal = {k: said[k] for k in ("scaling_factor", "latent_channels", "norm_num_groups", "force_upcast")}
    taken = inspect_vae(folder, hints={**equal, "block_out_channels": tuple(said["block_out_channels"])}).config
    assert (taken.scaling_factor, taken.force_upcast) == (said["scaling_factor"], said["force_upcast"])

    unsaid = {k: v for k, v in said.items() if k != "scaling_factor"}  # a config.json without a scaling factor
    (folder / "config.json").write_text(json.dumps(unsaid))
    assert inspect_vae(folder, hints={"scaling_factor": 0.13025}).config.scaling_factor == 0.13025
    assert load_vae(folder, hints={"scaling_factor": 0.13025}).config.scaling_factor == 0.13025


def test_a_vae_hint_the_shape_of_its_weights_contradicts_is_refused_naming_both_values(tmp_path: Path) -> None:
    """A lone file (no config.json): its architecture is read from the weights' shapes, so a hint may only repeat
    it; norm_num_groups, which they do not say, is taken from the hint."""
    file = tmp_path / "vae.safetensors"
    save_file(demo_vae(5).state_dict(), str(file))
    groups = {"norm_num_groups": DEMO_VAE["norm_num_groups"]}
    said = {
        "block_out_channels": list(DEMO_VAE["block_out_channels"]),
        "layers_per_block": DEMO_VAE["layers_per_block"],
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
    }
    for name, hint in (
        ("latent_channels", 16),
        ("block_out_channels", (16, 32, 64)),
        ("layers_per_block", 2),
        ("in_channels", 4),
        ("out_channels", 1),
    ):
        shown = list(hint) if isinstance(hint, tuple) else hint
        message = re.escape(
            f"the shape of its weights says {name} {said[name]!r}, but the hint gives {shown!r} (hints={{{name!r}: "
            f"...}} of load_vae or inspect_vae): a hint is only for what a checkpoint does not say"
        )
        with pytest.raises(CheckpointError, match=message):
            inspect_vae(file, hints={**groups, name: hint})
        with pytest.raises(CheckpointError, match=message):
            load_vae(file, hints={**groups, name: hint})
    equal = {**groups, **said, "block_out_channels": DEMO_VAE["block_out_channels"]}  # a tuple, or a list, alike
    taken = load_vae(file, hints=equal).config
    assert (taken.latent_channels, taken.block_out_channels) == (4, DEMO_VAE["block_out_channels"])
    assert inspect_vae(file, hints={**said, **groups}).config == taken


def test_a_taesd_latent_channels_hint_its_decoder_contradicts_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "taesd.safetensors"  # ComfyUI's single file: no config.json
    save_file(comfy_taesd_state_dict(randomize_(AutoencoderTiny(**TAESD_KWARGS), 0), 1.0, 0.0), str(file))
    with pytest.raises(
        CheckpointError, match=r"the shape of its weights says latent_channels 4, but the hint gives 16"
    ):
        inspect_vae(file, hints={"latent_channels": 16})
    assert inspect_vae(file, hints={"latent_channels": 4}).config.latent_channels == 4


def test_a_taesd_folder_refusal_says_whether_the_odd_value_came_from_a_hint_or_its_config_json(tmp_path: Path) -> None:
    """A diffusers AutoencoderTiny folder whose config.json leaves out act_fn: a hint for it that contradicts TAESD's
    fixed architecture is refused as the hint's, not as config.json's; config.json's own odd value as its own."""
    folder = tmp_path / "taesd"
    randomize_(AutoencoderTiny(**TAESD_KWARGS), 0).save_pretrained(folder)
    said = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "act_fn"}
    (folder / "config.json").write_text(json.dumps(said))
    architecture = r"; the engine runs TAESD's architecture \({'act_fn': 'relu'}\)"
    hint = r"the hint gives {'act_fn': 'silu'} \(hints= of load_vae or inspect_vae\)"
    with pytest.raises(CheckpointError, match=rf"taesd: {hint}{architecture}"):
        inspect_vae(folder, hints={"act_fn": "silu"})
    assert inspect_vae(folder, hints={"act_fn": "relu"}).config.latent_channels == 4

    (folder / "config.json").write_text(json.dumps({**said, "upsample_fn": "bilinear"}))
    with pytest.raises(CheckpointError, match=rf"config.json has {{'upsample_fn': 'bilinear'}} and {hint}; the engine"):
        load_vae(folder, hints={"act_fn": "silu"})
    (folder / "config.json").write_text(json.dumps({**said, "act_fn": "silu"}))
    with pytest.raises(CheckpointError, match=rf"config.json has {{'act_fn': 'silu'}}{architecture}"):
        inspect_vae(folder, hints={"act_fn": "silu"})  # equal to config.json's: the value is config.json's
