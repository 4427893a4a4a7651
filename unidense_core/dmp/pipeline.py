"""Standalone DMP on diffusers models (Lee et al., CVPR 2024): depth, normals and image tasks from SD 1.4 + a task LoRA.

Follows the official ``Pipeline.__call__`` (shinying/dmp ``pipeline.py``, commit 69b4b18): the image in [−1, 1] is
resized so its shorter side is 512 (torchvision's bicubic ``resize(img, 512)``: the longer side ``int(512·long/short)``,
no antialiasing, as torchvision 0.13 did on tensors), encoded with ``latent_dist.sample()``·0.18215, then 5 DDIM steps
in v-prediction start from that image latent without noise (t = 801, 601, 401, 201, 1). ``-notext`` checkpoints use the
empty prompt without guidance; captioned ones a caption with CFG 2 (batch order [cond, uncond], uncond = the empty
prompt). The prediction latent is decoded and read out per task and resized back to the input size (bicubic).
Nothing is ever downloaded: every component comes from local folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..dense.ensemble import (
    check_reduction,
    ensemble_normals,
    ensemble_scalar,
    repeat_members,
    split_members,
    unflip_members,
)
from ..dense.outputs import METRIC_DEPTH, RELATIVE_DEPTH, DenseOutput
from ..dense.readout import decoded_to_unit, dmp_normals, normalize_depth, normals_to_image
from ..dense.video import SEQUENCE_DEPTH, blend_start, run_video
from ..io.checkpoints import (
    TRANSFORMERS_WEIGHTS,
    CheckpointError,
    require_model_folder,
    require_tokenizer_folder,
)
from ..io.checks import check_choice, check_finite, check_not_empty
from ..io.prompt_embeddings import load_clip_text_encoder, load_prompt_embedding
from .lora import apply_lora_peft, load_lora
from .sampler import DEFAULT_STEPS, OFFICIAL_GUIDANCE, check_steps, check_variant, sample_dmp, unet_velocity_fn

TTA = ("none", "hflip")  # test-time augmentation (DMP is deterministic: members differ by a mirror, not by noise)
TASKS = ("depth", "normals", "image")  # image: albedo, shading, segmentation colours (official target_mode 'RGB')
PROCESSING_RESOLUTION = 512  # official __call__: the shorter side becomes 512
SD14_FOLDER_HINT = (
    "Expected a local diffusers folder of 'CompVis/stable-diffusion-v1-4' (huggingface.co/CompVis/"
    "stable-diffusion-v1-4, downloaded as a whole) with unet/, vae/, text_encoder/ and tokenizer/."
)
LORA_HINT = (
    "DMP checkpoints are folders (e.g. depth-hypersim-notext/ holding pytorch_lora_weights.safetensors or .bin) from "
    "the Google Drive folder linked in the README of github.com/shinying/dmp; pass such a folder unchanged."
)
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step index, timestep, latents [B,4,h,w])


def official_size(height: int, width: int, resolution: int = PROCESSING_RESOLUTION) -> tuple[int, int]:
    """torchvision ``resize(img, resolution)``: shorter side -> ``resolution``, longer -> ``int(resolution·long/short)``
    (truncated, so not always a multiple of 8; the VAE and UNet cope, as in the official run); 0 keeps the size."""
    if resolution < 0:
        raise ValueError(f"processing_resolution must be ≥ 0 (0 = native size), got {resolution}.")
    if resolution == 0:
        return height, width
    if width <= height:
        return int(resolution * height / width), resolution
    return resolution, int(resolution * width / height)


def resize_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,C,H,W] bicubic resize as torchvision 0.13 on tensors (align_corners False, no antialias, no clamp)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=False)


def to_model_input(image) -> torch.Tensor:
    """A PIL image or a [B,3,H,W] tensor in [0, 1] -> [B,3,H,W] float in [−1, 1] (official ``to_tensor``, normalize)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B,3,H,W] in [0, 1], got shape {tuple(image.shape)}.")
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError("image values must be in [0, 1].")
        return image.float() * 2 - 1
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H,W,3]
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1


