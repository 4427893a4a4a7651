"""Standalone MERGE-L on diffusers models: depth estimation and generation with one FLUX.1-dev (official defaults).

Depth follows the official ``MERGEFluxPipeline.merge_process``: the image resized to its own size floored to
multiples of 16, its FLUX VAE latent sampled and shifted/scaled, the empty prompt through CLIP (pooled) and T5
(512 tokens), guidance embedding 0, 20 Euler steps on ``linspace(1, 1/N, N)`` with FLUX's resolution-dependent
shift, decode, mean of the channels. Generation is diffusers' stock ``FluxPipeline`` on the same transformer
object. Nothing is ever downloaded: every component comes from local folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dense.outputs import AFFINE_DEPTH, DenseOutput
from ..dense.readout import decoded_to_unit, merge_depth_from_unit
from ..io.checkpoints import require_subfolder, scheduler_config
from ..io.prompt_embeddings import read_prompt_embedding
from ..io.resolution import resize_image
from .flux_converters import MergeFluxConverters, load_flux_converters
from .flux_forward import MergeFluxTransformer

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json (used when a folder has none).
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
FLUX_FOLDER_HINT = (
    "Expected a local diffusers folder of 'black-forest-labs/FLUX.1-dev' with transformer/, vae/ and scheduler/ "
    "(text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/ only to encode prompts)."
)
MAX_T5_TOKENS = 512  # the official depth call's max_sequence_length


def calculate_shift(image_seq_len: int, config: dict = FLUX_SCHEDULER) -> float:
    """FLUX's dynamic shift μ: linear in the number of packed image tokens (256 -> 0.5, 4096 -> 1.15)."""
    m = (config["max_shift"] - config["base_shift"]) / (config["max_image_seq_len"] - config["base_image_seq_len"])
    return image_seq_len * m + config["base_shift"] - m * config["base_image_seq_len"]


