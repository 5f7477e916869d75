"""Helpers for the node tests: models in ComfyUI's folder layout, calling nodes as ComfyUI does, a core-VAE
stand-in. Nodes use relative imports, so the pack is imported the way ComfyUI imports it (``load_pack``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.transformer_config import REFERENCE_ONLY, TransformerConfig, to_diffusers
from pixart_delta_core.vae.autoencoder import Vae
from pixart_delta_core.vae.vae_config import SD_VAE, VaeConfig, ldm_table
from tests.helpers import TINY_T5, random_t5, random_transformer, t5_file_weights
from tests.test_pack_entry import load_pack

PACK = load_pack()
ENGINE = PACK.pixart_delta_core  # the pack's own copy of the engine: its error classes are the ones raised

# A 1024-MS-like transformer with 72-wide heads (detectable from the weights alone), reading a tiny T5.
BASE = TransformerConfig(
    depth=3,
    hidden_size=144,
    num_heads=2,
    mlp_hidden=576,
    caption_channels=TINY_T5["d_model"],
    caption_length=120,
    sample_size=128,
    micro_conditions=True,
    interpolation_scale=2.0,
)
CONTROL_COPIES = 2
# The files the example workflows name, where they go under ComfyUI's models/ folder.
MODEL_FILES = {
    "alpha": "checkpoints/PixArt-XL-2-1024-MS.pth",
    "lcm": "diffusion_models/PixArt-LCM-XL-2-1024-MS.safetensors",
    "controlnet": "checkpoints/PixArt-XL-2-1024-ControlNet.pth",
    "t5": "text_encoders/t5xxl_fp16.safetensors",
    "vae": "vae/sd-vae-ft-ema.safetensors",
    "lcm_lora": "loras/PixArt-LCM-LoRA-XL-2-1024-MS.safetensors",
}
LCM_PIPELINE = "diffusers/PixArt-LCM-XL-2-1024-MS"  # the LCM as a whole diffusers repository folder
TINY_VAE = VaeConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)


def write_models(root: Path, tokenizer: Path | None = None, full_vae: bool = False) -> dict[str, Path]:
    """Tiny random models in the real layouts and file names under ``root`` (ComfyUI's models/ folder).

    ``tokenizer``: a T5 tokenizer folder copied into the diffusers pipeline; ``full_vae``: also the SD VAE
    at full size as an LDM single file (what core VAELoader reads: its architecture is fixed).
    """
    paths = {name: root / rel for name, rel in MODEL_FILES.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    base = random_transformer(BASE, seed=1)
    lcm = random_transformer(replace(BASE, null_caption=False), seed=2)  # diffusers files carry no null caption
    torch.save({"state_dict": base.reference_state_dict()}, paths["alpha"])
    lcm_weights = {k: v for k, v in to_diffusers(lcm.state_dict()).items() if k not in REFERENCE_ONLY}
    save_file(lcm_weights, str(paths["lcm"]))
    controlnet = randomize_(ControlNetTransformer.from_base(base, CONTROL_COPIES), seed=4)
    whole = {f"base_model.{k}": v for k, v in base.reference_state_dict().items()}
    torch.save({"state_dict": {**whole, **controlnet.state_dict()}}, paths["controlnet"])
    save_file(random_peft_lora(BASE), str(paths["lcm_lora"]))
    t5 = random_t5(seed=3)
    save_file(t5_file_weights(t5, torch.float16), str(paths["t5"]))
    paths["lcm_pipeline"] = _write_pipeline(root / LCM_PIPELINE, lcm_weights, t5, tokenizer)
    if full_vae:
        with torch.device("meta"):
            vae = AutoencoderKL(**SD_VAE.diffusers_kwargs())
        weights = {k: _random_like(v, i) for i, (k, v) in enumerate(ldm_table(4).to_theirs(vae.state_dict()).items())}
        save_file(weights, str(paths["vae"]))
    else:
        del paths["vae"]
    return paths


def random_peft_lora(config: TransformerConfig, rank: int = 4, seed: int = 6) -> dict[str, torch.Tensor]:
    """A random LoRA in the reference PEFT layout (as PixArt-LCM-LoRA is shared) on every block's attention and
    feed-forward layers, in diffusers names."""
    generator = torch.Generator().manual_seed(seed)
    width, hidden = config.hidden_size, config.mlp_hidden
    layers = {"attn1.to_q": (width, width), "attn1.to_k": (width, width), "attn1.to_v": (width, width),
              "attn1.to_out.0": (width, width), "attn2.to_q": (width, width), "attn2.to_k": (width, width),
              "attn2.to_v": (width, width), "ff.net.0.proj": (width, hidden), "ff.net.2": (hidden, width)}  # fmt: skip
    weights = {}
    for i in range(config.depth):
        for name, (n_in, n_out) in layers.items():
            key = f"base_model.model.transformer_blocks.{i}.{name}"
            weights[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=generator) * n_in**-0.5
            weights[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=generator) * rank**-0.5
    return weights


def _random_like(tensor: torch.Tensor, seed: int) -> torch.Tensor:
    """Random fp16 weights of a meta tensor's shape, scaled so activations stay of order 1."""
    generator = torch.Generator().manual_seed(seed)
    fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
    values = torch.randn(tensor.shape, generator=generator) * (fan_in**-0.5 if tensor.ndim > 1 else 0.02)
    return values.half()


def _write_pipeline(folder: Path, transformer: dict[str, torch.Tensor], t5, tokenizer: Path | None) -> Path:
    """A diffusers PixArt repository: model_index.json, transformer/, text_encoder/ and tokenizer/."""
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    save_file(transformer, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    config = {
        "_class_name": "PixArtTransformer2DModel",
        "sample_size": BASE.sample_size,
        "num_attention_heads": BASE.num_heads,
        "attention_head_dim": BASE.head_dim,
        "num_layers": BASE.depth,
        "caption_channels": BASE.caption_channels,
        "use_additional_conditions": True,
    }
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    t5.save_pretrained(str(folder / "text_encoder"))
    if tokenizer is not None:
        shutil.copytree(tokenizer, folder / "tokenizer", dirs_exist_ok=True)
    return folder


# --- ComfyUI's model folders ---------------------------------------------------------------------------


class StandInFolderPaths:
    """ComfyUI's ``folder_paths`` as the pack uses it: each kind's folders (the legacy names ``unet`` and ``clip``
    mapped to ``diffusion_models`` and ``text_encoders``), ``add_model_folder_path`` appending a folder (or moving
    it first with ``is_default``), and every model file of a kind listed by its path under its folder, recursively.
    It starts with the folders of ComfyUI's ``models/`` at ``root``."""

    LEGACY: ClassVar[dict[str, str]] = {"unet": "diffusion_models", "clip": "text_encoders"}

    def __init__(self, root: Path) -> None:
        folders = PACK.nodes.host._FOLDERS
        self.folder_names_and_paths = {kind: [str(root / name) for name in names] for kind, names in folders.items()}

    def add_model_folder_path(self, folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths = self.folder_names_and_paths.setdefault(self.LEGACY.get(folder_name, folder_name), [])
        if full_folder_path in paths and not is_default:
            return
        if full_folder_path in paths:
            paths.remove(full_folder_path)
        if is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    def get_folder_paths(self, folder_name: str) -> list[str]:
        return list(self.folder_names_and_paths[self.LEGACY.get(folder_name, folder_name)])

    def get_filename_list(self, folder_name: str) -> list[str]:
        found = set()
        for folder in self.get_folder_paths(folder_name):
            for path in Path(folder).rglob("*"):
                if path.is_file() and path.suffix in PACK.nodes.host.MODEL_EXTENSIONS:
                    found.add(path.relative_to(folder).as_posix())
        return sorted(found)


def as_in_comfyui(monkeypatch, models: Path) -> StandInFolderPaths:
    """Make the host bridge list models through a stand-in ``folder_paths`` over ``models`` (ComfyUI's models/), as
    it does in ComfyUI; only listing and finding files go through it in the tests that use this."""
    host = PACK.nodes.host
    folder_paths = StandInFolderPaths(models)
    monkeypatch.setattr(host, "IN_COMFYUI", True)
    monkeypatch.setattr(host, "folder_paths", folder_paths, raising=False)
    return folder_paths


def write_embedded_names(folder: Path) -> Path:
    """Empty files with the embedded model's names and layout under ``folder`` (for tests of lists, not loading)."""
    for relative in ENGINE.demo.embedded_files.MODELS.values():
        path = folder / relative
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # an HF T5 folder
            path.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "model.safetensors"):
                (path / name).touch()
    return folder


# --- calling nodes as ComfyUI does -------------------------------------------------------------------

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def check_value(node: str, name: str, kind: Any, options: dict, value: Any) -> None:
    """What ComfyUI's prompt validation checks for a widget value."""
    where = f"{node}.{name}"
    if isinstance(kind, list):
        assert value in kind, f"{where}: {value!r} is not one of {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a FLOAT"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"


def call_node(node_class: type, **given: Any) -> tuple:
    """Instantiate ``node_class`` and call its FUNCTION with ``given`` links and widget values, the other
    widgets at their defaults (ComfyUI always sends every widget, optional ones included)."""
    spec = node_class.INPUT_TYPES()
    kwargs: dict[str, Any] = {}
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            kind, options = entry[0], entry[1] if len(entry) > 1 else {}
            if name in given:
                value = given[name]
            elif is_widget(kind):
                value = options.get("default", kind[0] if isinstance(kind, list) and kind else None)
            elif group == "required":
                raise AssertionError(f"{node_class.__name__}: required input {name!r} ({kind}) was not given")
            else:
                continue
            if is_widget(kind):
                check_value(node_class.__name__, name, kind, options, value)
            kwargs[name] = value
    unknown = set(given) - set(kwargs)
    assert not unknown, f"{node_class.__name__} has no inputs {sorted(unknown)}"
    return getattr(node_class(), node_class.FUNCTION)(**kwargs)


class StandInVae:
    """Core VAE's interface (IMAGE [B, H, W, C] in 0..1 <-> raw latents) over a tiny random AutoencoderKL."""

    def __init__(self, seed: int = 0) -> None:
        self.vae = Vae(randomize_(AutoencoderKL(**TINY_VAE.diffusers_kwargs()), seed), TINY_VAE)
        self.encoded: list[tuple[int, ...]] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoded.append(tuple(pixels.shape))
        return self.vae.encode(pixels[..., :3].movedim(-1, 1) * 2 - 1)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(raw) + 1) / 2).clamp(0, 1).movedim(1, -1)


