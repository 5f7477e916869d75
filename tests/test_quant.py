"""Quantized loading (int8 LLM.int8, NF4): T5 from every file kind against its unquantized load, layers that
really hold int8/4-bit data, fp16 overflow safety, quality bounds, the transformer's and ControlNet's
blocks, peak memory while loading, and refused files. Whether bitsandbytes is there and can run:
test_quant_availability.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pixart_delta_core.demo.random_weights import randomize_, t5_weights
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer, load_controlnet
from pixart_delta_core.models.layers import Block
from pixart_delta_core.models.transformer import load_transformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.quant import bnb_layers
from pixart_delta_core.quant.bnb_layers import Int8Linear, Nf4Linear, quantize_int8, quantize_nf4
from pixart_delta_core.quant.quantization import Quantization, parse_quantization
from pixart_delta_core.quant.streaming import quantized_ops
from pixart_delta_core.text.encoder import load_text_encoder
from pixart_delta_core.text.t5 import load_t5
from pixart_delta_core.text.t5_config import T5_V1_1_XXL
from tests.helpers import MID_PIXART, PIXART_HINTS, ROOT, SMALL_T5, TOKENIZER, random_transformer

FILE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FILE_DTYPES |= {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
MODES = [Quantization.INT8, Quantization.NF4]


def token_ids(vocab: int, batch: int = 3, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-token embeddings [tokens, C] in fp32."""
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state.flatten(0, 1).float()


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(smallest per-row cosine similarity, largest absolute error)."""
    cos = torch.nn.functional.cosine_similarity(ours, reference, dim=-1)
    return cos.min().item(), (ours - reference).abs().max().item()


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (Int8Linear, Nf4Linear))]


# --- names ----------------------------------------------------------------------------------


def test_quantization_names_parse_at_the_edges() -> None:
    assert parse_quantization("int8") is Quantization.INT8
    assert parse_quantization(" NF4 ") is Quantization.NF4
    assert parse_quantization("none") is Quantization.NONE
    assert parse_quantization(Quantization.INT8) is Quantization.INT8
    for bad in ("8bit", "fp8", "", None):
        with pytest.raises(InputError, match="expected one of none, int8, nf4"):
            parse_quantization(bad)


# --- T5: every file kind, streamed and quantized ------------------------------------------------


@pytest.fixture(scope="module")
def small_t5_files(tmp_path_factory) -> dict[str, Path]:
    """The small T5 as single files in every dtype users hold, and as a sharded HF folder."""
    root = tmp_path_factory.mktemp("t5q")
    weights = t5_weights(SMALL_T5, seed=0)
    paths = {}
    for name, dtype in FILE_DTYPES.items():
        paths[name] = root / f"t5_{name}.safetensors"
        save_file({k: v.to(dtype) for k, v in weights.items()}, str(paths[name]))
    paths["sharded-folder"] = root / "hf"
    load_t5(paths["fp32"], "fp32").save_pretrained(paths["sharded-folder"], max_shard_size="100KB")
    assert len(list(paths["sharded-folder"].glob("model-*.safetensors"))) > 1
    return paths


# (smallest per-token cosine, largest error) vs fp32 for 2 blocks 64 wide, outputs up to ~4; measured over every
# file kind and compute dtype: int8 >= 0.9995, <= 0.09; NF4 >= 0.971, <= 0.74.
SMALL_BOUNDS = {Quantization.INT8: (0.999, 0.15), Quantization.NF4: (0.95, 1.0)}


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("kind", [*FILE_DTYPES, "sharded-folder"])
def test_quantized_t5_matches_its_unquantized_load(small_t5_files, kind: str, mode: Quantization) -> None:
    """Each file quantized while streaming vs the same file loaded unquantized (fp8 files: upcast chunk-wise)."""
    ids = token_ids(SMALL_T5.vocab_size)
    reference = embed(load_t5(small_t5_files[kind], "fp32"), ids)
    model = load_t5(small_t5_files[kind], "bf16", quantization=mode)
    cos, err = agreement(embed(model, ids), reference)
    min_cos, max_err = SMALL_BOUNDS[mode]
    assert cos >= min_cos and err <= max_err, f"{kind} {mode.value}: cosine {cos:.5f}, error {err:.4f}"


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_quantized_t5_computes_in_every_dtype(small_t5_files, dtype: str, mode: Quantization) -> None:
    ids = token_ids(SMALL_T5.vocab_size)
    reference = embed(load_t5(small_t5_files["fp32"], "fp32"), ids)
    model = load_t5(small_t5_files["fp32"], dtype, quantization=mode)
    assert model.shared.weight.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    cos, err = agreement(embed(model, ids), reference)
    min_cos, max_err = SMALL_BOUNDS[mode]
    assert cos >= min_cos and err <= max_err, f"{dtype} {mode.value}: cosine {cos:.5f}, error {err:.4f}"


def test_quantized_layers_hold_only_quantized_weights(small_t5_files) -> None:
    """bitsandbytes layers with int8 / packed 4-bit data where every block linear was; no 16-bit copy kept,
    before or after a forward; embedding, norms and position bias stay in the compute dtype."""
    c = SMALL_T5
    shapes = {"q": (c.d_model, c.d_model), "wi_0": (c.d_ff, c.d_model), "wo": (c.d_model, c.d_ff)}
    for mode, base, data_dtype in ((Quantization.INT8, bnb.nn.Linear8bitLt, torch.int8),
                                   (Quantization.NF4, bnb.nn.Linear4bit, torch.uint8)):  # fmt: skip
        model = load_t5(small_t5_files["fp16"], "bf16", quantization=mode)
        layers = quantized_layers(model)
        assert len(layers) == 7 * c.num_layers  # q, k, v, o, wi_0, wi_1, wo per block
        assert not [n for n, m in model.named_modules() if type(m) is nn.Linear]
        for _ in range(2):  # as loaded, then after a forward
            for name, layer in model.named_modules():
                if not isinstance(layer, (Int8Linear, Nf4Linear)):
                    continue
                assert isinstance(layer, base) and layer.weight.dtype == data_dtype, name
                if mode is Quantization.INT8:
                    assert layer.weight.shape == (layer.out_features, layer.in_features)
                else:
                    assert layer.weight.numel() == layer.out_features * layer.in_features // 2
                    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested
                kind = name.rsplit(".", 1)[-1]
                assert (layer.out_features, layer.in_features) == shapes.get(
                    kind, (layer.out_features, layer.in_features)
                )
                held = [t for t in layer.state_dict().values() if t.is_floating_point()]
                assert all(t.numel() < layer.in_features * layer.out_features // 8 for t in held), name
            embed(model, token_ids(c.vocab_size))
        assert model.shared.weight.dtype == torch.bfloat16
        block = model.encoder.block[0].layer
        assert block[0].layer_norm.weight.dtype == torch.bfloat16
        assert block[0].SelfAttention.relative_attention_bias.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("forward_first", [False, True], ids=["as-loaded", "after-a-forward"])
def test_an_int8_layer_moved_by_its_parent_computes_with_the_moved_weights(forward_first: bool) -> None:
    """A parent's ``.to()`` (how ComfyUI moves a model on and off the GPU) moves every int8 weight the layer
    computes with: none still refers to the tensors it held before (on a GPU those would stay allocated there).
    CPU to CUDA replaces each parameter's data in place; a CPU copy does the same here, so no GPU is needed."""
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)).half()
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    layer, unmoved = (quantized_ops(Quantization.INT8, "cpu").Linear(128, 64, False, device="meta") for _ in "ab")
    for each in (layer, unmoved):
        each.quantize_weight(weight, torch.bfloat16)
    if forward_first:
        with torch.no_grad():
            layer(x)
    old = {t.data_ptr() for t in (layer.weight, layer.weight.CB, layer.state.CB) if t is not None}
    nn.Sequential(layer)._apply(lambda t: t.clone())
    held = [t for t in (layer.weight, layer.weight.CB, layer.state.CB) if t is not None]
    assert held and not {t.data_ptr() for t in held} & old
    with torch.no_grad():
        torch.testing.assert_close(layer(x), unmoved(x), rtol=0, atol=0)
    assert layer.state.CB.data_ptr() == layer.weight.data_ptr()


