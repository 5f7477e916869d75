"""The pack's core MODEL inside a real ComfyUI, in one process: run with ComfyUI's python by
``tests/test_comfyui_core_model.py`` (``python tests/comfyui_core_model_checks.py COMFYUI_ROOT OUT.json``).

It loads a tiny random PixArt (a 512-px-trained transformer with micro-conditions, the reference layout) with the
pack's Checkpoint Loader and ComfyUI's own PixArt model from the same file, samples with core nodes (KSampler,
ModelSamplingDiscrete lcm, LoraLoaderModelOnly, RescaleCFG) and the engine's sampler, and writes what it measured
to OUT.json for the test to judge. Nothing is asserted here.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import types
from dataclasses import replace
from pathlib import Path

COMFYUI_ROOT, OUT = Path(sys.argv[1]), Path(sys.argv[2])
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(COMFYUI_ROOT))

import torch  # noqa: E402
from comfy.cli_args import args  # noqa: E402

args.cpu = args.cpu or not torch.cuda.is_available()  # what --cpu does for the server

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete, RescaleCFG  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import nodes  # noqa: E402  (ComfyUI's nodes.py: imported before the checkout, which has a nodes/ too, is on the path)

sys.path.insert(0, str(ROOT))
sys.modules["tests"] = types.ModuleType("tests")  # the checkout's tests/, not ComfyUI's own tests package
sys.modules["tests"].__path__ = [str(ROOT / "tests")]

from pixart_delta_core.demo.random_weights import randomize_  # noqa: E402
from tests.comfy_helpers import BASE, ENGINE, PACK, StandInVae  # noqa: E402
from tests.helpers import random_transformer  # noqa: E402

CONFIG = replace(BASE, sample_size=64, interpolation_scale=1.0)  # trained at 512 px: core's positions agree there
HEIGHT, WIDTH = 512, 384  # pixels: a non-square size, so the micro-conditions' aspect ratio matters
SEED, CFG = 7, 4.5
samplers = ENGINE.sampling.samplers
comfy_model = PACK.nodes.comfy_model


def caption(seed: int, tokens: int) -> torch.Tensor:
    return torch.randn(1, tokens, CONFIG.caption_channels, generator=torch.Generator().manual_seed(seed))


def ksampler(model, positive, negative, steps=20, sampler="euler", scheduler="normal", cfg=CFG) -> torch.Tensor:
    latent = nodes.EmptyLatentImage().generate(WIDTH, HEIGHT, 1)[0]
    return nodes.common_ksampler(model, SEED, steps, cfg, sampler, scheduler, positive, negative, latent)[0]["samples"]


def difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Largest absolute difference, relative to the largest value of ``b``."""
    a, b = a.float(), b.float()
    return {"max_abs": float((a - b).abs().max()), "scale": float(b.abs().max()), "shape": list(a.shape)}


def core_pixart(path: Path):
    """ComfyUI's own PixArt model (its PixArtMS network) holding the file's weights."""
    unet_config = {
        "image_model": "pixart_alpha",
        "hidden_size": CONFIG.hidden_size,
        "num_heads": CONFIG.num_heads,
        "depth": CONFIG.depth,
        "patch_size": CONFIG.patch_size,
        "in_channels": CONFIG.in_channels,
        "caption_channels": CONFIG.caption_channels,
        "model_max_length": CONFIG.caption_length,
        "micro_condition": CONFIG.micro_conditions,
        "pe_interpolation": CONFIG.interpolation_scale,
        "input_size": CONFIG.sample_size,
    }
    model = comfy.supported_models.PixArtAlpha(unet_config).get_model({})
    model.load_model_weights(comfy.utils.load_torch_file(str(path), safe_load=True), "")
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def engine_euler(model, positive, negative, steps: int, control=None) -> torch.Tensor:
    """The engine's euler from KSampler's noise, started as ComfyUI starts (noise x sqrt(1 + sigma_max^2))."""
    settings = samplers.SamplingSettings(samplers.Sampler.EULER, steps, CFG)
    scheduler, _ = samplers.make_scheduler(settings)
    sigma_max = float(scheduler.sigmas.max())
    noise = torch.randn(1, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(SEED))
    latents = samplers.sample(
        model.transformer,
        caption_of(positive),
        settings,
        noise * math.sqrt(1 + sigma_max**2) / sigma_max,
        uncond=caption_of(negative),
        image_size=(HEIGHT, WIDTH),
        control=control,
    )
    return latents / 0.18215


