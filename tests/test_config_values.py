"""Config values (issue 10, kind 5) and folder JSON (kind 6): every config refuses a bad field by name and
value, from its constructor, a config.json, metadata or hints; every JSON file is read through one guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.checkpoints.files import folder_config, open_checkpoint, read_json
from pixart_delta_core.demo.files import demo_vae
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.controlnet_config import ControlNetConfig
from pixart_delta_core.models.transformer import inspect_transformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.text.t5 import inspect_t5
from pixart_delta_core.text.t5_config import T5EncoderConfig
from pixart_delta_core.vae.autoencoder import inspect_vae
from pixart_delta_core.vae.vae_config import VaeConfig
from tests.helpers import TINY, random_t5, random_transformer, t5_file_weights

NAN = float("nan")
BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def refused(call, field: str, value: object) -> str:
    """The CheckpointError ``call()`` raises, once it names ``field`` and the value found."""
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert field in message and repr(value) in message, message
    return message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_heads", 0),
        ("num_heads", -1),
        ("num_heads", "abc"),
        ("sample_size", 0),
        ("sample_size", -32),
        ("sample_size", 10**9),
        ("sample_size", 2.5),
        ("caption_length", 0),
        ("caption_length", 10**6),
        ("interpolation_scale", NAN),
        ("interpolation_scale", 0),
        ("depth", 10**6),
        ("depth", True),
        ("micro_conditions", "yes"),
    ],
)
def test_transformer_config_refuses_bad_fields(field: str, value: object) -> None:
    refused(lambda: TransformerConfig(**{field: value}), field, value)


@pytest.mark.parametrize(("field", "value"), [("copies", 0), ("num_heads", -1), ("caption_channels", 0.5)])
def test_controlnet_config_refuses_bad_fields(field: str, value: object) -> None:
    refused(lambda: ControlNetConfig(**{field: value}), field, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("d_model", -1), ("num_layers", 100000), ("num_heads", "64"), ("layer_norm_epsilon", NAN), ("eos_token_id", -1)],
)
def test_t5_config_refuses_bad_fields(field: str, value: object) -> None:
    refused(lambda: T5EncoderConfig(**{field: value}), field, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scaling_factor", NAN), ("scaling_factor", 0), ("norm_num_groups", 0), ("norm_num_groups", -8)],
)
def test_vae_config_refuses_bad_fields(field: str, value: object) -> None:
    refused(lambda: VaeConfig(**{field: value}), field, value)


def test_the_defaults_pass_their_own_checks() -> None:
    assert TransformerConfig().describe() and ControlNetConfig().describe()
    assert T5EncoderConfig().describe() and VaeConfig().describe()


# --- values from files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer_folder(tmp_path_factory) -> Path:
    from tests.helpers import diffusers_twin

    folder = tmp_path_factory.mktemp("pipeline") / "transformer"
    diffusers_twin(random_transformer(TINY)).save_pretrained(folder)
    (folder.parent / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    return folder


def with_config(folder: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of a model folder (and of the pipeline's model_index.json beside it) whose config.json has
    ``changes``."""
    copy = tmp_path / folder.name
    copy.mkdir(parents=True)
    pipeline = folder.parent / "model_index.json"
    if pipeline.is_file() and not (tmp_path / pipeline.name).exists():
        (tmp_path / pipeline.name).write_bytes(pipeline.read_bytes())
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("num_attention_heads", "num_heads", "abc"),
        ("num_attention_heads", "num_heads", 0),
        ("sample_size", "sample_size", 2.5),
        ("sample_size", "sample_size", 10**9),
        ("interpolation_scale", "interpolation_scale", NAN),
    ],
)
def test_transformer_config_json_values_are_checked(
    transformer_folder: Path, tmp_path: Path, key: str, field: str, value: object
) -> None:
    assert inspect_transformer(transformer_folder).config.num_heads == TINY.num_heads  # the folder itself loads
    refused(lambda: inspect_transformer(with_config(transformer_folder, tmp_path, **{key: value})), field, value)


