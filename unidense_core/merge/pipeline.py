"""Standalone MERGE-B on diffusers models: depth estimation and generation with one PixArt-α (official defaults).

Depth follows the official ``MERGEPixArtPipeline.merge_process``: resolution binning, image latent sampled from the
VAE posterior, DPM-Solver++ (2M) for 20 steps from N(0, I), empty prompt, no CFG, bilinear resize back, mean of
the decoded channels. Generation is diffusers' stock ``PixArtAlphaPipeline`` on the same transformer object.
Nothing is ever downloaded: every component comes from local folders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..dense.outputs import AFFINE_DEPTH, DenseOutput
from ..dense.readout import decoded_to_unit, merge_depth_from_unit
from ..io.checkpoints import (
    TRANSFORMERS_WEIGHTS,
    require_model_folder,
    require_tokenizer_folder,
    scheduler_config,
)
from ..io.prompt_embeddings import load_prompt_embedding
from ..io.resolution import classify_bin
from .converters import MergeConverters, load_converters
from .forward import MergePixArtTransformer

# PixArt-XL-2-512x512 scheduler/scheduler_config.json (used when a folder has none).
PIXART_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    algorithm_type="dpmsolver++",
    solver_order=2,
    solver_type="midpoint",
    lower_order_final=True,
    timestep_spacing="linspace",
    steps_offset=0,
    use_karras_sigmas=False,
)
PIXART_FOLDER_HINT = (
    "Expected a local diffusers folder of 'PixArt-alpha/PixArt-XL-2-512x512' (huggingface.co/PixArt-alpha/"
    "PixArt-XL-2-512x512, downloaded as a whole) with transformer/, vae/ and scheduler/; text_encoder/ and "
    "tokenizer/ (T5-XXL) only to encode prompts."
)
MAX_TOKENS = 120  # PixArt-α's T5 sequence length
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, timestep, latents)


@dataclass
class MergePipeline:
    """One PixArt-α with MERGE converters: ``estimate_depth`` (converters on) and ``generate`` (stock model)."""

    transformer: nn.Module
    converters: MergeConverters
    vae: nn.Module
    scheduler_config: dict = field(default_factory=lambda: dict(PIXART_SCHEDULER))
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    empty_prompt: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __post_init__(self) -> None:
        self.model = MergePixArtTransformer(self.transformer, self.converters)

    @classmethod
    def from_folders(
        cls,
        pixart_dir: str,
        converters_path: str,
        empty_prompt_path: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        load_text_encoder: bool = False,
    ) -> MergePipeline:
        """Load from local folders only (``local_files_only=True``); errors name the missing part."""
        from diffusers import AutoencoderKL, PixArtTransformer2DModel

        def sub(name: str) -> str:
            return require_model_folder(pixart_dir, name, PIXART_FOLDER_HINT)

        # Every file is checked before anything heavy is loaded, so a missing one fails in a second.
        transformer_dir, vae_dir = sub("transformer"), sub("vae")
        if load_text_encoder:
            te_dir = require_model_folder(pixart_dir, "text_encoder", PIXART_FOLDER_HINT, TRANSFORMERS_WEIGHTS)
            tok_dir = require_tokenizer_folder(pixart_dir, "tokenizer", PIXART_FOLDER_HINT)
        empty = None
        if empty_prompt_path is not None:
            ctx, mask, _ = load_prompt_embedding(empty_prompt_path)
            empty = (ctx.to(device, dtype), mask)
        conv = load_converters(converters_path, device=device, dtype=dtype)
        transformer = PixArtTransformer2DModel.from_pretrained(
            transformer_dir, torch_dtype=dtype, local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, local_files_only=True)
        sched = scheduler_config(pixart_dir, PIXART_SCHEDULER)
        text_encoder = tokenizer = None
        if load_text_encoder:
            from transformers import T5EncoderModel, T5Tokenizer

            text_encoder = T5EncoderModel.from_pretrained(te_dir, torch_dtype=dtype, local_files_only=True)
            tokenizer = T5Tokenizer.from_pretrained(tok_dir, local_files_only=True)
        return cls(
            transformer.to(device).eval(),
            conv,
            vae.to(device).eval(),
            sched,
            None if text_encoder is None else text_encoder.to(device).eval(),
            tokenizer,
            empty,
        )

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 embedding padded to 120 tokens with its mask, as PixArt-α's pipeline (``clean_caption`` not applied)."""
        if prompt == "" and self.empty_prompt is not None:
            ctx, mask = self.empty_prompt
            return ctx, (torch.ones(ctx.shape[:2], dtype=torch.int64) if mask is None else mask).to(ctx.device)
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                f"Encoding the prompt {prompt!r} needs the T5 text encoder: build the pipeline with "
                "load_text_encoder=True (for the empty prompt, a saved embedding also works: `empty_prompt_path`, "
                "written by save_prompt_embedding or the ComfyUI node)."
            )
        tok = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = tok.attention_mask.to(self.device)
        ctx = self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]
        return ctx.to(self.dtype), mask

    def make_scheduler(self):
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def estimate_depth(
        self,
        image=None,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        resolution_binning: bool = True,
        posterior: str = "sample",
        callback: StepCallback | None = None,
    ) -> DenseOutput:
        """MERGE depth (official ``merge_process``): ``depth`` [B,H,W] in [0, 1], 0 = near, affine-invariant.

        ``image``: a PIL image or a [B,3,H,W] tensor in [0, 1]. ``image_latents`` [B,4,h,w] (model space, × the VAE
        factor) replace the VAE encoding of the image at the processing size; then ``image`` only gives the size to
        resize back to (it may be None: the output keeps the latent's size × 8). ``latents`` [B,4,h,w] replace the
        starting noise N(0, I). Random draws from ``generator`` in the official order: posterior sample, then noise.
        """
        from diffusers.image_processor import VaeImageProcessor

        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' (official) or 'mode', got {posterior!r}.")
        if image is None and image_latents is None:
            raise ValueError("Give `image` (PIL image or [B,3,H,W] tensor in [0, 1]) or `image_latents`.")
        # 1. Size: the nearest PixArt-α 512 bin, or the image's own size (multiple of 16).
        if image is None:
            orig_h, orig_w = (8 * s for s in image_latents.shape[-2:])
        elif isinstance(image, torch.Tensor):
            orig_h, orig_w = image.shape[-2:]
        else:
            orig_w, orig_h = image.size
        h, w = classify_bin(orig_h, orig_w) if resolution_binning and image is not None else (orig_h, orig_w)
        if h % 16 or w % 16:
            raise ValueError(f"Image size {orig_w}×{orig_h} is not a multiple of 16; use resolution_binning=True.")
        # 2. Image latent (the official pipeline samples the posterior) and the starting noise.
        sf = self.vae.config.scaling_factor
        if image_latents is None:
            x = VaeImageProcessor(vae_scale_factor=8).preprocess(image, height=h, width=w)  # [B,3,h,w] in [-1,1]
            dist = self.vae.encode(x.to(self.device, self.dtype)).latent_dist
            z_img = (dist.sample(generator) if posterior == "sample" else dist.mode()) * sf  # [B,4,h/8,w/8]
        else:
            z_img = _check_latents(image_latents, (h // 8, w // 8), "image_latents").to(self.device, self.dtype)
        if latents is None:
            latents = torch.randn(z_img.shape, generator=generator, dtype=torch.float32)
        z = _check_latents(latents, tuple(z_img.shape[-2:]), "latents", z_img.shape[0]).to(self.device, self.dtype)
        ctx, mask = self.encode_prompt("")
        ctx, mask = ctx.expand(z.shape[0], -1, -1), mask.expand(z.shape[0], -1)
        # 3. DPM-Solver++ on ε from the converters' head (first 4 of 8 channels).
        scheduler = self.make_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        for i, t in enumerate(scheduler.timesteps):
            eps = self.model(z, t.expand(z.shape[0]), ctx, mask, mode="depth", image_latent=z_img)[:, :4]
            z = scheduler.step(eps, t, z).prev_sample  # the last step lands on σ = 0, i.e. the x0 prediction
            if callback is not None:
                callback(i, t, z)
        # 4. Decode, resize back, clamp, mean of the 3 channels.
        decoded = self.vae.decode(z / sf).sample.float()  # [B,3,h,w] in ~[-1,1]
        if (h, w) != (orig_h, orig_w):
            decoded = F.interpolate(decoded, size=(orig_h, orig_w), mode="bilinear", align_corners=False)
        depth = merge_depth_from_unit(decoded_to_unit(decoded))  # [B,H,W]
        return DenseOutput(depth=depth, depth_kind=AFFINE_DEPTH, latents=z)

    @torch.no_grad()
    def generate(
        self,
        prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        resolution_binning: bool = True,
        callback: StepCallback | None = None,
    ) -> DenseOutput:
        """Text-to-image with the untouched PixArt (diffusers' PixArtAlphaPipeline): ``image`` [B,3,H,W] in [0, 1].

        ``latents`` [B,4,h,w] replace the starting noise (at the binned size when ``resolution_binning``)."""
        from diffusers import PixArtAlphaPipeline

        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("Give `prompt` (needs the text encoder) or `prompt_embeds`.")
            prompt_embeds, prompt_mask = self.encode_prompt(prompt)
        neg, neg_mask = self.encode_prompt("") if guidance_scale > 1 else (None, None)
        if prompt_mask is None:
            prompt_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.int64, device=prompt_embeds.device)
        pipe = PixArtAlphaPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            transformer=self.transformer,
            scheduler=self.make_scheduler(),
        )
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            prompt=None,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_mask,
            negative_prompt=None,
            negative_prompt_embeds=neg,
            negative_prompt_attention_mask=neg_mask,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=None if latents is None else latents.to(self.device, self.dtype),
            output_type="pt",
            use_resolution_binning=resolution_binning,
            callback=callback,
        )
        return DenseOutput(image=out.images.float())


def _check_latents(
    latents: torch.Tensor, size: tuple[int, int], name: str, batch: int | None = None, channels: int = 4
) -> torch.Tensor:
    """A [B,C,h,w] latent of the expected size; otherwise an error naming ``name`` and the size to use."""
    want = f"[{'B' if batch is None else batch},{channels},{size[0]},{size[1]}]"
    ok = latents.ndim == 4 and latents.shape[1] == channels and tuple(latents.shape[-2:]) == tuple(size)
    if not ok or (batch is not None and latents.shape[0] != batch):
        raise ValueError(f"{name} has shape {tuple(latents.shape)}, expected {want} (the image's processing size / 8).")
    return latents