def official_sigmas(num_steps: int, height: int, width: int, config: dict = FLUX_SCHEDULER) -> torch.Tensor:
    """The official depth schedule for an image of ``height``×``width`` pixels: N+1 σ values ending in 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift((height // 16) * (width // 16), config)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    return sched.sigmas


def floor16(height: int, width: int) -> tuple[int, int]:
    """The official processing size: both sides floored to multiples of 16 (VAE factor 8 × 2×2 packing)."""
    h, w = height // 16 * 16, width // 16 * 16
    if h < 16 or w < 16:
        raise ValueError(f"The image is {width}×{height} px; MERGE-L needs at least 16 px on each side.")
    return h, w


@dataclass
class MergeFluxPipeline:
    """One FLUX.1-dev with MERGE-L converters: ``estimate_depth`` (converters on) and ``generate`` (stock model)."""

    transformer: nn.Module
    converters: MergeFluxConverters
    vae: nn.Module
    scheduler_config: dict = field(default_factory=lambda: dict(FLUX_SCHEDULER))
    text_encoders: tuple | None = None  # (clip, clip tokenizer, t5, t5 tokenizer), only to encode prompts
    empty_prompt: tuple[torch.Tensor, torch.Tensor] | None = None  # (T5 context [1,512,4096], CLIP pooled [1,768])

    def __post_init__(self) -> None:
        self.model = MergeFluxTransformer(self.transformer, self.converters)

    @classmethod
    def from_folders(
        cls,
        flux_dir: str,
        converters_path: str,
        empty_prompt_path: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        load_text_encoders: bool = False,
    ) -> MergeFluxPipeline:
        """Load from local folders only (``local_files_only=True``); errors name the missing part."""
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        def sub(name: str) -> str:
            return require_subfolder(flux_dir, name, FLUX_FOLDER_HINT)

        conv = load_flux_converters(converters_path, device=device, dtype=dtype)  # checked before the 24 GB base
        empty = None
        if empty_prompt_path is not None:
            e = read_prompt_embedding(empty_prompt_path)
            if e.pooled is None:
                raise ValueError(
                    f"'{empty_prompt_path}' holds no pooled CLIP vector (a T5-only embedding, e.g. MERGE-B's). "
                    "MERGE-L needs the empty prompt through FLUX's CLIP-L and T5: save it with "
                    "`merge-l-depth --save-empty-prompt` or the ComfyUI node from a FLUX DualCLIPLoader."
                )
            empty = (e.context.to(device, dtype), e.pooled.to(device, dtype))
        elif not load_text_encoders:
            raise ValueError(
                "Depth mode needs the empty prompt's CLIP + T5 embedding: pass `empty_prompt_path` (a file saved "
                "with save_prompt_embedding / the ComfyUI node) or `load_text_encoders=True`."
            )
        transformer = FluxTransformer2DModel.from_pretrained(
            sub("transformer"), torch_dtype=dtype, local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(sub("vae"), torch_dtype=dtype, local_files_only=True)
        encoders = None
        if load_text_encoders:
            from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

            encoders = (
                CLIPTextModel.from_pretrained(sub("text_encoder"), torch_dtype=dtype, local_files_only=True).to(device),
                CLIPTokenizer.from_pretrained(sub("tokenizer"), local_files_only=True),
                T5EncoderModel.from_pretrained(sub("text_encoder_2"), torch_dtype=dtype, local_files_only=True).to(
                    device
                ),
                T5TokenizerFast.from_pretrained(sub("tokenizer_2"), local_files_only=True),
            )
        sched = scheduler_config(flux_dir, FLUX_SCHEDULER)
        return cls(transformer.to(device).eval(), conv, vae.to(device).eval(), sched, encoders, empty)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def stock_pipeline(self):
        """diffusers' ``FluxPipeline`` on this pipeline's transformer, VAE and text encoders (same objects)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        clip, clip_tok, t5, t5_tok = self.text_encoders or (None, None, None, None)
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
            vae=self.vae,
            text_encoder=clip,
            tokenizer=clip_tok,
            text_encoder_2=t5,
            tokenizer_2=t5_tok,
            transformer=self.transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 context [1,512,4096], CLIP pooled [1,768]) as FluxPipeline encodes it (T5 unmasked, 512 tokens)."""
        if prompt == "" and self.empty_prompt is not None:
            return self.empty_prompt
        if self.text_encoders is None:
            raise ValueError("Encoding a prompt needs CLIP-L and T5: build the pipeline with load_text_encoders=True.")
        ctx, pooled, _ = self.stock_pipeline().encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=MAX_T5_TOKENS
        )
        return ctx, pooled

    def make_scheduler(self, num_steps: int, image_seq_len: int):
        """FlowMatchEulerDiscreteScheduler on the official sigmas linspace(1, 1/N, N), shifted by μ(seq len)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        sched.set_timesteps(sigmas=sigmas, mu=calculate_shift(image_seq_len, self.scheduler_config), device=self.device)
        return sched

    @torch.no_grad()
    def estimate_depth(
        self,
        image=None,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        posterior: str = "sample",
        resize_to_input: bool = False,
        callback=None,
    ) -> DenseOutput:
        """MERGE-L depth (official ``merge_process``): ``depth`` [B,h,w] in [0, 1], 0 = near, affine-invariant.

        ``image`` is a PIL image or a [B,3,H,W] tensor in [0, 1]; h, w are its sides floored to multiples of 16, as
        the official pipeline returns them (``resize_to_input=True`` resizes the depth back to H×W, bilinear).
        ``image_latents`` [B,16,h/8,w/8] (shifted and scaled, model space) replace the encoded image;
        ``latents`` of the same shape replace the starting noise. The generator draws the posterior sample, then
        the noise, as the official pipeline does.
        """
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.utils.torch_utils import randn_tensor

        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' (official) or 'mode', got {posterior!r}.")
        for name, t in (("latents", latents), ("image_latents", image_latents)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor [B,16,h/8,w/8] or None, got {type(t).__name__}.")
        cfg = self.vae.config
        if image_latents is not None:
            # 1'. A precomputed image latent: its size gives the processing size.
            if image_latents.ndim != 4 or image_latents.shape[1] != 16 or image_latents.shape[-1] % 2:
                raise ValueError(
                    f"image_latents must be FLUX VAE latents [B,16,h/8,w/8] with even sides (images floored to "
                    f"multiples of 16), got {tuple(image_latents.shape)}."
                )
            z_img = image_latents.to(self.device, self.dtype)  # [B,16,h/8,w/8]
            h, w = 8 * z_img.shape[-2], 8 * z_img.shape[-1]
            orig_h, orig_w = h, w
            if image is not None:
                raise ValueError("Give `image` or `image_latents`, not both.")
        else:
            if image is None:
                raise ValueError("Give `image` (PIL or [B,3,H,W] in [0, 1]) or `image_latents`.")
            # 1. Size: the image's own, floored to multiples of 16; the official VaeImageProcessor resize to it.
            if isinstance(image, torch.Tensor):
                orig_h, orig_w = image.shape[-2:]
                h, w = floor16(orig_h, orig_w)
                image = resize_image(image, (h, w)).clamp(0, 1)  # tensors: antialiased bicubic (PIL: official lanczos)
            else:
                orig_w, orig_h = image.size
                h, w = floor16(orig_h, orig_w)
            proc = VaeImageProcessor(vae_scale_factor=16, vae_latent_channels=16)
            x = proc.preprocess(image, height=h, width=w).to(self.device, self.vae.dtype)  # [B,3,h,w] in [-1,1]
            # 2. Image latent (sampled, shifted and scaled) and the starting noise, from the same generator.
            dist = self.vae.encode(x).latent_dist
            z_img = ((dist.sample(generator) if posterior == "sample" else dist.mode()) - cfg.shift_factor) * (
                cfg.scaling_factor
            )  # [B,16,h/8,w/8]
        b = z_img.shape[0]
        ctx, pooled = self.encode_prompt("")
        ctx, pooled = ctx.expand(b, -1, -1).to(self.dtype), pooled.expand(b, -1).to(self.dtype)
        if latents is None:
            z = randn_tensor(z_img.shape, generator=generator, device=self.device, dtype=ctx.dtype)
        elif tuple(latents.shape) != tuple(z_img.shape):
            raise ValueError(
                f"latents must have the image latent's shape {tuple(z_img.shape)}, got {tuple(latents.shape)}."
            )
        else:
            z = latents.to(self.device, ctx.dtype)
        z_img = z_img.to(z.dtype)
        # 3. Euler on the converters' velocity, guidance 0, official sigmas shifted for this size.
        scheduler = self.make_scheduler(num_inference_steps, (h // 16) * (w // 16))
        for i, t in enumerate(scheduler.timesteps):
            timestep = t.expand(b).to(z.dtype) / 1000  # the official pipeline's cast, then /1000
            v = self.model(z, timestep, ctx, pooled, mode="depth", image_latent=z_img)
            z = scheduler.step(v, t, z).prev_sample
            if callback is not None:
                callback(i, t, z)
        # 4. Decode, [0, 1], mean of the 3 channels.
        decoded = self.vae.decode(z / cfg.scaling_factor + cfg.shift_factor).sample.float()  # [B,3,h,w]
        if resize_to_input and (h, w) != (orig_h, orig_w):
            decoded = F.interpolate(decoded, size=(orig_h, orig_w), mode="bilinear", align_corners=False)
        depth = merge_depth_from_unit(decoded_to_unit(decoded))  # [B,h,w]
        return DenseOutput(depth=depth, depth_kind=AFFINE_DEPTH, latents=z)

    @torch.no_grad()
    def generate(
        self,
        prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
    ) -> DenseOutput:
        """Text-to-image with the untouched FLUX (diffusers' FluxPipeline, official script settings): ``image``
        [B,3,H,W] in [0, 1]."""
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("Give `prompt` (needs the text encoders) or `prompt_embeds` + `pooled_prompt_embeds`.")
            prompt_embeds, pooled_prompt_embeds = self.encode_prompt(prompt)
        if pooled_prompt_embeds is None:
            raise ValueError("FLUX needs `pooled_prompt_embeds` (the CLIP-L pooled output) with `prompt_embeds`.")
        if height % 16 or width % 16 or not math.isfinite(guidance_scale):
            raise ValueError(f"height and width must be multiples of 16 (got {height}×{width}) and guidance finite.")
        images = self.stock_pipeline()(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        return DenseOutput(image=images.float())