def test_a_class_name_that_is_a_number_is_refused(transformer_folder: Path, tmp_path: Path) -> None:
    refused(lambda: inspect_transformer(with_config(transformer_folder, tmp_path, _class_name=7)), "_class_name", 7)
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": 3.5}))
    moved = with_config(transformer_folder, pipeline)
    refused(lambda: folder_config(open_checkpoint(moved)), "_class_name", 3.5)


def test_metadata_heads_must_be_an_integer(tmp_path: Path) -> None:
    model = random_transformer(TINY)
    path = tmp_path / "t.safetensors"
    save_file(model.reference_state_dict(), str(path), metadata={"num_heads": "abc"})
    refused(lambda: inspect_transformer(path), "num_heads", "abc")


def test_vae_config_json_values_are_checked(tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    demo_vae().save_pretrained(folder)
    assert inspect_vae(folder).config.norm_num_groups == 8
    (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace('"scaling_factor": 0.18215', '"scaling_factor": NaN')
    )
    refused(lambda: inspect_vae(folder), "scaling_factor", NAN)
    config = json.loads((folder / "config.json").read_text())
    del config["norm_num_groups"]  # a hint for what config.json does not give is checked like its values
    (folder / "config.json").write_text(json.dumps(config))
    refused(lambda: inspect_vae(folder, hints={"norm_num_groups": -8}), "norm_num_groups", -8)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("t5")
    random_t5().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("field", "value"), [("d_model", -1), ("num_layers", 100000), ("num_heads", [4])])
def test_t5_config_json_values_are_checked(t5_folder: Path, tmp_path: Path, field: str, value: object) -> None:
    assert inspect_t5(t5_folder).config.num_heads == 4
    message = refused(lambda: inspect_t5(with_config(t5_folder, tmp_path, **{field: value})), field, value)
    assert "config.json" in message


def test_t5_config_json_must_match_the_tensors(t5_folder: Path, tmp_path: Path) -> None:
    message = refused(lambda: inspect_t5(with_config(t5_folder, tmp_path, num_heads=8, d_kv=4)), BIAS, [32, 4])
    assert "8 heads" in message


def test_a_transposed_position_bias_is_refused(tmp_path: Path) -> None:
    weights = t5_file_weights(random_t5())  # 32 buckets x 4 heads of 8
    path = tmp_path / "t5.safetensors"
    save_file(weights, str(path))
    assert inspect_t5(path).config.d_kv == 8
    weights[BIAS] = weights[BIAS].T.contiguous()  # would read as 4 buckets x 32 heads of width 1
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=re.escape("[4, 32]") + ".*transposed"):
        inspect_t5(path)


# --- folder JSON (kind 6) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"", "not"),
        (b"{", "not"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[1, 2]", "found list"),
        (b'"text"', "found str"),
        (b"[" * 100000 + b"]" * 100000, "not"),
    ],
)
def test_json_files_are_read_through_one_guard(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(found)) as caught:
        read_json(path)
    assert "config.json" in str(caught.value)


def test_every_folder_json_goes_through_the_guard(transformer_folder: Path, t5_folder: Path, tmp_path: Path) -> None:
    for folder, inspect in ((transformer_folder, inspect_transformer), (t5_folder, inspect_t5)):
        copy = with_config(folder, tmp_path / folder.name)
        (copy / "config.json").write_bytes(b"\x80not json")
        with pytest.raises(CheckpointError, match=re.escape("config.json: expected UTF-8 JSON")):
            inspect(copy)
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("[]")
    moved = with_config(transformer_folder, pipeline)  # keeps the broken model_index.json
    with pytest.raises(CheckpointError, match=re.escape("model_index.json: expected a JSON object, found list")):
        inspect_transformer(moved)


def test_an_index_naming_a_missing_shard_or_a_folder_is_refused(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "m-1.safetensors"))
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
    with pytest.raises(CheckpointError, match=re.escape("m-2.safetensors")):
        open_checkpoint(tmp_path)
    (tmp_path / "m-2.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=re.escape("m-2.safetensors")):
        open_checkpoint(tmp_path)
    index.write_text(json.dumps({"weight_map": ["m-1.safetensors"]}))
    with pytest.raises(CheckpointError, match="weight_map"):
        open_checkpoint(tmp_path)