def test_chunked_quantization_equals_bitsandbytes_whole_matrix(monkeypatch) -> None:
    """Quantizing a few rows at a time gives bitsandbytes' own result for the whole matrix, bit for bit."""
    monkeypatch.setattr(bnb_layers, "CHUNK_WEIGHTS", 1 << 16)  # 56 rows of 1152: 11 chunks
    weight = torch.randn(600, 1152, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    codes, scales, _ = quantize_int8(weight)
    want_codes, want_scales, _ = bnb.functional.int8_vectorwise_quant(weight)
    assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)
    packed, state, _ = quantize_nf4(weight)
    want_packed, want_state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=True,
                                                           quant_type="nf4")  # fmt: skip
    assert torch.equal(packed, want_packed)
    dequantize = bnb.functional.dequantize_4bit
    assert torch.equal(dequantize(packed, state), dequantize(want_packed, want_state))
    assert weight.numel() > bnb_layers.CHUNK_WEIGHTS, "the matrix must span several chunks"


def test_text_encoder_loads_quantized_with_its_tokenizer(small_t5_files) -> None:
    tokenizer = TOKENIZER
    weights = t5_weights(replace(SMALL_T5, vocab_size=32128), seed=2)
    prompts = ["a red cat on a mat", ""]
    plain = load_text_encoder(weights, "fp32", tokenizer=tokenizer).encode(prompts, 16)
    ours = load_text_encoder(weights, "bf16", tokenizer=tokenizer, quantization="int8").encode(prompts, 16)
    real = plain.mask.bool()
    assert torch.equal(ours.mask, plain.mask)
    cos, err = agreement(ours.embeddings[real].float(), plain.embeddings[real])
    assert cos >= 0.999 and err <= 0.15, (cos, err)
    assert not ours.embeddings[~real].any()


