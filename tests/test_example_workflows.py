"""The example workflows: loadable UI save files whose nodes, links and widget values fit the nodes they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.comfy_helpers import (
    ENGINE,
    MODEL_FILES,
    NOTE_TYPES,
    PACK,
    SEED_CONTROLS,
    as_in_comfyui,
    check_value,
    has_seed_control,
    takes_widget_value,
    ui_to_api,
    write_embedded_names,
)
from tests.helpers import ROOT

FOLDER = ROOT / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
DEMOS = sorted(FOLDER.glob("demo_*.json"))  # the embedded model's examples: they run offline as they are
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
FILENAMES = {Path(rel).name: rel.split("/")[0] for rel in MODEL_FILES.values()}  # file -> models/ folder
EMBEDDED_NAMES = {Path(rel).name for rel in ENGINE.demo.embedded_files.MODELS.values()}  # as the loaders list them


def core(required: dict, output: list[str], extra_values: int = 0) -> dict:
    """A core node as /object_info describes it (the inputs and outputs the workflows use)."""
    order = {"required": list(required), "optional": []}
    return {"input": {"required": required}, "input_order": order, "output": output, "extra_values": extra_values}


CORE_NODES = {
    "VAELoader": core({"vae_name": [[Path(MODEL_FILES["vae"]).name, "shapes-taesd.safetensors"], {}]}, ["VAE"]),
    "VAEDecode": core({"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
    "VAEDecodeTiled": core(
        {
            "samples": ["LATENT"],
            "vae": ["VAE"],
            "tile_size": ["INT", {"default": 512, "min": 64, "max": 4096}],
            "overlap": ["INT", {"default": 64, "min": 0, "max": 4096}],
            "temporal_size": ["INT", {"default": 64, "min": 8, "max": 4096}],
            "temporal_overlap": ["INT", {"default": 8, "min": 4, "max": 4096}],
        },
        ["IMAGE"],
    ),
    "VAEEncode": core({"pixels": ["IMAGE"], "vae": ["VAE"]}, ["LATENT"]),
    "SaveImage": core({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, []),
    "PreviewImage": core({"images": ["IMAGE"]}, []),
    "LoadImage": core({"image": [["example.png"], {"image_upload": True}]}, ["IMAGE", "MASK"], extra_values=1),
    "ImageScale": core(
        {
            "image": ["IMAGE"],
            "upscale_method": [UPSCALE_METHODS, {}],
            "width": ["INT", {"min": 0, "max": 16384}],
            "height": ["INT", {"min": 0, "max": 16384}],
            "crop": [["disabled", "center"], {}],
        },
        ["IMAGE"],
    ),
    "ImageScaleBy": core(
        {"image": ["IMAGE"], "upscale_method": [UPSCALE_METHODS, {}], "scale_by": ["FLOAT", {"min": 0.01, "max": 8}]},
        ["IMAGE"],
    ),
    "KSampler": core(
        {
            "model": ["MODEL"],
            "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}],
            "sampler_name": [["euler", "lcm", "dpmpp_2m"], {}],
            "scheduler": [["normal", "karras", "sgm_uniform"], {}],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}],
        },
        ["LATENT"],
    ),
    "ModelSamplingDiscrete": core(
        {"model": ["MODEL"], "sampling": [["eps", "v_prediction", "lcm", "x0", "img_to_img"], {}], "zsnr": ["BOOLEAN"]},
        ["MODEL"],
    ),
    "BasicGuider": core({"model": ["MODEL"], "conditioning": ["CONDITIONING"]}, ["GUIDER"]),
    "RandomNoise": core(
        {"noise_seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}]}, ["NOISE"]
    ),
    "KSamplerSelect": core({"sampler_name": [["euler", "lcm", "dpmpp_2m"], {}]}, ["SAMPLER"]),
    "BasicScheduler": core(
        {
            "model": ["MODEL"],
            "scheduler": [["normal", "karras", "sgm_uniform"], {}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}],
        },
        ["SIGMAS"],
    ),
    "SamplerCustomAdvanced": core(
        {
            "noise": ["NOISE"],
            "guider": ["GUIDER"],
            "sampler": ["SAMPLER"],
            "sigmas": ["SIGMAS"],
            "latent_image": ["LATENT"],
        },
        ["LATENT", "LATENT"],
    ),
    "Canny": core(
        {
            "image": ["IMAGE"],
            "low_threshold": ["FLOAT", {"min": 0.01, "max": 0.99}],
            "high_threshold": ["FLOAT", {"min": 0.01, "max": 0.99}],
        },
        ["IMAGE"],
    ),
}


@pytest.fixture
def object_info(node_models: Path, tmp_path: Path, monkeypatch) -> dict:
    """What /object_info says of the nodes the workflows use: ours from INPUT_TYPES, in a ComfyUI whose models/
    holds the test's models and where the pack has listed its embedded model's folders (files of those names)."""
    as_in_comfyui(monkeypatch, node_models)
    PACK.nodes.host.register_embedded_models(write_embedded_names(tmp_path / "embedded"))
    info = dict(CORE_NODES)
    for node_id, node in PACK.NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        info[node_id] = {
            "input": {
                group: {k: list(v) for k, v in spec.get(group, {}).items()} for group in ("required", "optional")
            },
            "input_order": {group: list(spec.get(group, {})) for group in ("required", "optional")},
            "output": list(node.RETURN_TYPES),
            "extra_values": 0,
        }
    return info


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_the_sixteen_examples() -> None:
    assert [p.stem for p in WORKFLOWS] == [
        "demo_8bit_t5",
        "demo_controlnet",
        "demo_image_to_image",
        "demo_lcm_text_to_image",
        "demo_teacher_dpm_solver",
        "demo_upscale",
        "pixart_alpha_dpm_solver",
        "pixart_delta_controlnet_dpm_solver",
        "pixart_delta_img2img",
        "pixart_delta_ksampler",
        "pixart_delta_lcm_controlnet",
        "pixart_delta_lcm_custom_sampler",
        "pixart_delta_lcm_lora",
        "pixart_delta_lcm_low_memory",
        "pixart_delta_lcm_text_to_image",
        "pixart_delta_upscale",
    ]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_ui_save_file_the_frontend_loads(path: Path) -> None:
    workflow = load(path)
    assert isinstance(workflow["version"], (int, float)) and workflow["version"] != 1  # the legacy (0.4) schema
    assert isinstance(workflow["last_node_id"], int) and isinstance(workflow["last_link_id"], int)
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(set(ids)) == len(ids) and max(ids) <= workflow["last_node_id"]
    for node in workflow["nodes"]:
        for key, kind in (("pos", list), ("size", list), ("flags", dict), ("properties", dict)):
            assert isinstance(node[key], kind), f"node {node['id']}: {key}"
        assert isinstance(node["order"], int) and node["mode"] == 0
        assert len(node["pos"]) == 2 and len(node["size"]) == 2


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_are_consistent_at_both_ends(path: Path, object_info: dict) -> None:
    workflow = load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids) and max(link_ids) <= workflow["last_link_id"]
    for link_id, source, out_slot, target, in_slot, kind in workflow["links"]:
        output, given = nodes[source]["outputs"][out_slot], nodes[target]["inputs"][in_slot]
        assert link_id in output["links"] and given["link"] == link_id
        assert output["type"] == given["type"] == kind
        assert object_info[nodes[source]["type"]]["output"][out_slot] == kind
        spec = object_info[nodes[target]["type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}[given["name"]]
        assert declared[0] == kind, f"{nodes[target]['type']}.{given['name']} is {declared[0]}, linked {kind}"
    for node in workflow["nodes"]:
        for slot in node.get("outputs", []):
            for link_id in slot["links"] or []:
                assert link_id in link_ids


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values_fit_the_nodes(path: Path, object_info: dict) -> None:
    for node in load(path)["nodes"]:
        if node["type"] in NOTE_TYPES:
            assert isinstance(node["widgets_values"][0], str)
            continue
        info = object_info[node["type"]]
        values = list(node["widgets_values"])
        expected = 0
        for group in ("required", "optional"):
            for name in info["input_order"][group]:
                kind, *rest = info["input"][group][name]
                options = rest[0] if rest else {}
                if not takes_widget_value(kind):
                    continue
                check_value(node["type"], name, kind, options, values[expected])
                expected += 1
                if has_seed_control(name, kind, options):
                    assert values[expected] in SEED_CONTROLS, f"{node['type']}.{name}: no control_after_generate"
                    expected += 1
        assert len(values) == expected + info["extra_values"], f"{node['type']}: {values}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_queued_prompt_has_every_required_input(path: Path, object_info: dict) -> None:
    prompt = ui_to_api(load(path), object_info)
    for node in prompt.values():
        required = object_info[node["class_type"]]["input"]["required"]
        assert set(required) <= set(node["inputs"]), node["class_type"]
        assert all(value is not None for value in node["inputs"].values())


LOADERS = (
    "PixArtDeltaCheckpointLoader",
    "PixArtDeltaT5Loader",
    "PixArtDelta8BitLoader",
    "PixArtDeltaControlNetLoader",
    "PixArtDeltaLoraLoader",
    "VAELoader",
)


@pytest.mark.parametrize("path", sorted(set(WORKFLOWS) - set(DEMOS)), ids=lambda p: p.stem)
def test_the_note_names_every_model_file_and_its_folder(path: Path) -> None:
    workflow = load(path)
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    assert len(notes) == 1
    used = {
        value for n in workflow["nodes"] if n["type"] in LOADERS for value in n["widgets_values"] if value in FILENAMES
    }
    assert used, "the workflow loads no model"
    for name in used:
        assert f"`{name}` in `models/{FILENAMES[name]}/`" in notes[0]


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.stem)
def test_a_demo_loads_only_the_embedded_model_and_its_note_names_each_file(path: Path) -> None:
    workflow = load(path)
    (note,) = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    names = {v for n in loaders for v in n["widgets_values"] if isinstance(v, str) and v.startswith("shapes-")}
    assert names and names <= EMBEDDED_NAMES, names
    assert not nodes_of(path.stem, "LoadImage")  # nothing to put in input/: the Shapes Scene node draws inputs
    assert "ship with the pack" in note
    for name in names:
        assert f"`{name}`" in note


def nodes_of(name: str, node_type: str) -> list[dict]:
    return [n for n in load(FOLDER / f"{name}.json")["nodes"] if n["type"] == node_type]


def sampler_settings(name: str) -> tuple:
    (sampler,) = nodes_of(name, "PixArtDeltaSampler")
    _seed, _, steps, kind, guidance, denoise, *_ = sampler["widgets_values"]
    return kind, steps, guidance, denoise


def test_each_example_shows_what_its_name_says() -> None:
    assert sampler_settings("pixart_delta_lcm_text_to_image") == ("lcm", 4, 0.0, 1.0)
    assert sampler_settings("pixart_alpha_dpm_solver") == ("dpm_solver++", 14, 4.5, 1.0)
    assert nodes_of("pixart_alpha_dpm_solver", "PixArtDeltaCheckpointLoader")[0]["widgets_values"][0].startswith(
        "PixArt-XL-2-1024-MS"
    )
    kind, _, _, denoise = sampler_settings("pixart_delta_img2img")
    assert kind == "lcm" and denoise < 1 and nodes_of("pixart_delta_img2img", "VAEEncode")
    assert nodes_of("pixart_delta_upscale", "ImageScaleBy")[0]["widgets_values"][1] > 1
    assert sampler_settings("pixart_delta_controlnet_dpm_solver") == ("dpm_solver++", 14, 4.5, 1.0)
    assert sampler_settings("pixart_delta_lcm_controlnet") == ("lcm", 4, 0.0, 1.0)
    for name in ("pixart_delta_controlnet_dpm_solver", "pixart_delta_lcm_controlnet"):
        assert nodes_of(name, "PixArtDeltaControlNetApply") and nodes_of(name, "Canny")
    assert sampler_settings("pixart_delta_lcm_lora") == ("lcm", 4, 0.0, 1.0)  # LCM-LoRA on the α base
    assert nodes_of("pixart_delta_lcm_lora", "PixArtDeltaCheckpointLoader")[0]["widgets_values"][0].startswith(
        "PixArt-XL-2-1024-MS"
    )
    assert nodes_of("pixart_delta_lcm_lora", "PixArtDeltaLoraLoader")[0]["widgets_values"] == [
        "PixArt-LCM-LoRA-XL-2-1024-MS.safetensors",
        1.0,
    ]


def test_the_core_sampler_examples_sample_the_loaders_core_model() -> None:
    """KSampler (euler, 20 steps, CFG 4.5, normal) and SamplerCustomAdvanced (ModelSamplingDiscrete lcm, the lcm
    sampler, 4 steps), each on the MODEL output of the checkpoint loader."""
    (ksampler,) = nodes_of("pixart_delta_ksampler", "KSampler")
    assert ksampler["widgets_values"][2:] == [20, 4.5, "euler", "normal", 1.0]
    assert nodes_of("pixart_delta_ksampler", "PixArtDeltaCheckpointLoader")[0]["widgets_values"][0].startswith(
        "PixArt-XL-2-1024-MS"
    )
    name = "pixart_delta_lcm_custom_sampler"
    assert nodes_of(name, "ModelSamplingDiscrete")[0]["widgets_values"] == ["lcm", False]
    assert nodes_of(name, "KSamplerSelect")[0]["widgets_values"] == ["lcm"]
    assert nodes_of(name, "BasicScheduler")[0]["widgets_values"] == ["sgm_uniform", 4, 1.0]
    assert nodes_of(name, "PixArtDeltaCheckpointLoader")[0]["widgets_values"][0].startswith("PixArt-LCM")
    for stem in ("pixart_delta_ksampler", name):
        workflow = load(FOLDER / f"{stem}.json")
        (loader,) = [n["id"] for n in workflow["nodes"] if n["type"] == "PixArtDeltaCheckpointLoader"]
        assert [link[-1] for link in workflow["links"] if link[1] == loader] == ["MODEL"]  # its core MODEL output
        assert not nodes_of(stem, "PixArtDeltaSampler")


def test_the_low_memory_example_is_the_papers_recipe() -> None:
    """T5 in 8 bits and the transformer in full precision from one loader, T5 and then the transformer taken
    off the GPU after use, the VAE decoding in tiles; every other example keeps full precision and memory."""
    name = "pixart_delta_lcm_low_memory"
    assert sampler_settings(name) == ("lcm", 4, 0.0, 1.0)
    (loader,) = nodes_of(name, "PixArtDelta8BitLoader")
    assert loader["widgets_values"][1::2] == ["int8", "none"]  # t5_quantization, transformer_quantization
    (encode,) = nodes_of(name, "PixArtDeltaT5TextEncode")
    (sampler,) = nodes_of(name, "PixArtDeltaSampler")
    assert encode["widgets_values"][-1] is True and sampler["widgets_values"][-1] is True  # low_memory
    assert nodes_of(name, "VAEDecodeTiled") and not nodes_of(name, "VAEDecode")
    assert not nodes_of(name, "PixArtDeltaCheckpointLoader") and not nodes_of(name, "PixArtDeltaT5Loader")
    for path in WORKFLOWS:
        if path.stem != name:
            for node_type, quantization in (("PixArtDeltaCheckpointLoader", 2), ("PixArtDeltaT5Loader", -1)):
                assert all(n["widgets_values"][quantization] == "none" for n in nodes_of(path.stem, node_type))
            for node_type in ("PixArtDeltaT5TextEncode", "PixArtDeltaSampler"):
                assert all(n["widgets_values"][-1] is False for n in nodes_of(path.stem, node_type))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_example_has_a_small_thumbnail(path: Path) -> None:
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff" and thumbnail.stat().st_size < 100_000


def linked(name: str, source_type: str, slot: int) -> list[tuple[str, str]]:
    """(node type, input name) of every input fed by output ``slot`` of the ``source_type`` node of a workflow."""
    workflow = load(FOLDER / f"{name}.json")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    return [
        (nodes[target]["type"], nodes[target]["inputs"][in_slot]["name"])
        for _, source, out_slot, target, in_slot, _ in workflow["links"]
        if nodes[source]["type"] == source_type and out_slot == slot
    ]


def test_each_demo_shows_what_its_name_says() -> None:
    """The embedded model at its training size (128 px) with the settings each demo names."""
    assert sampler_settings("demo_lcm_text_to_image") == ("lcm", 4, 1.0, 1.0)  # guidance 1: none
    assert sampler_settings("demo_teacher_dpm_solver") == ("dpm_solver++", 20, 4.5, 1.0)  # as the model card scores it
    assert sampler_settings("demo_controlnet") == ("lcm", 4, 1.0, 1.0)
    assert sampler_settings("demo_8bit_t5") == ("lcm", 4, 1.0, 1.0)
    assert sampler_settings("demo_upscale") == ("lcm", 4, 1.0, 1.0)
    kind, _, _, denoise = sampler_settings("demo_image_to_image")
    assert kind == "lcm" and 0 < denoise < 1
    for path in DEMOS:
        (sampler,) = nodes_of(path.stem, "PixArtDeltaSampler")
        assert sampler["widgets_values"][:2] == [0, "fixed"]  # a thumbnail and its verdict are reproducible
        assert sampler["widgets_values"][6:8] == [128, 128]
    for name, model in (("demo_lcm_text_to_image", "shapes-lcm"), ("demo_teacher_dpm_solver", "shapes-teacher"),
                        ("demo_controlnet", "shapes-lcm"), ("demo_image_to_image", "shapes-lcm")):  # fmt: skip
        assert nodes_of(name, "PixArtDeltaCheckpointLoader")[0]["widgets_values"][0] == f"{model}.safetensors"
    assert linked("demo_controlnet", "PixArtDeltaShapesScene", 1) == [  # the edge map
        ("PixArtDeltaControlNetApply", "image"),
        ("PreviewImage", "images"),
    ]
    assert (
        nodes_of("demo_controlnet", "PixArtDeltaControlNetLoader")[0]["widgets_values"][0] == "shapes-edges.safetensors"
    )
    assert linked("demo_controlnet", "PixArtDeltaControlNetApply", 0) == [("PixArtDeltaSampler", "positive")]
    assert nodes_of("demo_8bit_t5", "PixArtDelta8BitLoader")[0]["widgets_values"] == [
        "shapes-t5",
        "int8",
        "shapes-lcm.safetensors",
        "none",
    ]
    assert ("VAEEncode", "pixels") in linked("demo_image_to_image", "PixArtDeltaShapesScene", 0)
    assert linked("demo_image_to_image", "VAEEncode", 0) == [("PixArtDeltaSampler", "latent_image")]
    assert nodes_of("demo_upscale", "ImageScaleBy")[0]["widgets_values"] == ["lanczos", 4.0]
    assert linked("demo_upscale", "VAEDecode", 0) == [("ImageScaleBy", "image")]
    assert linked("demo_upscale", "ImageScaleBy", 0) == [("SaveImage", "images")]
