"""Standalone JointNet on diffusers modules: joint text→RGB-D generation and channel-wise RGB-D inpainting.

Both follow the official pipelines (apple/ml-jointnet ``jointnet_pipeline.py`` and ``jointnet_inpaint_pipeline.py``):
DDIM with SD2.1-base's schedule (scaled-linear β, leading spacing, steps_offset 1, ᾱ_final = ᾱ_0), 50 steps, CFG 7.5
with the empty prompt as the unconditional one (batch order [uncond, cond]), 512×512, ε-prediction on all 8
channels. Inpainting: both halves start from N(0, I) at strength 1 (else from the noised input latents), the known
latent is re-noised with the *same* noise tensor after every step, and the last step writes it clean.
Nothing is ever downloaded: every component comes from local folders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..dense.outputs import DISPARITY, DenseOutput
from ..dense.readout import decoded_to_unit, jointnet_depth_from_unit
from ..io.checkpoints import TRANSFORMERS_WEIGHTS, require_model_folder, require_tokenizer_folder, scheduler_config
from ..io.checks import check_finite, check_not_empty
from ..io.prompt_embeddings import load_clip_text_encoder
from ..tiling.panorama import circular_pad, crop_pad
from .inpaint import (
    MODES,
    as_mask,
    binarize,
    channel_mask,
    check_mask_size,
    depth_image_to_model_input,
    latent_mask,
    masked_condition,
    preset_masks,
    repaint_blend,
)
from .model import JointNetRGBD, check_joint_latent, load_jointnet

logger = logging.getLogger(__name__)

# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json as DDIMScheduler reads it (official:
# DDIMScheduler.from_pretrained(base, subfolder="scheduler")); used when the SD2.1 folder has no scheduler/.
SD21_BASE_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
SD21_FOLDER_HINT = (
    "Expected a local diffusers folder of 'stabilityai/stable-diffusion-2-1-base' (huggingface.co/stabilityai/"
    "stable-diffusion-2-1-base, downloaded as a whole) with vae/, text_encoder/ and tokenizer/ (scheduler/ "
    "optional); JointNet's own unet/ and jointnet/ replace its UNet."
)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, timestep, latents [B,8,h,w])


@dataclass
class JointNetOutput(DenseOutput):
    """``image`` [B,3,H,W] in [0, 1]; ``depth`` [B,H,W] = channel 0 of the decoded depth half (relative disparity in
    [0, 1], near = bright); ``depth_decoded`` [B,3,H,W] all three decoded channels; ``latents`` [B,8,h,w]."""

    depth_kind: str = DISPARITY
    depth_decoded: torch.Tensor | None = None


def guided_eps(
    model: JointNetRGBD,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance_scale: float,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """ε for the 8-channel latent with classifier-free guidance on all channels (official: only if scale > 1)."""
    if guidance_scale <= 1.0 or uncond is None:
        return model(z, t, cond, masked)
    zz = torch.cat([z, z])  # [2B,8,h,w]: [uncond, cond]
    mm = None if masked is None else torch.cat([masked, masked])  # same masked input for both (official)
    eps_u, eps_c = model(zz, t, torch.cat([uncond, cond]), mm).chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def _expand(ctx: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if ctx is None or ctx.shape[0] == batch:
        return ctx
    if ctx.shape[0] != 1:
        raise ValueError(f"The prompt embedding batch ({ctx.shape[0]}) does not match the latent batch ({batch}).")
    return ctx.expand(batch, -1, -1)


@torch.no_grad()
def ddim_generate(
    model: JointNetRGBD,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    masked: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Joint DDIM (η = 0) from ``latents`` = N(0, I) [B,8,h,w]; returns the final joint latent."""
    check_joint_latent(latents, model.latent_channels, "latents")
    check_finite(check_not_empty(latents, "latents", "BChw"), "latents", "BChw")
    b = latents.shape[0]
    cond, uncond = _expand(cond, b), _expand(uncond, b)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    z = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = guided_eps(model, scheduler.scale_model_input(z, t), t, cond, uncond, guidance_scale, masked)
        z = scheduler.step(eps, t, z).prev_sample  # [B,8,h,w]
        if callback is not None:
            callback(i, t, z)
    return z


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The last ``int(N·strength)`` timesteps (official ``get_timesteps``); strength 1 keeps all N."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}.")
    init = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - init, 0)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if len(timesteps) < 1:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps leaves no step to run; raise strength or steps."
        )
    return timesteps