# --- fp16 overflow --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["product", "output"])
def test_quantized_feed_forward_cannot_overflow_fp16(kind: str, dtype: str, mode: Quantization, monkeypatch) -> None:
    """A T5 whose gate x value product (wi x300: ~1e5) or ``wo`` output (wo x3e4: ~1e5) passes fp16's 65504;
    the quantized layers multiply in fp16 either way. Without the input scaling the same model overflows."""
    weights = t5_weights(SMALL_T5, seed=0)
    for key in weights:
        if kind == "product" and (".wi_0." in key or ".wi_1." in key):
            weights[key] = weights[key] * 300
        if kind == "output" and ".wo." in key:
            weights[key] = weights[key] * 3e4
    ids = token_ids(SMALL_T5.vocab_size)
    reference = embed(load_t5(weights, "fp32"), ids)
    ours = embed(load_t5(weights, dtype, quantization=mode), ids)
    assert torch.isfinite(ours).all()
    cos, _ = agreement(ours, reference)
    assert cos >= OVERFLOW_MIN_COSINE[mode], cos
    if mode is Quantization.NF4 and dtype == "bf16":
        return  # NF4 computes in bf16 here: nothing passes through fp16
    monkeypatch.setattr(bnb_layers, "fp16_scale", lambda x, bound: 1.0)
    unguarded = embed(load_t5(weights, dtype, quantization=mode), ids)
    assert not torch.isfinite(unguarded).all() or agreement(unguarded, reference)[0] < 0.9, "the model must overflow"


# These weights (x300, x3e4) make the small T5 touchier: measured int8 >= 0.9987, NF4 >= 0.857.
OVERFLOW_MIN_COSINE = {Quantization.INT8: 0.998, Quantization.NF4: 0.8}


