"""Text (and optionally an init or control image) to images, one stage at a time.

Stages: encode the prompts with T5, free T5; encode any init or control image with the VAE;
denoise with the transformer (and ControlNet), free them; decode with the VAE. Only one large model
is in memory at a time unless ``keep_loaded`` asks to keep them between calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..checkpoints.detection import DetectedCheckpoint
from ..devices import parse_dtype, pick_device, pick_dtype
from ..errors import CheckpointError, InputError, first_line, given_as
from ..memory import return_free_heap
from ..models.controlnet import ControlNetTransformer, check_control_strength, inspect_controlnet, load_controlnet
from ..models.lora import apply_loras
from ..models.lora_config import Lora, read_lora
from ..models.transformer import PixArtTransformer, inspect_transformer, load_transformer
from ..models.transformer_config import TransformerConfig, vae_defaults_for
from ..quant.quantization import Quantization, parse_quantization
from ..sampling.choices import LcmTimesteps
from ..sampling.samplers import ControlSchedule, SamplingSettings, StepCallback, generate_latents
from ..text.embedding import TextEmbedding
from ..text.encoder import TextEncoder, check_tokenizer_fits, find_tokenizer, load_text_encoder, load_tokenizer
from ..text.t5 import inspect_t5
from ..vae.autoencoder import Vae, check_encodes, inspect_vae, load_vae
from .arguments import (
    MAX_BATCH_PIXELS,
    LoraSpec,
    PathLike,
    check_images,
    check_integer,
    check_prompts,
    check_seed,
    check_size_to_draw,
    check_steps,
    lora_specs,
    named_image,
    negatives_to_encode,
    opened_image,
)
from .distillation import embedded_transformer, warn_unsuited_sampler
from .images import INIT_IMAGE_SIZE, asked_size, init_sets_size, prepare_image, resize_and_crop, to_pil, warn_if_cropped
from .resolution import bins_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ImageInput = Image.Image | PathLike | torch.Tensor


@dataclass(frozen=True)
class Control:
    """A control image for the ControlNet-Transformer and how it acts (docs/REFERENCE.md §4)."""

    image: ImageInput
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    sample: bool = False  # sample the VAE posterior (from the seed) instead of taking its mean

    def __post_init__(self) -> None:
        check_control_strength(self.strength)  # before any model loads, not at the ControlNet's hook


@dataclass(frozen=True)
class Generation:
    """What a run made: the images, their scaled latents, the size they were generated at, and the
    sampling settings used (the sampler's defaults filled in)."""

    images: list[Image.Image]
    latents: torch.Tensor
    size: tuple[int, int]
    settings: SamplingSettings


@dataclass
class PixArtPipeline:
    """The staged text-to-image pipeline over model files (any layout the loaders read)."""

    transformer: PathLike
    t5: PathLike
    vae: PathLike
    tokenizer: PathLike | None = None
    controlnet: PathLike | None = None
    device: str | torch.device = "auto"
    dtype: str | torch.dtype = "auto"
    t5_dtype: str | torch.dtype = "auto"
    vae_dtype: str | torch.dtype = "auto"
    keep_loaded: bool = False
    low_memory: bool = False
    t5_quantization: Quantization | str | None = None
    quantization: Quantization | str = Quantization.NONE
    loras: Sequence[LoraSpec] | PathLike = ()  # one path alone is one LoRA at strength 1
    lora_controlnet: bool = False  # the ControlNet's copies also take the LoRAs of the base blocks they copy
    hints: Mapping[str, Any] | None = None  # what detection cannot read from the transformer's weights
    _loaded: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _checked: set[tuple[bool, bool]] = field(default_factory=set, init=False, repr=False)  # check_files'

    def __post_init__(self) -> None:
        self.device = pick_device(self.device)
        self.dtype = pick_dtype(self.dtype, self.device)
        self.t5_dtype = parse_dtype("bf16") if str(self.t5_dtype) == "auto" else parse_dtype(self.t5_dtype)
        self.vae_dtype = pick_dtype(self.vae_dtype, self.device)
        if self.t5_quantization is None:  # the paper's low-memory recipe runs T5 in 8-bit
            self.t5_quantization = Quantization.INT8 if self.low_memory else Quantization.NONE
        self.t5_quantization = parse_quantization(self.t5_quantization)
        self.quantization = parse_quantization(self.quantization)

    # --- stages ------------------------------------------------------------------------------

    def _model(self, name: str, load: Any) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load()
        return self._loaded[name]

    def _free(self, *names: str) -> None:
        if self.keep_loaded and not self.low_memory:
            return
        for name in names:  # the models hold no reference cycles: dropping the last reference frees them
            self._loaded.pop(name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return_free_heap()

    @cached_property
    def transformer_checkpoint(self) -> DetectedCheckpoint[TransformerConfig]:
        """The transformer file, recognised once per pipeline: its layout and config (no weights read)."""
        return inspect_transformer(self.transformer, self.hints)

    @cached_property
    def text_tokenizer(self) -> PreTrainedTokenizerBase:
        """The T5 tokenizer, read and checked once per pipeline: ``tokenizer``, else the one beside ``t5``."""
        return load_tokenizer(self.tokenizer if self.tokenizer is not None else find_tokenizer(self.t5))

    @cached_property
    def lora_stack(self) -> list[tuple[Lora, float]]:
        """The ``loras``, read and checked once per pipeline, with their strengths (merged into full-precision
        weights, computed on the fly beside quantized ones: ``models/lora.py``)."""
        stack = [(read_lora(path), strength) for path, strength in lora_specs(self.loras)]
        if stack:  # refuse a LoRA for another width or depth now, on an empty (meta) model: no weights read
            apply_loras(PixArtTransformer(self.transformer_checkpoint.config, device="meta"), stack, "on_the_fly")
        for lora, strength in stack:
            log.info("LoRA %s at strength %g: %s", lora.name, strength, lora.describe())
        return stack

    def _check_controlnet(self, base: TransformerConfig) -> None:
        """The ControlNet a control image needs is there and fits ``base``: ``controlnet``, else the transformer
        file itself (a reference ControlNet file holds both). Raises InputError or CheckpointError."""
        if self.controlnet is not None:
            inspect_controlnet(self.controlnet, base_config=base)
            return
        try:
            inspect_controlnet(self.transformer, base_config=base)
        except CheckpointError as err:
            log.debug("no ControlNet in the transformer file: %s", first_line(err))
            raise InputError(
                f"a control image needs a ControlNet: give --controlnet FILE on the command line (controlnet= in "
                f"Python); the transformer file {Path(self.transformer).name} holds none"
            ) from None

    def check_files(self, control: bool = False, encodes: bool = False, given: Mapping[str, str] | None = None) -> None:
        """Refuse now, from the files (their headers and keys; no model is built), a T5 or tokenizer, LoRA, VAE or
        ControlNet of another kind or that does not fit the transformer: the ControlNet too where ``control``, and
        a VAE that cannot encode images where ``encodes``. Raises InputError or CheckpointError, led by how the file
        was given where ``given`` says it (by the pipeline's argument: "t5", "loras", "vae", "controlnet"; the
        command line's options).

        Runs once per pipeline for the same ``control`` and ``encodes`` (a .pth file is read whole to be
        recognised): the command line calls it before its warnings, and the run finds it done."""
        if (control, encodes) in self._checked:
            return
        given = given or {}
        with given_as(given.get("t5")):  # its kind first, from its header
            t5 = inspect_t5(self.t5)
        check_tokenizer_fits(self.text_tokenizer, t5)  # then its tokenizer, given or found beside it
        with given_as(given.get("loras")):
            self.lora_stack  # noqa: B018 - read (and refuse) the LoRA files
        base = self.transformer_checkpoint.config
        with given_as(given.get("vae")):
            vae = inspect_vae(self.vae, vae_defaults_for(base))  # the VAE's kind too, though it runs last
        if control:  # a ControlNet that is missing or does not fit
            with given_as(given.get("controlnet") if self.controlnet is not None else None):
                self._check_controlnet(base)
        if encodes:  # a TAESD decoder alone cannot encode an init or control image
            check_encodes(vae)
        self._checked.add((control, encodes))

    def load_transformer(self) -> PixArtTransformer:
        def load() -> PixArtTransformer:
            model = load_transformer(
                self.transformer_checkpoint, self.dtype, self.device, quantization=self.quantization
            )
            return apply_loras(model, self.lora_stack) if self.lora_stack else model

        return self._model("transformer", load)

    def load_text_encoder(self) -> TextEncoder:
        return self._model(
            "t5",
            lambda: load_text_encoder(self.t5, self.t5_dtype, self.device, self.text_tokenizer, self.t5_quantization),
        )

    def load_vae(self, transformer_config: TransformerConfig) -> Vae:
        defaults = vae_defaults_for(transformer_config)
        return self._model("vae", lambda: load_vae(self.vae, self.vae_dtype, self.device, defaults=defaults))

    def load_controlnet(self, transformer: PixArtTransformer) -> ControlNetTransformer:
        source = self.controlnet or self.transformer

        def load() -> ControlNetTransformer:
            model = load_controlnet(source, transformer.config, self.dtype, self.device, quantization=self.quantization)
            return apply_loras(model, self.lora_stack) if self.lora_controlnet and self.lora_stack else model

        return self._model("controlnet", load)

    def encode_prompts(
        self, prompts: Sequence[str], negatives: Sequence[str] | None, caption_length: int, clean_caption: bool
    ) -> tuple[TextEmbedding, TextEmbedding | None]:
        """Stage 1: prompts (and negative prompts) -> T5 embeddings; T5 is freed afterwards."""
        encoder = self.load_text_encoder()
        cond = encoder.encode(prompts, caption_length, clean_caption)
        uncond = None
        if negatives is not None:
            uncond = encoder.encode(negatives, caption_length, clean_caption, "negative prompt")
        del encoder  # the last reference outside the cache: freeing can release it
        self._free("t5")
        return cond.to("cpu"), None if uncond is None else uncond.to("cpu")

    # --- one call ------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        width: int | None = None,
        height: int | None = None,
        resolution_binning: bool = True,
        sampler: str = "lcm",
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        images_per_prompt: int = 1,
        lcm_timesteps: str = "reference",
        init_image: ImageInput | None = None,
        strength: float = 1.0,
        control: Control | None = None,
        clean_caption: bool = False,
        on_step: StepCallback | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> Generation:
        """Generate images. Steps and guidance default to the reference settings of the sampler.

        ``width``/``height`` default to the model's training resolution; with ``resolution_binning``
        the image is generated at the nearest trained aspect-ratio bin, then resized and centre-cropped
        to the asked size (as the reference app does); a model trained at a resolution without bins (the
        embedded 128 px one) draws the asked size itself, a multiple of 16. A negative prompt of None uses the model's
        learned null caption when guidance is on (the reference's unconditional input), or the empty
        prompt where the file has none (diffusers-layout files; what diffusers does). An image-to-image
        run without a size keeps the init image's size (``asked_size``). ``on_stage`` hears "text", "images"
        (VAE-encoding an init or control image), "denoise", "decode" and "done" as the run moves on.

        Everything that can be checked without loading a model is checked first (files and their kinds,
        images, tokenizer, sizes, settings): InputError or CheckpointError before T5 runs.

        Arguments are checked before any model loads (``arguments``): ``seed`` in 0..2^64-1 (a negative
        seed is refused, not wrapped), integer ``steps`` and ``images_per_prompt``, prompts without lone
        surrogates, images within size and finite, the batch within memory. Raises InputError otherwise.
        """
        stage = on_stage or (lambda name: None)
        prompts = check_prompts([prompt] if isinstance(prompt, str) else list(prompt))
        if not prompts:
            raise InputError("no prompt given: pass at least one (an empty string is a valid prompt)")
        negatives = None  # made a list once (one text stands for each prompt), checked as the prompts are
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            negatives = check_prompts(negatives, "negative prompt")  # not first by the tokenizer after T5 loads
        check_integer("images per prompt", images_per_prompt, 1, MAX_BATCH_PIXELS)
        seed = check_seed(seed)
        steps = None if steps is None else check_steps(steps)
        init_size = check_images(init_image, None if control is None else control.image)
        settings = SamplingSettings.defaults(
            sampler,
            **({"steps": steps} if steps is not None else {}),
            **({"guidance": guidance} if guidance is not None else {}),
            strength=strength if init_image is not None else 1.0,
            lcm_timesteps=_lcm_timesteps(lcm_timesteps),
        )
        if strength != 1.0 and init_image is None:
            raise InputError("strength (denoise) below 1 needs an init image to start from")
        self.check_files(control is not None, init_image is not None or control is not None)  # before T5 runs
        transformer_config = self.transformer_checkpoint.config
        warn_unsuited_sampler(settings, embedded_transformer(self.transformer, bool(self.lora_stack)))
        negatives = negatives_to_encode(negatives, len(prompts), settings.guided, transformer_config.null_caption)
        resolution = transformer_config.resolution
        asked = asked_size(height, width, (resolution, resolution), init_size)
        from_init = init_sets_size(height, width, init_size)
        init_name = named_image("init image", init_image)
        source = f"{init_name} is {asked[1]}x{asked[0]} px (width x height)" if from_init else ""
        bins = bins_for(transformer_config) if resolution_binning else None
        size = check_size_to_draw(asked, bins, len(prompts) * images_per_prompt, source)
        init_image = None if init_image is None else opened_image(init_image, "init image")  # decoded only now
        if control is not None:
            control = replace(control, image=opened_image(control.image, "control image"))

        stage("text")
        cond, uncond = self.encode_prompts(prompts, negatives, transformer_config.caption_length, clean_caption)
        batch = len(prompts) * images_per_prompt

        init = control_latent = None
        if init_image is not None or control is not None:
            stage("images")
            vae = self.load_vae(transformer_config)
            if init_image is not None:
                warn_if_cropped(init_name, init_image, *asked, sets_size=from_init)  # the asked size, not the bin
                init = vae.scale(vae.encode(prepare_image(init_image, *size)))
            if control is not None:
                # the picture is the asked size, not the bin
                warn_if_cropped("control image", control.image, *asked, INIT_IMAGE_SIZE if from_init else "")
                generator = torch.Generator().manual_seed(seed)
                control_latent = vae.scale(vae.encode(prepare_image(control.image, *size), generator, control.sample))
            del vae
            if self.low_memory:
                self._free("vae")
        stage("denoise")
        downscale = vae_defaults_for(transformer_config).downscale
        transformer = self.load_transformer()
        schedule = controlnet = None
        if control is not None:
            controlnet = self.load_controlnet(transformer)
            hook = controlnet.hook(transformer, control_latent.to(self.device, self.dtype), control.strength)
            schedule = ControlSchedule(hook, control.start, control.end)
        latents = generate_latents(
            transformer,
            cond,
            settings,
            seed=seed,
            batch=batch,
            height=size[0] // downscale,
            width=size[1] // downscale,
            uncond=uncond,
            init_latents=init,
            control=schedule,
            image_size=size,
            on_step=on_step,
        )
        del transformer, controlnet, schedule  # the last references: freeing can now release them
        self._free("controlnet", "transformer")

        stage("decode")
        vae = self.load_vae(transformer_config)
        pixels = vae.decode(vae.unscale(latents), tiled=True if self.low_memory else None)
        del vae
        self._free("vae")
        if size != asked:
            pixels = resize_and_crop(pixels, *asked)
        stage("done")
        return Generation(to_pil(pixels), latents.cpu(), size, settings)


def _lcm_timesteps(name: str) -> LcmTimesteps:
    try:
        return LcmTimesteps(name)
    except ValueError:
        raise InputError(f"unknown LCM timesteps {name!r}: expected 'reference' or 'diffusers'") from None


def generate(
    prompt: str | Sequence[str],
    *,
    transformer: PathLike,
    t5: PathLike,
    vae: PathLike,
    tokenizer: PathLike | None = None,
    controlnet: PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    t5_dtype: str | torch.dtype = "auto",
    low_memory: bool = False,
    loras: Sequence[LoraSpec] | PathLike = (),
    **options: Any,
) -> list[Image.Image]:
    """Files to PIL images in one call (see ``PixArtPipeline.__call__`` for the options)."""
    pipeline = PixArtPipeline(
        transformer, t5, vae, tokenizer, controlnet, device, dtype, t5_dtype, low_memory=low_memory, loras=loras
    )
    return pipeline(prompt, **options).images
