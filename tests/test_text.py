"""T5 text encoding: every layout users hold, parity with transformers, prompt semantics, the fp16
guard and refusals (the loader's peak memory: test_load_memory.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5EncoderModel

from pixart_delta_core import cli
from pixart_delta_core.demo.embedded import TOKENIZER_FILES
from pixart_delta_core.demo.files import demo_transformer
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.text.embedding import TextEmbedding
from pixart_delta_core.text.encoder import load_text_encoder, load_tokenizer
from pixart_delta_core.text.t5 import inspect_t5
from tests.helpers import (
    COMFYUI_T5_PREFIX,
    TINY,
    TINY_T5,
    TOKENIZER,
    random_t5,
    random_transformer,
    t5_file_weights,
)

LENGTH = 24  # caption tokens in these tests (PixArt-α/δ: 120, Σ: 300)
PROMPTS = ["A Red Cat sitting on a mat", "", "  an astronaut riding a horse on the moon, highly detailed  "]
FP32_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def t5() -> T5EncoderModel:
    return random_t5(seed=3)


def copy_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:  # the tokenizer's files only: its folder also holds the embedded T5's weights
        shutil.copy(TOKENIZER / name, folder / name)


@pytest.fixture(scope="module")
def files(t5, tmp_path_factory) -> dict[str, Path]:
    """The tiny T5 in every layout: single files, HF folders (sharded too), prefixed and other key sets."""
    root = tmp_path_factory.mktemp("t5")
    weights = t5_file_weights(t5)
    paths = {name: root / f"{name}.safetensors" for name in ("single", "prefixed", "stack", "full", "both-embeddings")}
    save_file(weights, str(paths["single"]))
    save_file(
        {**{COMFYUI_T5_PREFIX + k: v for k, v in weights.items()}, "text_encoders.clip_l.logit_scale": torch.ones(1)},
        str(paths["prefixed"]),
    )
    stack = {k.removeprefix("encoder."): v for k, v in weights.items() if k != "shared.weight"}
    save_file({**stack, "embed_tokens.weight": weights["shared.weight"]}, str(paths["stack"]))
    decoder = {"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(32, 32), "lm_head.weight": torch.zeros(8)}
    save_file({**weights, **decoder}, str(paths["full"]))
    save_file(
        {**weights, "encoder.embed_tokens.weight": weights["shared.weight"].clone()}, str(paths["both-embeddings"])
    )
    paths["hf-folder"] = root / "hf"
    t5.save_pretrained(paths["hf-folder"])
    copy_tokenizer(paths["hf-folder"])
    paths["sharded"] = root / "sharded"
    t5.save_pretrained(paths["sharded"], max_shard_size="500KB")
    copy_tokenizer(paths["sharded"])
    paths["pipeline"] = root / "pipeline"
    t5.save_pretrained(paths["pipeline"] / "text_encoder")
    copy_tokenizer(paths["pipeline"] / "tokenizer")
    return paths


def full_length_reference(t5: T5EncoderModel, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' encoder on the whole padded caption, as diffusers' pipeline runs it."""
    texts = [p.lower().strip() for p in prompts]
    batch = tokenizer(texts, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = t5(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return hidden, batch.attention_mask


# --- loading ---------------------------------------------------------------------------------

LAYOUTS = ["single", "prefixed", "stack", "full", "both-embeddings", "hf-folder", "sharded", "pipeline", "state-dict"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_weights(t5, files, tokenizer, layout: str) -> None:
    given = tokenizer if layout not in ("hf-folder", "sharded", "pipeline") else None  # folders bring their own
    checkpoint = t5_file_weights(t5) if layout == "state-dict" else files[layout]
    encoder = load_text_encoder(checkpoint, dtype="fp32", tokenizer=given)
    got, want = encoder.model.state_dict(), t5.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert encoder.model.shared.weight is encoder.model.encoder.embed_tokens.weight, "embeddings must stay tied"
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_ignored_parts_are_logged(files, tokenizer, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pixart_delta_core"):
        inspect_t5(files["full"])
        inspect_t5(files["prefixed"])
    assert "ignoring its 2 decoder tensors" in caplog.text
    assert f"under '{COMFYUI_T5_PREFIX}', ignoring 1 others" in caplog.text


def test_encode_matches_transformers_on_the_full_caption(t5, files, tokenizer) -> None:
    """Parity, and the short encode: only the longest real prompt is run, yet real tokens are unchanged."""
    encoder = load_text_encoder(files["single"], dtype="fp32", tokenizer=tokenizer)
    embedding = encoder.encode(PROMPTS, LENGTH)
    want, mask = full_length_reference(t5, tokenizer, PROMPTS)
    assert embedding.embeddings.shape == (3, LENGTH, TINY_T5["d_model"])
    assert embedding.mask.dtype == torch.int64
    assert torch.equal(embedding.mask, mask)
    assert encoder.tokenize(PROMPTS, LENGTH)[0].shape[1] < LENGTH, "the encoder must not run over the padding"
    real = mask.bool()
    torch.testing.assert_close(embedding.embeddings[real], want[real], **FP32_TOLERANCE)
    assert not embedding.embeddings[~real].any(), "padding positions must be zeros"


# Ours vs transformers' own from_pretrained of the same HF folder, at the same padded length. bf16: the same
# operations. fp16: ours forms the feed-forward product in fp32 where transformers rounds it to fp16.
# Outputs here are RMS-normalised, |x| < 5.
SAME_LENGTH_TOLERANCE = {
    "fp32": FP32_TOLERANCE,
    "bf16": {"atol": 0.0, "rtol": 0.0},
    "fp16": {"atol": 1e-2, "rtol": 0.0},
}
# ``encode`` runs only up to the longest prompt: other matmul shapes, so in bf16 a rounding step or two
# (bf16's step is 2^-6 = 0.016 between 2 and 4).
ENCODE_TOLERANCE = {**SAME_LENGTH_TOLERANCE, "bf16": {"atol": 4e-2, "rtol": 0.0}}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_parity_with_transformers_loading_the_same_folder(files, tokenizer, dtype: str) -> None:
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    encoder = load_text_encoder(files["hf-folder"], dtype=dtype)
    theirs = T5EncoderModel.from_pretrained(files["hf-folder"], dtype=torch_dtype, local_files_only=True).eval()
    for key, value in theirs.state_dict().items():  # in fp16 both keep wo in fp32
        assert encoder.model.state_dict()[key].dtype == value.dtype, key
    want, mask = full_length_reference(theirs, tokenizer, PROMPTS)
    got, _ = full_length_reference(encoder.model, tokenizer, PROMPTS)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **SAME_LENGTH_TOLERANCE[dtype])
    embedding = encoder.encode(PROMPTS, LENGTH)
    assert embedding.embeddings.dtype == torch_dtype
    torch.testing.assert_close(embedding.embeddings[real], want[real], **ENCODE_TOLERANCE[dtype])


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_single_files_in_every_stored_dtype(t5, tokenizer, tmp_path: Path, file_dtype: torch.dtype) -> None:
    """Weights come out as the file's values upcast (fp8: the fp8-rounded weights), and so do the embeddings."""
    stored = t5_file_weights(t5, file_dtype)
    path = tmp_path / "t5.safetensors"
    save_file(stored, str(path))
    encoder = load_text_encoder(path, dtype="fp32", tokenizer=tokenizer)
    for key, value in stored.items():
        assert torch.equal(encoder.model.state_dict()[key], value.float()), key
    rounded = random_t5(seed=3)
    rounded.load_state_dict({k: v.float() for k, v in stored.items()}, strict=False)  # tied embedding follows
    want, mask = full_length_reference(rounded, tokenizer, PROMPTS)
    real = mask.bool()
    torch.testing.assert_close(encoder.encode(PROMPTS, LENGTH).embeddings[real], want[real], **FP32_TOLERANCE)


def test_loaded_dtypes(files, tokenizer) -> None:
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        encoder = load_text_encoder(files["single"], dtype=dtype, tokenizer=tokenizer)
        assert encoder.dtype == torch_dtype and encoder.device == torch.device("cpu")
        for key, value in encoder.model.state_dict().items():
            keep_fp32 = dtype == "fp16" and key.endswith(".wo.weight")
            assert value.dtype == (torch.float32 if keep_fp32 else torch_dtype), key
    with pytest.raises(CheckpointError, match="unknown weight dtype 'int4'"):
        load_text_encoder(files["single"], dtype="int4", tokenizer=tokenizer)


# --- prompts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(files, tokenizer):
    return load_text_encoder(files["single"], dtype="fp32", tokenizer=tokenizer)


def test_prompts_are_lower_cased_and_stripped(encoder) -> None:
    a = encoder.encode(["  A RED Cat  "], LENGTH)
    b = encoder.encode(["a red cat"], LENGTH)
    assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.mask, b.mask)


def test_truncating_a_huge_prompt_warns_in_one_short_line(encoder, caplog) -> None:
    """A 5,000-word prompt: the warning says how many tokens went and shows only a short excerpt."""
    huge = " ".join(["lighthouse"] * 5000)
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core"):
        encoder.encode([huge], LENGTH)
    (record,) = [r for r in caplog.records if "were dropped" in r.getMessage()]
    assert len(record.getMessage()) < 200
    assert "lighthouse" in record.getMessage() and "..." in record.getMessage()


def test_caption_cleaning_is_optional(encoder) -> None:
    noisy = "<b>A Red Cat</b> @someone https://example.com/cat"
    assert not torch.equal(encoder.encode([noisy], LENGTH).mask, encoder.encode(["a red cat"], LENGTH).mask)
    cleaned = encoder.encode([noisy], LENGTH, clean_caption=True)
    assert torch.equal(cleaned.embeddings, encoder.encode(["a red cat"], LENGTH).embeddings)


def test_truncation_warns_with_the_number_of_dropped_tokens(encoder, tokenizer, caplog) -> None:
    long = "a very detailed painting of a lighthouse on a rocky coast at sunset with crashing waves and seagulls"
    count = len(tokenizer(long).input_ids)
    assert count > LENGTH
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core"):
        embedding = encoder.encode(["a cat", long], LENGTH)
    assert f"prompt 2 is {count} tokens long but the model reads {LENGTH}" in caplog.text  # counted from 1
    assert f"{count - LENGTH} tokens were dropped, from " in caplog.text
    assert "prompt 1 " not in caplog.text and "prompt 0" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixart_delta_core"):  # one text for every prompt: one warning
        encoder.encode([long, long, "a cat"], LENGTH, what="negative prompt")
    (record,) = caplog.records
    assert record.getMessage().startswith(f"negative prompts 1, 2 are {count} tokens long")
    assert embedding.mask[1].all()
    ids = encoder.tokenize([long], LENGTH)[0][0]
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == LENGTH


def test_empty_prompt_is_the_end_token_alone(encoder, tokenizer) -> None:
    embedding = encoder.encode([""], LENGTH)
    assert encoder.tokenize([""], LENGTH)[0].tolist() == [[tokenizer.eos_token_id]]
    assert embedding.mask.tolist() == [[1] + [0] * (LENGTH - 1)]
    assert embedding.embeddings[0, 0].abs().sum() > 0 and not embedding.embeddings[0, 1:].any()


def test_a_prompt_encodes_the_same_alone_or_in_a_batch(encoder) -> None:
    alone = encoder.encode(["a red cat"], LENGTH)
    batch = encoder.encode(["a red cat", PROMPTS[2]], LENGTH)
    torch.testing.assert_close(batch.embeddings[:1], alone.embeddings, **FP32_TOLERANCE)
    assert torch.equal(batch.mask[:1], alone.mask)


def test_sigma_caption_length_and_bad_arguments(encoder) -> None:
    assert encoder.encode(["a cat"], 300).embeddings.shape == (1, 300, TINY_T5["d_model"])
    with pytest.raises(InputError, match="at least 1 token"):
        encoder.encode(["a cat"], 0)
    with pytest.raises(InputError, match="no prompts"):
        encoder.encode([], LENGTH)


def test_text_embedding_helpers(encoder) -> None:
    embedding = encoder.encode(["a", "b"], LENGTH)
    twice = embedding.repeat(2)
    assert twice.batch_size == 4 and twice.length == LENGTH
    assert torch.equal(twice.embeddings[1], embedding.embeddings[0]) and torch.equal(twice.mask[2], embedding.mask[1])
    half = embedding.to(dtype=torch.float16)
    assert half.embeddings.dtype == torch.float16 and half.mask.dtype == torch.int64
    with pytest.raises(InputError, match=r"\[B, L, C\]"):
        TextEmbedding(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.int64))


# --- fp16 ------------------------------------------------------------------------------------


def overflowing_t5(kind: str) -> T5EncoderModel:
    """A tiny T5 whose feed-forward passes fp16's 65504: in the gate x value product (wi x300: up to ~4e5),
    or in the ``wo`` output (wo x3e4: ~7e4)."""
    model = random_t5(seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if kind == "product" and ("wi_0" in name or "wi_1" in name):
                param.mul_(300)
            if kind == "output" and ".wo." in name:
                param.mul_(3e4)
    return model


@pytest.mark.parametrize("kind", ["product", "output"])
def test_fp16_guard_keeps_an_overflowing_feed_forward_finite(tokenizer, tmp_path: Path, kind: str) -> None:
    model = overflowing_t5(kind)
    path = tmp_path / "t5.safetensors"
    save_file(t5_file_weights(model), str(path))
    want, mask = full_length_reference(model, tokenizer, PROMPTS)
    real = mask.bool()
    plain = random_t5(seed=0).half()  # every weight in fp16, transformers' own forward
    plain.load_state_dict(model.state_dict())
    naive, _ = full_length_reference(plain, tokenizer, PROMPTS)
    if kind == "product":
        assert not torch.isfinite(naive[real]).all(), "the test model must overflow in plain fp16"
    else:  # transformers clamps infinities between blocks: finite, but far from the truth
        assert (naive[real].float() - want[real]).abs().max() > 0.3, "the test model must overflow in plain fp16"
    ours = load_text_encoder(path, dtype="fp16", tokenizer=tokenizer).encode(PROMPTS, LENGTH)
    assert torch.isfinite(ours.embeddings).all()
    # fp16 rounding of the other layers only: outputs are RMS-normalised (|x| < 5)
    torch.testing.assert_close(ours.embeddings[real].float(), want[real], atol=3e-2, rtol=1e-2)


# --- refusals --------------------------------------------------------------------------------


def save(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "t5.safetensors") -> Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_other_models_are_refused_with_what_they_look_like(tmp_path: Path, tokenizer) -> None:
    vae = {"decoder.up.0.block.0.conv1.weight": torch.zeros(4, 4, 3, 3), "post_quant_conv.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="not a T5 text encoder: it looks like a VAE"):
        load_text_encoder(save(tmp_path, vae), tokenizer=tokenizer)
    pixart = random_transformer(TINY).state_dict()
    with pytest.raises(CheckpointError, match="not a T5 text encoder: it looks like a PixArt transformer"):
        load_text_encoder(save(tmp_path, pixart, "pixart.safetensors"), tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match=r"unknown model .* expected T5 keys"):
        load_text_encoder(save(tmp_path, {"foo.weight": torch.zeros(2)}, "foo.safetensors"), tokenizer=tokenizer)


def test_truncated_file(files, tmp_path: Path, tokenizer) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(files["single"].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_text_encoder(cut, tokenizer=tokenizer)


def test_missing_wrong_and_unexpected_keys_are_named(t5, tmp_path: Path, tokenizer) -> None:
    weights = t5_file_weights(t5)
    gone = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    with pytest.raises(CheckpointError, match=f"missing: {gone}"):
        load_text_encoder(save(tmp_path, {k: v for k, v in weights.items() if k != gone}), tokenizer=tokenizer)
    extra = {**weights, "encoder.block.0.layer.0.SelfAttention.extra": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.block\.0\.layer\.0\.SelfAttention\.extra"):
        load_text_encoder(save(tmp_path, extra), tokenizer=tokenizer)
    gap = {k.replace("encoder.block.1.", "encoder.block.2."): v for k, v in weights.items()}  # blocks 0 and 2
    with pytest.raises(CheckpointError, match=r"encoder blocks \[1\] are missing"):
        load_text_encoder(save(tmp_path, gap), tokenizer=tokenizer)
    bad = {**weights, "encoder.block.1.layer.0.SelfAttention.k.weight": torch.zeros(32, 31)}
    with pytest.raises(CheckpointError, match=r"SelfAttention\.k\.weight: expected \[32, 32\], found \[32, 31\]"):
        load_text_encoder(save(tmp_path, bad), tokenizer=tokenizer)


def test_other_t5_kinds_and_ambiguous_files_are_refused(t5, tmp_path: Path, tokenizer) -> None:
    weights = t5_file_weights(t5)
    bias = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
    umt5 = {**weights, bias.format(1): weights[bias.format(0)].clone()}
    with pytest.raises(CheckpointError, match="UMT5"):
        load_text_encoder(save(tmp_path, umt5), tokenizer=tokenizer)
    relu = {k.replace("wi_0", "wi"): v for k, v in weights.items() if "wi_1" not in k}
    with pytest.raises(CheckpointError, match="ReLU feed-forward"):
        load_text_encoder(save(tmp_path, relu), tokenizer=tokenizer)
    two = {**{f"a.{k}": v for k, v in weights.items()}, **{f"b.{k}": v.clone() for k, v in weights.items()}}
    with pytest.raises(CheckpointError, match=r"several T5 encoders \(under \['a\.', 'b\.'\]\)"):
        load_text_encoder(save(tmp_path, two), tokenizer=tokenizer)


def test_tokenizer_must_fit_the_encoder(tmp_path: Path, tokenizer) -> None:
    small = random_t5(seed=0, vocab_size=100)
    with pytest.raises(CheckpointError, match="tokenizer has 32100 tokens but the encoder embeds only 100"):
        load_text_encoder(save(tmp_path, t5_file_weights(small)), tokenizer=tokenizer)


def test_missing_tokenizer_says_where_it_looked_and_what_to_pass(files, t5, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"carries none.*--tokenizer on the command line.*t5_tokenizer"):
        load_text_encoder(files["single"])
    bare = tmp_path / "bare"
    t5.save_pretrained(bare)
    with pytest.raises(CheckpointError, match=f"looked in {bare}, {bare / 'tokenizer'}"):
        load_text_encoder(bare)
    with pytest.raises(InputError, match="weights given as tensors carry no tokenizer"):
        load_text_encoder(t5_file_weights(t5))
    with pytest.raises(CheckpointError, match="no T5 tokenizer there"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no T5 weights in it"):
        load_text_encoder(tmp_path / "empty", tokenizer=TOKENIZER)


def test_info_command_describes_a_t5_file_and_still_a_transformer(files, tmp_path: Path, capsys) -> None:
    pixart = save(tmp_path, demo_transformer().state_dict(), "pixart.safetensors")
    assert cli.main(["info", str(files["single"]), str(files["pipeline"]), str(pixart)]) == 0
    out = capsys.readouterr().out
    assert out.count("T5 text encoder, transformers layout: T5-v1.1 encoder, 2 layers, width 32") == 2
    assert "PixArt transformer" in out