@contextlib.contextmanager
def partial_loads(memory: int):
    """ComfyUI's model management giving every model ``memory`` bytes of its device, as on a GPU smaller than the
    model (on the CPU ComfyUI always loads whole): models already loaded are unloaded first."""
    comfy.model_management.unload_all_models()
    original = comfy.model_management.LoadedModel.model_use_more_vram

    def limited(self, extra_memory, force_patch_weights=False):
        return self.model.partially_load(self.device, memory, force_patch_weights=force_patch_weights)

    comfy.model_management.LoadedModel.model_use_more_vram = limited
    try:
        yield
    finally:
        comfy.model_management.LoadedModel.model_use_more_vram = original


def load_state(patcher) -> dict:
    """How ComfyUI loaded ``patcher``'s model: partly or not, bytes loaded of all, layers streamed (cast on use)."""
    layers = [m for m in patcher.model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]
    return {
        "lowvram": bool(patcher.model.model_lowvram),
        "loaded": patcher.loaded_size(),
        "size": patcher.model_size(),
        "cast_layers": len(layers),
        "streamed": sum(bool(m.comfy_cast_weights) for m in layers),
    }


def caption_of(conditioning):
    return ENGINE.text.encoder.TextEmbedding(conditioning[0][0], torch.ones(conditioning[0][0].shape[:2]))