# --- quality: embeddings vs bf16 and fp32 -----------------------------------------------------

# 4 blocks, 512 wide, outputs up to ~5; measured against bf16 (random | 8 outlier channels): int8 smallest cosine
# 0.9992 | 0.990, largest error 0.16 | 0.41; NF4 0.964 | 0.744, 1.0 | 2.7; int8 without the outlier split
# 0.9992 | 0.887 (bf16 itself against fp32: 0.99991 | 0.9955).
MID_T5 = replace(T5_V1_1_XXL, d_model=512, d_kv=64, num_heads=8, d_ff=1024, num_layers=4, vocab_size=2048)
QUALITY_BOUNDS = {  # (outlier channels, mode): (smallest cosine, largest error) against bf16
    (0, Quantization.INT8): (0.998, 0.3),
    (0, Quantization.NF4): (0.93, 1.6),
    (8, Quantization.INT8): (0.98, 0.7),
    (8, Quantization.NF4): (0.65, 3.5),
}


@pytest.mark.parametrize("outliers", [0, 8], ids=["random", "outlier-channels"])
def test_quantized_embeddings_against_bf16(outliers: int) -> None:
    """LLM.int8 stays close to bf16, NF4 further off; on a trained-looking T5 LLM.int8's outlier split matters."""
    weights = t5_weights(MID_T5, seed=0, outlier_channels=outliers)
    ids = token_ids(MID_T5.vocab_size, batch=4, length=32)
    bf16 = embed(load_t5(weights, "bf16"), ids)
    measured = {}
    for mode in MODES:
        model = load_t5(weights, "bf16", quantization=mode)
        measured[mode] = agreement(embed(model, ids), bf16)
        min_cos, max_err = QUALITY_BOUNDS[(outliers, mode)]
        cos, err = measured[mode]
        assert cos >= min_cos and err <= max_err, f"{mode.value}: cosine {cos:.5f}, error {err:.4f}"
        if mode is Quantization.INT8 and outliers:
            for layer in quantized_layers(model):
                layer.outlier_threshold = 0.0  # every input feature in int8
            no_split = agreement(embed(model, ids), bf16)
            assert no_split[0] < measured[mode][0] - 0.05, (no_split, measured[mode])
    assert measured[Quantization.INT8][0] > measured[Quantization.NF4][0]


# --- the transformer and the ControlNet ------------------------------------------------------

# Largest error of the output vs fp32 (outputs up to ~5.3), in fp32 | bf16 compute: measured int8 0.035 | 0.051,
# NF4 0.27 | 0.26 (bf16 unquantized: 0.031).
PIXART_BOUNDS = {Quantization.INT8: 0.1, Quantization.NF4: 0.5}


def pixart_inputs(config: TransformerConfig) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    caption = torch.randn(2, config.caption_length, config.caption_channels, generator=generator)
    mask = torch.ones(2, config.caption_length, dtype=torch.long)
    mask[1, 5:] = 0
    return x, torch.tensor([400.0]), caption, mask


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantized_transformer_parity_with_fp32(mode: Quantization, dtype: str) -> None:
    weights = random_transformer(MID_PIXART, seed=1).state_dict()
    inputs = pixart_inputs(MID_PIXART)
    with torch.no_grad():
        want = load_transformer(weights, "fp32", hints=PIXART_HINTS)(*inputs)
        model = load_transformer(weights, dtype, hints=PIXART_HINTS, quantization=mode)
        got = model(*inputs).float()
    assert torch.isfinite(got).all()
    error = (got - want).abs().max().item()
    assert error <= PIXART_BOUNDS[mode], f"largest error {error:.4f}"
    assert error > 0, "quantized weights must change the output a little"
    in_blocks = [m for b in model.modules() if isinstance(b, Block) for m in b.modules() if isinstance(m, nn.Linear)]
    assert quantized_layers(model) == in_blocks and len(in_blocks) == 7 * MID_PIXART.depth
    plain = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert {n.split(".")[0] for n in plain} == {"t_embedder", "t_block", "y_embedder", "final_layer"}
    assert model.t_block[1].weight.dtype == model.dtype