@torch.no_grad()
def ddim_inpaint(
    model: JointNetRGBD,
    scheduler,
    init_latents: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    strength: float = 1.0,
    masked: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    start_from_noise: bool = False,
) -> torch.Tensor:
    """Channel-wise inpainting loop of the official inpaint pipeline, on latents.

    ``init_latents`` [B,8,h,w] are the known latents (model space), ``mask`` [B|1,8,h,w] the binary channel mask
    (1 = generate), ``noise`` [B,8,h,w] the one noise tensor used to start and to re-noise the known channels.
    Kept channels equal ``add_noise(init, noise, t_next)`` after every step and ``init`` after the last.
    ``start_from_noise`` starts from ``noise`` even at strength < 1 (the official pipeline given ``latents``).
    """
    check_joint_latent(init_latents, model.latent_channels, "init_latents")
    for name, x in (("init_latents", init_latents), ("noise", noise), ("mask", mask)):
        check_finite(check_not_empty(x, name), name)
    if noise.shape != init_latents.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the shape of init_latents {tuple(init_latents.shape)}.")
    if mask.shape[1:] != init_latents.shape[1:] or mask.shape[0] not in (1, init_latents.shape[0]):
        raise ValueError(f"mask {tuple(mask.shape)} must be [B|1,{init_latents.shape[1]},h,w] like the latents.")
    b = init_latents.shape[0]
    cond, uncond = _expand(cond, b), _expand(uncond, b)
    mask = binarize(mask.to(init_latents))
    scheduler.set_timesteps(num_inference_steps, device=init_latents.device)
    timesteps = strength_timesteps(scheduler, num_inference_steps, strength)
    # 1. Start: pure noise at strength 1 (both halves, the kept one included), else the noised input latents.
    if strength == 1.0 or start_from_noise:
        z = noise * scheduler.init_noise_sigma
    else:
        z = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(b))
    for i, t in enumerate(timesteps):
        # 2. One DDIM step on all 8 channels.
        eps = guided_eps(model, scheduler.scale_model_input(z, t), t, cond, uncond, guidance_scale, masked)
        z = scheduler.step(eps, t, z).prev_sample  # [B,8,h,w]
        # 3. RePaint blend: kept channels <- the known latent at the next timestep (clean after the last step).
        last = i == len(timesteps) - 1
        known = init_latents if last else scheduler.add_noise(init_latents, noise, timesteps[i + 1 : i + 2])
        z = repaint_blend(z, known, mask)
        if callback is not None:
            callback(i, t, z)
    return z