def main() -> None:
    comfy.utils.PROGRESS_BAR_ENABLED = False
    results: dict = {"core_model": comfy_model.CORE_MODEL}
    folder = Path(tempfile.mkdtemp())
    path = folder / "checkpoints" / "PixArt-tiny-512-MS.pth"
    path.parent.mkdir()
    torch.save({"state_dict": random_transformer(CONFIG, seed=11).reference_state_dict()}, path)
    folder_paths.add_model_folder_path("checkpoints", str(path.parent))
    ours, model = PACK.nodes.loaders.CheckpointLoader().load(path.name)
    results["model_class"] = type(model.model).__name__
    results["runs_engine_transformer"] = model.model.diffusion_model is ours.transformer
    results["detected"] = ours.transformer.config.describe()
    positive, negative = [[caption(1, 12), {}]], [[caption(2, 7), {}]]

    # KSampler on our MODEL and on core's own PixArt model from the same file.
    latent = ksampler(model, positive, negative)
    results["ksampler_vs_core_pixart"] = difference(latent, ksampler(core_pixart(path), positive, negative))

    # Our engine's euler where the schedules agree: its trailing spacing (10 steps: timesteps 999, 899, ..., 99)
    # is core's "simple" scheduler.
    results["ksampler_vs_engine_euler"] = difference(
        ksampler(model, positive, negative, steps=10, scheduler="simple"), engine_euler(ours, positive, negative, 10)
    )

    # The caption mask: a caption padded with junk but masked gives what the same caption without padding gives.
    padded = torch.cat([positive[0][0], torch.randn(1, 108, CONFIG.caption_channels) * 5], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 108)], dim=1).long()
    masked = ksampler(model, [[padded, {"attention_mask": mask}]], negative, steps=4)
    plain = ksampler(model, positive, negative, steps=4)
    results["masked_vs_unpadded"] = difference(masked, plain)
    results["unmasked_padding_vs_unpadded"] = difference(ksampler(model, [[padded, {}]], negative, steps=4), plain)

    # LCM through ModelSamplingDiscrete lcm: one step, the engine's LCM at timestep 999.
    lcm_model = ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    one_step = ksampler(lcm_model, positive, negative, steps=1, sampler="lcm", scheduler="sgm_uniform", cfg=1.0)
    settings = samplers.SamplingSettings(samplers.Sampler.LCM, 1, 0.0)
    noise = torch.randn(1, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(SEED))
    engine = samplers.sample(ours.transformer, caption_of(positive), settings, noise, image_size=(HEIGHT, WIDTH))
    results["lcm_one_step_vs_engine"] = difference(one_step, engine / 0.18215)
    four = ksampler(lcm_model, positive, negative, steps=4, sampler="lcm", scheduler="sgm_uniform", cfg=1.0)
    results["lcm_four_steps_finite"] = bool(torch.isfinite(four).all())

    # A guidance patch (RescaleCFG wraps the CFG function): runs, and changes the result.
    rescaled = ksampler(RescaleCFG().patch(model, 0.7)[0], positive, negative, steps=4)
    results["rescale_cfg_vs_plain"] = difference(rescaled, plain)

    # Core LoraLoaderModelOnly with a diffusers-named LoRA: the same patches on our MODEL and core's PixArt.
    lora = {}
    generator = torch.Generator().manual_seed(5)
    for block in range(CONFIG.depth):
        for target, width in (
            ("attn1.to_q", CONFIG.hidden_size),
            ("attn2.to_k", CONFIG.hidden_size),
            ("ff.net.2", CONFIG.mlp_hidden),
        ):
            key = f"transformer.transformer_blocks.{block}.{target}"
            lora[f"{key}.lora_A.weight"] = torch.randn(4, width, generator=generator) * 0.1
            lora[f"{key}.lora_B.weight"] = torch.randn(CONFIG.hidden_size, 4, generator=generator) * 0.1
    (folder / "loras").mkdir()
    save_file(lora, str(folder / "loras" / "tiny_lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder / "loras"))
    loader = nodes.LoraLoaderModelOnly()
    ours_lora = loader.load_lora_model_only(model, "tiny_lora.safetensors", 0.8)[0]
    core_lora = loader.load_lora_model_only(core_pixart(path), "tiny_lora.safetensors", 0.8)[0]
    results["lora_patched_keys"] = len(ours_lora.patches)
    lora_latent = ksampler(ours_lora, positive, negative, steps=4)
    results["lora_vs_core_lora"] = difference(lora_latent, ksampler(core_lora, positive, negative, steps=4))
    results["lora_vs_plain"] = difference(lora_latent, plain)
    results["plain_after_lora_vs_before"] = difference(ksampler(model, positive, negative, steps=4), plain)

    # Low VRAM: loaded partly, our MODEL (plain, with a core LoRA, with the pack's LoRA) samples as when loaded whole.
    pack_lora = PACK.nodes.lora.LoraLoader().load(ours, "tiny_lora.safetensors", 0.8)[1]  # ours is loaded now
    results["pack_lora_layers_marked_loaded"] = sum(
        bool(getattr(m, "comfy_patched_weights", False)) for m in pack_lora.model.diffusion_model.modules()
    )
    results["plain_layers_marked_loaded"] = sum(
        bool(getattr(m, "comfy_patched_weights", False)) for m in ours.transformer.modules()
    )
    pack_lora_full = ksampler(pack_lora, positive, negative, steps=4)
    with partial_loads(model.model_size() // 4):
        results["lowvram_vs_full"] = difference(ksampler(model, positive, negative, steps=4), plain)
        results["lowvram_state"] = load_state(model)
        results["lowvram_core_lora_vs_full"] = difference(ksampler(ours_lora, positive, negative, steps=4), lora_latent)
        results["lowvram_core_lora_state"] = load_state(ours_lora)
        results["lowvram_pack_lora_vs_full"] = difference(
            ksampler(pack_lora, positive, negative, steps=4), pack_lora_full
        )
        results["lowvram_pack_lora_state"] = load_state(pack_lora)
    comfy.model_management.unload_all_models()

    # An 8-bit model (bitsandbytes' LLM.int8) samples too; a LoRA on its quantized weights is refused.
    _, int8 = PACK.nodes.loaders.CheckpointLoader().load(path.name, "auto", "int8")
    results["int8_vs_full"] = difference(ksampler(int8, positive, negative, steps=4), plain)
    try:
        loader.load_lora_model_only(int8, "tiny_lora.safetensors", 0.8)
    except ENGINE.errors.InputError as err:
        results["int8_lora_refused"] = str(err)
    del int8

    # Our ControlNet through Apply ControlNet's conditioning, with start/end, against the engine's own control.
    network = PACK.pixart_delta_core.models.controlnet.ControlNetTransformer.from_base(ours.transformer, 2)
    randomize_(network, seed=4)
    managed = PACK.nodes.host.manage(network, model.load_device, model.offload_device)
    controlnet = PACK.nodes.controlnet.PixArtControlNet(network, managed, ours)
    image = torch.rand(1, 96, 80, 3, generator=torch.Generator().manual_seed(9))
    vae = StandInVae()
    pos_c, neg_c = PACK.nodes.controlnet.ControlNetApply().apply(
        positive, controlnet, image, vae, 0.9, 0.3, 0.8, negative
    )
    controlled = ksampler(model, pos_c, neg_c, steps=10, scheduler="simple")  # the engine's euler spacing
    control = pos_c[0][1]["pixart_delta_control"]
    schedule = control.schedule(ours.transformer, control.latent(HEIGHT, WIDTH, 0.18215))
    results["controlnet_vs_engine"] = difference(controlled, engine_euler(ours, positive, negative, 10, schedule))
    results["controlnet_vs_none"] = difference(
        controlled, ksampler(model, positive, negative, steps=10, scheduler="simple")
    )

    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