def text_embedding(conditioning: list):
    """ComfyUI conditioning as the engine's TextEmbedding: the tokens up to the last one any mask keeps (all of
    them where the conditioning has no mask, as core CLIPTextEncode gives)."""
    embeddings, extra = conditioning[0]
    mask = extra.get("attention_mask", torch.ones(embeddings.shape[:2], dtype=torch.long))
    caption = ENGINE.text.embedding.TextEmbedding(embeddings, mask)
    return caption.truncated(caption.used_length)


def engine_latents(model, conditioning: list, uncond: list | None = None, **kwargs: Any) -> torch.Tensor:
    """What the engine itself makes from the same caption (scaled latents): ``sampler`` and its ``settings``
    name the sampling settings, ``uncond`` is a negative conditioning, the rest (seed, batch, height, width,
    init_latents, control, ...) goes to generate_latents as it is."""
    sampling = ENGINE.sampling.samplers
    settings = sampling.SamplingSettings.defaults(kwargs.pop("sampler", "lcm"), **kwargs.pop("settings", {}))
    negative = None if uncond is None else text_embedding(uncond)
    return sampling.generate_latents(
        model.transformer, text_embedding(conditioning), settings, uncond=negative, **kwargs
    )


# --- workflows -------------------------------------------------------------------------------------

NOTE_TYPES = ("Note", "MarkdownNote")
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")


def takes_widget_value(kind: Any) -> bool:
    """Whether an input of this object_info type is a widget (it takes a ``widgets_values`` slot)."""
    return isinstance(kind, list) or kind in (*WIDGET_TYPES, "COMBO")


def has_seed_control(name: str, kind: Any, options: dict) -> bool:
    """Whether the frontend adds a control_after_generate value right after this widget's value."""
    return bool(options.get("control_after_generate")) or (kind == "INT" and name in ("seed", "noise_seed"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A UI ("save") workflow as the API prompt the frontend would queue, using ``object_info`` for input order."""
    links = {link[0]: (str(link[1]), link[2]) for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for group in ("required", "optional"):
            for name in info["input_order"].get(group, []):
                kind, *rest = info["input"][group][name]
                options = rest[0] if rest else {}
                if takes_widget_value(kind):
                    value = next(values, None)
                    if has_seed_control(name, kind, options):
                        next(values, None)
                    if name not in linked:
                        inputs[name] = value
                if name in linked:
                    inputs[name] = list(links[linked[name]])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