@dataclass
class JointNetPipeline:
    """JointNet with SD2.1-base's VAE and text encoder: ``generate`` (text → RGB-D) and ``inpaint`` (channel-wise)."""

    model: JointNetRGBD
    vae: nn.Module
    scheduler_config: dict | None = None
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None

    @classmethod
    def from_folders(
        cls,
        jointnet_dir: str,
        sd21_dir: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        load_text_encoder: bool = True,
    ) -> JointNetPipeline:
        """JointNet branches from the official folder, VAE/text encoder/scheduler from a local SD2.1-base folder."""
        from diffusers import AutoencoderKL

        # Every file is checked before anything heavy is loaded, so a missing one fails in a second.
        vae_dir = require_model_folder(sd21_dir, "vae", SD21_FOLDER_HINT)
        if load_text_encoder:
            te_dir = require_model_folder(sd21_dir, "text_encoder", SD21_FOLDER_HINT, TRANSFORMERS_WEIGHTS)
            tok_dir = require_tokenizer_folder(sd21_dir, "tokenizer", SD21_FOLDER_HINT)
        model = load_jointnet(jointnet_dir, device=device, dtype=dtype)
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, local_files_only=True).to(device).eval()
        sched = scheduler_config(sd21_dir, SD21_BASE_SCHEDULER)
        text_encoder = tokenizer = None
        if load_text_encoder:
            text_encoder, tokenizer = load_clip_text_encoder(te_dir, tok_dir, device, dtype)
        return cls(model, vae, sched, text_encoder, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def make_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config or SD21_BASE_SCHEDULER)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """CLIP embedding [B,77,1024] of SD2.1's text encoder (last hidden state, as the official pipeline)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("Encoding a prompt needs the SD2.1 text encoder: build with load_text_encoder=True.")
        tok = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = (
            tok.attention_mask.to(self.device)
            if getattr(self.text_encoder.config, "use_attention_mask", False)
            else None
        )
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0].to(self.dtype)

    def _prompts(self, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance_scale):
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("Give `prompt` (needs the text encoder) or `prompt_embeds`.")
            prompt_embeds = self.encode_prompt(prompt)
        if guidance_scale <= 1.0:
            return prompt_embeds.to(self.device, self.dtype), None
        if negative_prompt_embeds is None:
            neg = negative_prompt if negative_prompt is not None else ""
            if isinstance(neg, str):
                neg = [neg] * prompt_embeds.shape[0]
            negative_prompt_embeds = self.encode_prompt(neg)
        return prompt_embeds.to(self.device, self.dtype), negative_prompt_embeds.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B,3,H,W] in [-1, 1] -> model-space latent, sampled from the posterior (official ``latent_dist.sample``)."""
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return dist.sample(generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, circular_padding: int = 0) -> JointNetOutput:
        """Decode both halves separately; the depth is channel 0 of the decoded depth image.

        ``circular_padding`` latent px are wrapped onto both sides before decoding and cropped off afterwards (the
        official panorama decode uses 8, so the two ends of a 360° canvas meet without a seam)."""
        check_joint_latent(latents, self.model.latent_channels, "latents")
        c, sf = self.model.latent_channels, self.vae.config.scaling_factor

        def dec(z: torch.Tensor) -> torch.Tensor:
            pixels = self.vae.decode(circular_pad(z / sf, circular_padding)).sample.float()
            return decoded_to_unit(crop_pad(pixels, circular_padding * 8))  # [B,3,H,W]

        image, depth = dec(latents[:, :c]), dec(latents[:, c:])
        return JointNetOutput(image=image, depth=jointnet_depth_from_unit(depth), depth_decoded=depth, latents=latents)

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> JointNetOutput:
        """Text → RGB + depth with the official defaults (DDIM 50, CFG 7.5, 512², N(0, I) on 8 channels)."""
        if height % 8 or width % 8 or height < 8 or width < 8:
            raise ValueError(f"height and width must be positive multiples of 8, got {height}×{width}.")
        cond, uncond = self._prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance_scale)
        shape = (cond.shape[0], 2 * self.model.latent_channels, height // 8, width // 8)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} for {width}×{height} px.")
        latents = latents.to(self.device, self.dtype)
        z = ddim_generate(
            self.model,
            self.make_scheduler(),
            latents,
            cond,
            uncond,
            guidance_scale,
            num_inference_steps,
            None,
            callback,
        )
        return self.decode(z)

    @torch.no_grad()
    def inpaint(
        self,
        prompt: str | list[str] | None = None,
        image: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        mask_rgb: torch.Tensor | None = None,
        mask_depth: torch.Tensor | None = None,
        preset: str = "custom",
        strength: float = 1.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | None = None,
        depth_near_white: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> JointNetOutput:
        """Channel-wise inpainting: ``rgb2j`` (image → depth), ``j2rgb`` (depth → image), or ``custom`` free masks.

        ``image`` [B,3,H,W] and ``depth`` [B,1|3,H,W] are in [0, 1] (depth: disparity, near = bright unless
        ``depth_near_white=False``); masks [B,1,H,W]/[B,H,W] in [0, 1], 1 = generate. A missing input counts as
        black, as the official presets use. On a generation model (no masked-latent conv) this runs the RePaint
        blend alone, as the official pipeline does (documented fallback; a warning is logged).

        ``image_latents`` [B,8,h,w] (model space, RGB then depth) replace the VAE encoding of the inputs.
        ``noise`` [B,8,h,w] replaces the one noise tensor (the start at strength 1, else ``add_noise(inputs, noise,
        t_0)``, and the re-noising of the kept channels). ``latents`` is the official pipeline's ``latents``
        argument: the same tensor as noise, but the run starts from it at any strength. Random draws from
        ``generator`` in the official order: image posterior, depth posterior, then noise.
        """
        # 1. Inputs and masks at pixel size.
        if preset not in MODES:
            raise ValueError(f"preset must be one of {MODES}, got {preset!r}.")
        if noise is not None and latents is not None:
            raise ValueError("Give `noise` or `latents` (the official argument), not both.")
        ref = image if image is not None else depth
        if ref is None and image_latents is None:
            raise ValueError("Give `image` (for rgb2j / editing) and/or `depth` (for j2rgb / editing).")
        if ref is not None and ref.ndim != 4:
            raise ValueError(f"image/depth must be [B,C,H,W] tensors in [0, 1], got shape {tuple(ref.shape)}.")
        for name, x in (("image", image), ("depth", depth)):
            if x is not None:
                check_finite(check_not_empty(x, name, "BCHW"), name, "BCHW")
        if image_latents is not None:
            check_joint_latent(image_latents, self.model.latent_channels, "image_latents")
            check_finite(image_latents, "image_latents", "BChw")
            b, size = image_latents.shape[0], (8 * image_latents.shape[-2], 8 * image_latents.shape[-1])
            if ref is not None and tuple(ref.shape[-2:]) != size:
                raise ValueError(
                    f"image_latents are for {size[1]}×{size[0]} px but the inputs are {ref.shape[-1]}×"
                    f"{ref.shape[-2]} px; give latents of the inputs' size / 8."
                )
        else:
            b, size = ref.shape[0], tuple(ref.shape[-2:])
        if size[0] % 8 or size[1] % 8:
            raise ValueError(f"The inputs are {size[1]}×{size[0]} px; both sides must be multiples of 8.")
        if preset == "custom":
            if mask_rgb is None or mask_depth is None:
                raise ValueError("preset 'custom' needs both `mask_rgb` and `mask_depth` (1 = generate, 0 = keep).")
            mask_rgb, mask_depth = as_mask(mask_rgb, "mask_rgb"), as_mask(mask_depth, "mask_depth")
        else:
            mask_rgb, mask_depth = preset_masks(preset, b, size)
        for name, m in (("mask_rgb", mask_rgb), ("mask_depth", mask_depth)):
            check_mask_size(m, size, name, "the input image")
        for name, x, m in (("image", image, mask_rgb), ("depth", depth, mask_depth)):
            if x is not None:
                check_mask_size(x, size, name, "the other input")
            elif image_latents is None and (binarize(m) < 1).any():
                raise ValueError(f"`{name}` is missing but its mask keeps some of it; give `{name}` or mask it all.")
        # 2. Latents of the full inputs (posterior samples, image first), then the one noise tensor.
        if image_latents is None:
            pix_rgb = torch.full((b, 3, *size), -1.0) if image is None else image.float().clamp(0, 1) * 2 - 1
            pix_depth = (
                torch.full((b, 3, *size), -1.0)
                if depth is None
                else depth_image_to_model_input(depth, depth_near_white)
            )
            z_rgb, z_depth = self.encode_image(pix_rgb, generator), self.encode_image(pix_depth, generator)
        else:
            image_latents = image_latents.to(self.device, self.dtype)
            z_rgb, z_depth = image_latents.chunk(2, dim=1)
        init = torch.cat([z_rgb, z_depth], dim=1)  # [B,8,h,w]
        given = noise if noise is not None else latents
        if given is None:
            given = torch.randn(init.shape, generator=generator, dtype=torch.float32)
        elif tuple(given.shape) != tuple(init.shape):
            name = "noise" if noise is not None else "latents"
            raise ValueError(
                f"{name} has shape {tuple(given.shape)}; expected {tuple(init.shape)} like the inputs' latents."
            )
        noise_t = given.to(self.device, self.dtype)
        # 3. Latent masks, channel mask and the inpainting model's masked-latent input.
        lat = tuple(init.shape[-2:])
        m_rgb, m_depth = latent_mask(mask_rgb, lat).to(init), latent_mask(mask_depth, lat).to(init)
        cmask = channel_mask(m_rgb, m_depth, self.model.latent_channels)  # [B,8,h,w]
        masked = None
        if self.model.has_masked_latent_input:
            masked = masked_condition(m_rgb, z_rgb, m_depth, z_depth)  # [B,10,h,w]
        else:
            logger.warning(
                "JointNet: this is the generation model (no masked-latent conv); inpainting runs the RePaint blend "
                "alone, as the official pipeline does. rgbd_inpaint_sd21b gives better image->depth / depth->image."
            )
        cond, uncond = self._prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance_scale)
        # 4. Denoise with the blend after every step, then decode.
        z = ddim_inpaint(
            self.model,
            self.make_scheduler(),
            init,
            cmask,
            noise_t,
            cond,
            uncond,
            guidance_scale,
            num_inference_steps,
            strength,
            masked,
            callback,
            start_from_noise=latents is not None,
        )
        return self.decode(z)
