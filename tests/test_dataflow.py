"""How data flows through the pack: node modules share socket types and CONDITIONING through shared modules
instead of importing each other, sampling reads captions as plain data (never the T5 encoder), and the latent
geometry the engine assumes is the VAE config's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pixart_delta_core.models.transformer_config import TransformerConfig, vae_defaults_for
from pixart_delta_core.vae.vae_config import SD_VAE, SDXL_VAE
from tests.comfy_helpers import PACK

ROOT = Path(__file__).resolve().parent.parent
NODES = ROOT / "nodes"
# Modules every node module may import; they import none of the node modules themselves.
SHARED = {"host", "comfy_model", "sockets", "conditioning", "model_choices"}
BRIDGE = {"host", "comfy_model"}  # the host bridge: the only modules that know ComfyUI
HOST_ONLY = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server")


def pack_imports(source: str) -> set[str]:
    """The pack modules (``nodes/<name>.py``) that a module of ``nodes/`` imports, by name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


def absolute_imports(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def node_modules() -> dict[str, str]:
    """The modules that define nodes: every module of ``nodes/`` but the package and the shared modules."""
    return {p.stem: p.read_text() for p in NODES.glob("*.py") if p.stem not in SHARED | {"__init__"}}


def test_every_node_class_lives_in_a_node_module() -> None:
    """The split below is the real one: each registered node comes from a module that is not shared."""
    homes = {cls.__module__.rsplit(".", 1)[-1] for cls in PACK.NODE_CLASS_MAPPINGS.values()}
    assert homes == set(node_modules())


@pytest.mark.parametrize("name", sorted(node_modules()))
def test_node_modules_import_only_shared_modules(name: str) -> None:
    imported = pack_imports(node_modules()[name])
    assert imported <= SHARED, f"nodes/{name}.py imports node modules {sorted(imported - SHARED)}"


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_modules_import_no_node_module(name: str) -> None:
    imported = pack_imports((NODES / f"{name}.py").read_text())
    assert imported <= SHARED, f"nodes/{name}.py imports node modules {sorted(imported - SHARED)}"


def test_only_the_host_bridge_imports_comfyui() -> None:
    for path in NODES.glob("*.py"):
        if path.stem not in BRIDGE:
            assert not absolute_imports(path.read_text()) & set(HOST_ONLY), path.name


def test_the_import_check_sees_a_node_module_import() -> None:
    """The checks above can fail: an import of a node module, plain or from a submodule, is reported."""
    assert pack_imports("from .loaders import MODEL_TYPE\nfrom . import text, host\n") == {"loaders", "text", "host"}
    assert pack_imports("from ..pixart_delta_core.errors import InputError\n") == set()


def test_caption_data_imports_only_torch() -> None:
    source = (ROOT / "pixart_delta_core" / "text" / "embedding.py").read_text()
    assert absolute_imports(source) - sys.stdlib_module_names == {"torch"}
    relative = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == {"errors"}


def test_sampling_does_not_import_the_t5_encoder() -> None:
    probe = (
        "import sys, pixart_delta_core.sampling.samplers\n"
        "print(sorted(m for m in sys.modules if m.startswith('pixart_delta_core.text')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    assert "pixart_delta_core.text.embedding" in loaded, loaded  # the probe sees the text modules it loads
    assert "pixart_delta_core.text.encoder" not in loaded and "pixart_delta_core.text.t5" not in loaded, loaded


@pytest.mark.parametrize("config", [TransformerConfig(), TransformerConfig(caption_length=300)], ids=["alpha", "sigma"])
def test_latent_geometry_is_the_paired_vae_s(config: TransformerConfig) -> None:
    """The transformer reads the latents of the VAE it pairs with; its training resolution is that VAE's pixels."""
    vae = vae_defaults_for(config)
    assert config.in_channels == vae.latent_channels
    assert config.resolution == config.sample_size * vae.downscale


def test_sd_and_sdxl_vae_latents_have_the_same_geometry() -> None:
    """The Resolution node makes an empty latent without a model at hand: it relies on this."""
    assert (SD_VAE.latent_channels, SD_VAE.downscale) == (SDXL_VAE.latent_channels, SDXL_VAE.downscale)


def test_loader_dtype_choices_are_the_engine_s() -> None:
    """The loaders' dtype menus offer 'auto' and the names ``devices.DTYPES`` parses, nothing else."""
    dtypes = PACK.pixart_delta_core.devices.DTYPES
    t5 = PACK.nodes.loaders.T5Loader.INPUT_TYPES()["required"]["dtype"][0]
    transformer = PACK.nodes.loaders.CheckpointLoader.INPUT_TYPES()["required"]["weight_dtype"][0]
    for choices in (t5, transformer):
        assert choices[0] == "auto" and sorted(choices[1:]) == sorted(dtypes)
