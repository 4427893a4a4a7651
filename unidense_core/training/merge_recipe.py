"""MERGE-B training recipe: converters on a frozen PixArt-α 512 (official ``train_merge_base_depth.py``)."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from ..io.checkpoints import require_subfolder, scheduler_config
from ..io.prompt_embeddings import load_prompt_embedding, save_prompt_embedding
from ..merge.converters import MergeConverters, load_converters, save_converters
from ..merge.forward import DiffusersPixArtHost, check_compatible
from ..merge.pipeline import MAX_TOKENS, PIXART_FOLDER_HINT, PIXART_SCHEDULER, MergePipeline
from ..merge.train import (
    annealed_strength,
    init_converters_from_base,
    latent_valid_mask,
    merge_training_loss,
    multi_res_noise,
)
from .data import generator, mix_seed, quantile_normalize
from .recipe import OfficialSettings, Recipe, encode_latents, sample_timesteps


def alphas_cumprod_from(config: dict) -> torch.Tensor:
    """ᾱ of the folder's scheduler config read as a DDPM schedule (official: DDPMScheduler.from_pretrained)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.float()


class MergeTrainStep(nn.Module):
    """Frozen PixArt + trainable converters; ``forward(**inputs)`` is the official masked ε loss."""

    def __init__(self, transformer: nn.Module, converters: MergeConverters, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.transformer = transformer
        self.converters = converters
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.gradient_checkpointing = False

    def forward(self, image_latent, depth_latent, timesteps, noise, context, context_mask, valid_latent):
        return merge_training_loss(
            DiffusersPixArtHost(self.transformer),
            self.converters,
            image_latent,
            depth_latent,
            timesteps,
            noise,
            self.alphas_cumprod,
            context,
            context_mask,
            valid_latent,
            self.gradient_checkpointing,
        )


class MergeRecipe(Recipe):
    """MERGE-B: ε-prediction, annealed multi-resolution noise, validity-masked loss, empty prompt (spec §1.4)."""

    name = "merge"
    official = OfficialSettings(
        learning_rate=1e-4,
        lr_scheduler="linear",
        lr_warmup_steps=500,
        batch_size=4,
        processes=8,
        gradient_accumulation=1,
        max_steps=30_000,
        mixed_precision="fp16",
        notes="train_scripts/train_merge_b_depth.sh: 8 GPUs x batch 4 = 32; Hypersim 0.9 / Virtual KITTI 0.1.",
    )
    prediction_kind = "depth"
    inference_steps = 20
    size_multiple = 16  # VAE factor 8 × patch 2
    result_name = "depth_converters"

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        empty_prompt: tuple[torch.Tensor, torch.Tensor | None],
        scheduler: dict | None = None,
        converters: MergeConverters | None = None,
        multi_res: bool = True,
    ):
        self.transformer = transformer.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.scheduler_config = dict(scheduler or PIXART_SCHEDULER)
        self.context, self.context_mask = empty_prompt
        if self.context_mask is None:
            self.context_mask = torch.ones(self.context.shape[:2], dtype=torch.int64)
        self.converters = converters if converters is not None else init_converters_from_base(transformer)
        check_compatible(DiffusersPixArtHost(transformer), self.converters)
        self.converters.requires_grad_(True).train()
        self.multi_res = multi_res
        self.alphas_cumprod = alphas_cumprod_from(self.scheduler_config)
        self.module = MergeTrainStep(self.transformer, self.converters, self.alphas_cumprod)

    @classmethod
    def from_folders(
        cls,
        pixart_dir: str,
        empty_prompt_path: str | None = None,
        init_converters: str | None = None,
        save_empty_prompt: str | None = None,
        multi_res: bool = True,
    ) -> MergeRecipe:
        """Load PixArt-α (transformer, VAE, scheduler; T5 only if no saved empty prompt) from a local folder."""
        from diffusers import AutoencoderKL, PixArtTransformer2DModel

        def sub(name: str) -> str:
            return require_subfolder(pixart_dir, name, PIXART_FOLDER_HINT)

        transformer = PixArtTransformer2DModel.from_pretrained(sub("transformer"), local_files_only=True)
        vae = AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True)
        if empty_prompt_path is not None:
            ctx, mask, _ = load_prompt_embedding(empty_prompt_path)
        else:
            ctx, mask = encode_empty_t5(sub("text_encoder"), sub("tokenizer"))
            if save_empty_prompt:
                save_prompt_embedding(save_empty_prompt, ctx, mask, prompt="", encoder="t5 (PixArt-α)")
        conv = load_converters(init_converters) if init_converters else None
        return cls(transformer, vae, (ctx, mask), scheduler_config(pixart_dir, PIXART_SCHEDULER), conv, multi_res)

    def target(self, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return quantile_normalize(depth, valid)

    def frozen(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer, "vae": self.vae}

    def enable_gradient_checkpointing(self) -> None:
        self.module.gradient_checkpointing = True

    def inputs(self, batch: dict, device: torch.device) -> dict[str, Any]:
        dtype = next(self.transformer.parameters()).dtype
        seeds = batch["seed"]
        rgb = batch["rgb"].to(device, dtype)  # [B,3,H,W]
        target = batch["target"].to(device, dtype).repeat(1, 3, 1, 1)  # [B,3,H,W] depth replicated
        z_img = encode_latents(self.vae, rgb, seeds, stream=1)  # [B,4,h,w]
        z_depth = encode_latents(self.vae, target, seeds, stream=2)
        t = sample_timesteps(seeds, 3, len(self.alphas_cumprod), device)
        shape = tuple(z_depth.shape[1:])
        noise = torch.stack(
            [
                multi_res_noise(shape, annealed_strength(int(ti), len(self.alphas_cumprod)), generator(mix_seed(s, 4)))
                if self.multi_res
                else torch.randn(shape, generator=generator(mix_seed(s, 4)))
                for s, ti in zip(seeds, t.tolist(), strict=True)
            ]
        ).to(device, dtype)
        factor = rgb.shape[-1] // z_img.shape[-1]
        b = rgb.shape[0]
        return dict(
            image_latent=z_img,
            depth_latent=z_depth,
            timesteps=t,
            noise=noise,
            context=self.context.to(device, dtype).expand(b, -1, -1),
            context_mask=self.context_mask.to(device).expand(b, -1),
            valid_latent=latent_valid_mask(batch["valid"].to(device), factor),
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        pipe = MergePipeline(
            self.transformer,
            self.converters,
            self.vae,
            self.scheduler_config,
            empty_prompt=(self.context, self.context_mask),
        )
        g = torch.Generator().manual_seed(seed)
        return pipe.estimate_depth(images, steps, generator=g, resolution_binning=False).depth

    def save(self, folder: str) -> str:
        conv = copy.deepcopy(self.converters).to("cpu", torch.float32)
        path = os.path.join(folder, self.result_name)
        save_converters(conv, path)
        return path

    def describe(self) -> dict[str, Any]:
        return {"multi_res_noise": self.multi_res, "converter_layers": self.converters.config.num_layers}


def encode_empty_t5(text_encoder_dir: str, tokenizer_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 embedding of "" padded to 120 tokens with its mask (official ``empty_captions_tokenize``)."""
    from transformers import T5EncoderModel, T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    encoder = T5EncoderModel.from_pretrained(text_encoder_dir, local_files_only=True).eval()
    tok = tokenizer("", max_length=MAX_TOKENS, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        ctx = encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
    return ctx, tok.attention_mask