@dataclass
class DMPPipeline:
    """SD 1.4 (UNet with the task LoRA applied, VAE, CLIP text encoder) running DMP's deterministic sampler."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    empty_prompt: torch.Tensor | None = None  # [1,77,768] CLIP embedding of "" (official uncond_embeds)

    @classmethod
    def from_folders(
        cls,
        sd14_dir: str,
        lora_path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        load_text_encoder: bool = True,
        empty_prompt_path: str | None = None,
        lora_strength: float = 1.0,
    ) -> DMPPipeline:
        """SD 1.4 from a local diffusers folder and the LoRA from an official checkpoint folder (offline only)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        # Every file is checked before anything heavy is loaded, so a missing one fails in a second.
        unet_dir = require_model_folder(sd14_dir, "unet", SD14_FOLDER_HINT)
        vae_dir = require_model_folder(sd14_dir, "vae", SD14_FOLDER_HINT)
        if load_text_encoder:
            te_dir = require_model_folder(sd14_dir, "text_encoder", SD14_FOLDER_HINT, TRANSFORMERS_WEIGHTS)
            tok_dir = require_tokenizer_folder(sd14_dir, "tokenizer", SD14_FOLDER_HINT)
        elif empty_prompt_path is None:
            raise ValueError("Without the text encoder, pass `empty_prompt_path` (the empty prompt's CLIP embedding).")
        if not os.path.exists(lora_path):
            raise CheckpointError(f"DMP LoRA not found: '{lora_path}'. {LORA_HINT}")
        lora = load_lora(lora_path)
        empty = None
        if empty_prompt_path is not None:
            empty = load_prompt_embedding(empty_prompt_path)[0].to(device, dtype)
        unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=dtype, local_files_only=True)
        unet = apply_lora_peft(unet, lora, lora_strength).to(device).eval()
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, local_files_only=True).to(device).eval()
        text_encoder = tokenizer = None
        if load_text_encoder:
            text_encoder, tokenizer = load_clip_text_encoder(te_dir, tok_dir, device, dtype)
        return cls(unet, vae, text_encoder, tokenizer, empty)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """CLIP last hidden state [B,77,768], padded to 77 tokens without attention mask (official)."""
        if prompt == "" and self.empty_prompt is not None:
            return self.empty_prompt
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("Encoding a prompt needs the SD 1.4 text encoder: build with load_text_encoder=True.")
        ids = self.tokenizer(
            [prompt] if isinstance(prompt, str) else prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = self.text_encoder(ids.to(self.device))[0].to(self.dtype)
        if prompt == "":
            self.empty_prompt = out
        return out

    @torch.no_grad()
    def encode_image(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None, posterior: str = "sample"
    ) -> torch.Tensor:
        """[B,3,H,W] in [−1, 1] -> z_x = 0.18215·E(x), a posterior sample (official ``latent_dist.sample()``) or, with
        ``posterior="mode"``, its mean (ComfyUI's VAEEncode; no per-frame sampling noise in video)."""
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        z = dist.sample(generator) if posterior == "sample" else dist.mode()
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        task: str = "depth",
        num_inference_steps: int = DEFAULT_STEPS,
        variant: str = "standard",
        prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        guidance_scale: float = OFFICIAL_GUIDANCE,
        processing_resolution: int = PROCESSING_RESOLUTION,
        resize_back: bool = True,
        target_scale: float = 0.0,
        generator: torch.Generator | None = None,
        image_latents: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        tta: str = "none",
        ensemble_reduction: str = "median",
    ) -> DenseOutput:
        """DMP prediction for ``task`` ("depth", "normals" or "image") with the official defaults.

        ``image``: PIL image or [B,3,H,W] tensor in [0, 1]. ``image_latents`` [B,4,h,w] (model space) replace its
        encoding; they are also the sampler's start, so they fix the whole run (the posterior sample is DMP's only
        randomness, drawn from ``generator``). No ``prompt``/``prompt_embeds``: the empty prompt without guidance
        (``-notext`` checkpoints). With a caption: CFG ``guidance_scale`` (official 2) against the empty prompt.
        Depth: ``target_scale`` > 0 gives metres (× the checkpoint's scale, 8 for the bedroom model), 0 min-max
        normalises each image after resizing back (as the official demo). Normals: unit vectors plus the normal map
        image; image tasks: the prediction image in [0, 1].
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        check_steps(num_inference_steps)
        check_variant(variant)
        if target_scale < 0:
            raise ValueError(f"target_scale must be ≥ 0 (0 = min-max per image), got {target_scale}.")
        if image is None and image_latents is None:
            raise ValueError("Give `image` (PIL image or [B,3,H,W] tensor in [0, 1]) or `image_latents`.")
        check_choice(tta, "tta", TTA)
        check_reduction(ensemble_reduction, "ensemble_reduction")
        if tta != "none" and task == "image":
            raise ValueError(
                "tta mirrors depth and normals; image tasks (albedo, shading, segmentation) take tta 'none'."
            )
        members = 2 if tta == "hflip" else 1
        # 1. Image latent at the processing size (shorter side 512, bicubic), sampled from the posterior.
        size = None
        if image is not None:
            x = to_model_input(image)  # [B,3,H,W] in [-1,1]
            size = tuple(x.shape[-2:])
        if image_latents is None:
            x = resize_bicubic(x, official_size(*size, processing_resolution))
            x = repeat_members(x, members, "hflip")  # [N·B,3,h,w]: the image, then its mirror (with tta)
            z_x = self.encode_image(x, generator)  # [N·B,4,h,w]
        else:
            if image_latents.ndim != 4 or image_latents.shape[1] != 4:
                raise ValueError(f"image_latents must be [B,4,h,w], got shape {tuple(image_latents.shape)}.")
            z_x = repeat_members(image_latents.to(self.device, self.dtype), members, "hflip")
        # 2. Prompts: empty prompt without CFG (notext), or caption + CFG against the empty prompt.
        if prompt is None and prompt_embeds is None:
            fn = unet_velocity_fn(self.unet, self.encode_prompt(""))
        else:
            cond = (
                prompt_embeds.to(self.device, self.dtype) if prompt_embeds is not None else self.encode_prompt(prompt)
            )
            uncond = negative_prompt_embeds if negative_prompt_embeds is not None else self.encode_prompt("")
            fn = unet_velocity_fn(self.unet, cond, uncond.to(self.device, self.dtype), guidance_scale)
        # 3. The deterministic sampler from the image latent (no noise).
        step_cb = None if callback is None else (lambda d: callback(d["i"], d["t"], d["x"]))
        z = sample_dmp(fn, z_x, num_inference_steps, variant, step_cb)  # [B,4,h,w]
        # 4. Decode, read out per task, resize back (bicubic).
        decoded = self.vae.decode(z / self.vae.config.scaling_factor).sample.float()  # [B,3,h',w'] in ~[-1,1]
        back = size if resize_back and size is not None else tuple(decoded.shape[-2:])
        if task == "depth":
            raw = (decoded.mean(dim=1) / 2 + 0.5).clamp(min=0)  # official target_mode 'F'
            raw = resize_bicubic(raw[:, None], back)[:, 0]  # [N·B,H,W]
            unc = None
            if members > 1:
                align = "none" if target_scale > 0 else "scale_shift"  # metric depth is never rescaled
                ens = ensemble_scalar(unflip_members(split_members(raw, 2), tta), None, align, ensemble_reduction)
                raw, unc = ens.values, ens.uncertainty
            if target_scale > 0:
                unc = None if unc is None else unc * target_scale
                return DenseOutput(raw * target_scale, METRIC_DEPTH, target_scale, latents=z, uncertainty=unc)
            lo, hi = raw.amin(dim=(1, 2), keepdim=True), raw.amax(dim=(1, 2), keepdim=True)
            unc = None if unc is None else unc / (hi - lo).clamp_min(1e-8)  # the read-out's per-image range
            return DenseOutput(normalize_depth(raw, "per_image"), RELATIVE_DEPTH, latents=z, uncertainty=unc)
        unit = resize_bicubic(decoded_to_unit(decoded), back).clamp(0, 1)  # [N·B,3,H,W], official target_mode 'RGB'
        if task == "image":
            return DenseOutput(image=unit, latents=z)
        normals = dmp_normals(unit)  # [N·B,3,H,W]
        if members == 1:
            return DenseOutput(image=unit, normals=normals, latents=z)
        members_n = unflip_members(split_members(normals.permute(0, 2, 3, 1), 2), tta, normals=True)
        ens = ensemble_normals(members_n, None, ensemble_reduction)  # [B,H,W,3]
        normals = ens.values.permute(0, 3, 1, 2)
        return DenseOutput(image=normals_to_image(normals), normals=normals, latents=z, uncertainty=ens.uncertainty)

    @torch.no_grad()
    def video_depth(
        self,
        frames: torch.Tensor,
        chunk_size: int = 8,
        latent_blend: float = 0.0,
        align: str = "none",
        num_inference_steps: int = DEFAULT_STEPS,
        prompt_embeds: torch.Tensor | None = None,
        processing_resolution: int = PROCESSING_RESOLUTION,
        progress: Callable[[int, int], None] | None = None,
    ) -> DenseOutput:
        """DMP depth of a video ``frames`` [T,3,H,W] in [0, 1], ``chunk_size`` frames per batch (``dense.video``).

        Each frame as the official call (resize, 5 steps, empty prompt or ``prompt_embeds`` without guidance) with
        the posterior mean as z_x, so the run is deterministic, and the raw read-out (mean/2 + 0.5, ≥ 0, bicubic back)
        without per-frame min-max. ``latent_blend`` β starts frame t from (1 − β)·z_x + β·ẑ (the previous chunk's last
        prediction latent); ``align`` puts every frame on one scale. Returns ``depth`` [T,H,W] (SEQUENCE_DEPTH).
        """
        check_steps(num_inference_steps)
        _check_frames(frames)
        cond = self.encode_prompt("") if prompt_embeds is None else prompt_embeds.to(self.device, self.dtype)
        fn = unet_velocity_fn(self.unet, cond)
        size = tuple(frames.shape[-2:])
        sf = self.vae.config.scaling_factor

        def estimate(first: int, stop: int, previous: torch.Tensor | None):
            x = resize_bicubic(to_model_input(frames[first:stop]), official_size(*size, processing_resolution))
            z_x = self.encode_image(x, posterior="mode")  # [c,4,h,w]
            z = sample_dmp(fn, blend_start(z_x, previous, latent_blend), num_inference_steps, "standard")
            decoded = self.vae.decode(z / sf).sample.float()  # [c,3,h',w']
            raw = (decoded.mean(dim=1) / 2 + 0.5).clamp(min=0)  # official target_mode 'F', not normalised
            return resize_bicubic(raw[:, None], size)[:, 0], z

        result = run_video(len(frames), size, estimate, chunk_size, align, latent_blend, progress=progress)
        return DenseOutput(depth=result.depth, depth_kind=SEQUENCE_DEPTH)


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a [T,3,H,W] tensor in [0, 1], got {shape}.")
    check_not_empty(frames, "frames", "TCHW")
    check_finite(frames, "frames", "TCHW")