def test_quantized_controlnet_quantizes_its_copies_only() -> None:
    base = random_transformer(MID_PIXART, seed=1)
    weights = randomize_(ControlNetTransformer.from_base(base, copies=1), seed=2).state_dict()
    base = load_transformer(base.state_dict(), "fp32", hints=PIXART_HINTS)
    x, t, caption, mask = pixart_inputs(MID_PIXART)
    control = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = base(x, t, caption, mask, control=load_controlnet(weights, base.config).hook(base, control))
        net = load_controlnet(weights, base.config, quantization="int8")
        got = base(x, t, caption, mask, control=net.hook(base, control))
    assert len(quantized_layers(net)) == 7
    assert type(net.controlnet[0].before_proj) is nn.Linear and type(net.controlnet[0].after_proj) is nn.Linear
    assert (got - want).abs().max().item() <= PIXART_BOUNDS[Quantization.INT8]


def test_ops_and_quantization_together_are_refused() -> None:
    from pixart_delta_core.ops import Ops

    class Other(Ops):
        Linear = type("OtherLinear", (nn.Linear,), {})

    with pytest.raises(InputError, match="no plain linear layers in its blocks"):
        load_transformer(
            random_transformer(MID_PIXART).state_dict(), hints=PIXART_HINTS, ops=Other, quantization="int8"
        )


# --- peak memory while loading -----------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_peak_memory_while_quantizing_a_mid_size_t5(tmp_path: Path) -> None:
    """A 4-block, 1024-wide T5 (an fp16 file; 51 M weights in its linear layers, 103 MB in fp16) loaded into int8
    and NF4, each in a fresh process. Bound: the loader grows by at most the quantized model plus 3/4 of those
    layers in fp16, so it never held them all in fp16 (measured: int8 model 0.060 GB + 0.033, NF4 0.035 + 0.055)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "t5_quant_memory.py"), "--size", "mid", "--modes", "int8,nf4",
         "--cache", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    fp16_linears = 4 * (4 * 1024 * 1024 + 3 * 1024 * 2816) * 2 / 1e9
    for mode in ("int8", "nf4"):
        measured = result[mode]
        assert measured["model_gb"] < 0.6 * fp16_linears, "the model must be quantized"
        bound = measured["model_gb"] + 0.75 * fp16_linears
        assert measured["growth_gb"] <= bound, f"{mode}: grew {measured['growth_gb']} GB, bound {bound:.3f} GB"


# --- errors: bad files ---------------------------------------------------------------------------


def test_integer_weights_cannot_be_quantized(tmp_path: Path) -> None:
    weights = t5_weights(SMALL_T5)
    weights["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(64, 64, dtype=torch.int8)
    path = tmp_path / "t5.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=r"expected floating-point weights .*SelfAttention\.q\.weight: int8$"):
        load_t5(path, quantization="int8")


def test_a_truncated_file_is_refused_before_quantizing(small_t5_files, tmp_path: Path) -> None:
    data = small_t5_files["fp16"].read_bytes()
    path = tmp_path / "t5.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_t5(path, quantization="nf4")


# --- on the GPU ------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: weights are quantized on the GPU there")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_quantized_on_the_gpu(small_t5_files, mode: Quantization) -> None:
    ids = token_ids(SMALL_T5.vocab_size)
    reference = embed(load_t5(small_t5_files["fp16"], "fp32"), ids)
    model = load_t5(small_t5_files["fp16"], "fp16", "cuda", quantization=mode)
    assert all(layer.weight.device.type == "cuda" for layer in quantized_layers(model))
    cos, err = agreement(embed(model, ids.cuda()).cpu(), reference)
    assert cos >= SMALL_BOUNDS[mode][0] and err <= SMALL_BOUNDS[mode][1], (cos, err)
