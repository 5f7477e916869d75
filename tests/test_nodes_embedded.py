"""The embedded model in ComfyUI: the pack lists its folders among ComfyUI's model folders (nothing copied), the
loaders list and load its files by name, and the Shapes Scene node draws the world's scenes and edge maps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.comfy_helpers import ENGINE, PACK, as_in_comfyui, call_node, write_embedded_names

host = PACK.nodes.host
choices = PACK.nodes.model_choices
NODES = PACK.NODE_CLASS_MAPPINGS
world = ENGINE.world
EMBEDDED = ENGINE.demo.embedded_files


@pytest.fixture
def embedded(tmp_path: Path) -> Path:
    return write_embedded_names(tmp_path / "embedded_model")


def test_in_comfyui_each_subfolder_is_listed_under_its_kind(node_models: Path, embedded: Path, monkeypatch) -> None:
    folder_paths = as_in_comfyui(monkeypatch, node_models)
    added = host.register_embedded_models(embedded)
    assert added == [
        ("diffusion_models", embedded / "transformer"),
        ("controlnet", embedded / "controlnet"),
        ("vae", embedded / "vae"),
        ("text_encoders", embedded / "text_encoders"),
    ]
    for kind, folder in added:  # after the user's own folders: their files win a name both have
        assert folder_paths.get_folder_paths(kind)[-1] == str(folder)
        assert folder_paths.get_folder_paths(kind)[0].startswith(str(node_models))
    assert "transformer" not in " ".join(folder_paths.get_folder_paths("checkpoints"))
    transformers = choices.TRANSFORMERS.names()
    assert {"shapes-lcm.safetensors", "shapes-teacher.safetensors", "PixArt-XL-2-1024-MS.pth"} <= set(transformers)
    assert "shapes-edges.safetensors" in choices.CONTROLNETS.names()
    t5_names = choices.TEXT_ENCODERS.names()
    assert "shapes-t5" in t5_names and "shapes-t5/model.safetensors" not in t5_names  # the folder, once
    assert folder_paths.get_filename_list("vae") == ["shapes-taesd.safetensors"]  # what core Load VAE lists
    assert choices.TRANSFORMERS.path("shapes-lcm.safetensors") == embedded / EMBEDDED.MODELS["shapes-lcm"]
    assert choices.TEXT_ENCODERS.path("shapes-t5") == embedded / EMBEDDED.MODELS["shapes-t5"]
    loader_names = NODES["PixArtDeltaCheckpointLoader"].INPUT_TYPES()["required"]["ckpt_name"][0]
    assert "shapes-lcm.safetensors" in loader_names
    host.register_embedded_models(embedded)  # ComfyUI reloading the pack lists each folder once
    assert folder_paths.get_folder_paths("vae").count(str(embedded / "vae")) == 1


def test_a_missing_subfolder_is_left_out(node_models: Path, embedded: Path, monkeypatch) -> None:
    as_in_comfyui(monkeypatch, node_models)
    (embedded / "controlnet" / "shapes-edges.safetensors").unlink()
    (embedded / "controlnet").rmdir()
    assert [kind for kind, _ in host.register_embedded_models(embedded)] == ["diffusion_models", "vae", "text_encoders"]


def test_outside_comfyui_nothing_is_registered(embedded: Path) -> None:
    assert host.IN_COMFYUI is False and host.register_embedded_models(embedded) == []


def test_the_pack_lists_the_folder_it_ships() -> None:
    assert (
        host.EMBEDDED_FOLDER == EMBEDDED.FOLDER == Path(PACK.__file__).parent / "pixart_delta_core" / "embedded_model"
    )
    assert {Path(rel).parts[0] for rel in EMBEDDED.MODELS.values()} == set(host.EMBEDDED_KINDS.values())


# --- the shipped files through the loaders ---------------------------------------------------------

SHIPPED = [EMBEDDED.FOLDER / rel for rel in EMBEDDED.MODELS.values()]
needs_files = pytest.mark.skipif(
    not all(path.exists() for path in SHIPPED),
    reason=f"the embedded model's files are not in {EMBEDDED.FOLDER} (they are made by scripts/embedded_model/)",
)


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch, one_thread) -> None:
    """ComfyUI's models/ folder holding the embedded subfolders as the registration lists them (linked, not
    copied): the loaders outside ComfyUI read the same folders by the same names."""
    for kind, name in host.EMBEDDED_KINDS.items():
        (tmp_path / kind).symlink_to(EMBEDDED.FOLDER / name, target_is_directory=True)
    monkeypatch.setenv(host.MODELS_ENV, str(tmp_path))


@needs_files
def test_the_loaders_load_the_shipped_files_by_their_listed_names(shipped) -> None:
    lcm, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="shapes-lcm.safetensors", weight_dtype="fp32")
    teacher, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="shapes-teacher.safetensors")
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name="shapes-t5", device="cpu")
    (net,) = call_node(NODES["PixArtDeltaControlNetLoader"], model=teacher, controlnet_name="shapes-edges.safetensors")
    config = lcm.transformer.config
    assert (config.sample_size, config.depth, config.hidden_size, config.num_heads) == (16, 8, 192, 3)  # 128 px
    assert config.caption_channels == t5.encoder.model.config.d_model and net.controlnet.config.copies > 0
    prompt = "a large red circle in the center, on a black background"
    (conditioning,) = call_node(NODES["PixArtDeltaT5TextEncode"], t5=t5, text=prompt, max_tokens=config.caption_length)
    (latent,) = call_node(
        NODES["PixArtDeltaSampler"], model=lcm, positive=conditioning, steps=1, guidance=1.0, width=128, height=128
    )
    assert latent["samples"].shape == (1, 4, 16, 16) and torch.isfinite(latent["samples"]).all()


@needs_files
def test_the_sampler_warns_when_the_teacher_runs_with_a_solver_in_few_steps(shipped, caplog) -> None:
    """On the teacher, which is not distilled, a solver in fewer than 10 steps breaks its pictures: it warns as
    generate does (``warn_not_distilled``); the widget's lcm default on it, the teacher in more steps, or the LCM
    student, say nothing."""
    teacher, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="shapes-teacher.safetensors")
    lcm, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="shapes-lcm.safetensors")
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name="shapes-t5", device="cpu")
    (conditioning,) = call_node(NODES["PixArtDeltaT5TextEncode"], t5=t5, text="a red circle in the center")
    runs = [(teacher, "dpm_solver++", 1, "shapes-teacher is not distilled: drawn with dpm_solver++ in 1 step, it")]
    runs += [(teacher, "dpm_solver++", 9, "shapes-teacher is not distilled: drawn with dpm_solver++ in 9 steps")]
    runs += [(teacher, "lcm", 1, None), (teacher, "dpm_solver++", 10, None), (lcm, "euler", 1, None)]
    for model, sampler, steps, warned in runs:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            call_node(
                NODES["PixArtDeltaSampler"], model=model, positive=conditioning, sampler=sampler, steps=steps,
                guidance=1.0, width=128, height=128,
            )  # fmt: skip
        said = [r.getMessage() for r in caplog.records if "not distilled" in r.getMessage()]
        assert [m[: len(warned)] for m in said] == ([] if warned is None else [warned]), said


# --- the Shapes Scene node -------------------------------------------------------------------------

CAPTION = "a large red circle in the center and a small yellow star at the top right, on a black background"


def pixels(image: torch.Tensor) -> np.ndarray:
    """A single IMAGE [1, H, W, 3] in 0..1 as uint8 pixels (H, W, 3)."""
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    return (image[0] * 255).round().to(torch.uint8).numpy()


def test_the_scene_is_the_worlds_picture_of_the_caption_and_its_edge_map() -> None:
    image, edges, caption = call_node(NODES["PixArtDeltaShapesScene"], caption=f"  {CAPTION.upper()}. ")
    scene = world.judge.parse_caption(CAPTION)
    assert caption == CAPTION
    assert np.array_equal(pixels(image), np.asarray(world.render.render(scene)))
    assert np.array_equal(pixels(edges), np.asarray(world.render.edge_map(scene)))
    assert world.judge.judge(scene, world.reading.read_picture(pixels(image))).ok  # the judge reads it as asked
    assert world.judge.foreground_iou(pixels(image), scene) > 0.9


def test_an_empty_caption_draws_the_scene_of_the_seed_at_the_size_asked() -> None:
    image, edges, caption = call_node(NODES["PixArtDeltaShapesScene"], caption=" ", scene_seed=7, image_size=256)
    scene = world.scenes.sample_scene(7)
    assert caption == scene.caption() and image.shape == edges.shape == (1, 256, 256, 3)
    assert np.array_equal(pixels(image), np.asarray(world.render.render(scene, 256)))
    other = call_node(NODES["PixArtDeltaShapesScene"], caption="", scene_seed=8)[2]
    assert other != caption


def test_a_caption_outside_the_grammar_is_the_engines_error_naming_the_word() -> None:
    with pytest.raises(ENGINE.errors.InputError, match=r"expected KIND .* found 'hexagon'"):
        call_node(NODES["PixArtDeltaShapesScene"], caption="a large red hexagon in the center, on a black background")
