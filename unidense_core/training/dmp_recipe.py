"""DMP training recipe: a rank-4 LoRA on a frozen SD 1.x UNet (official ``train.py`` + ``pipeline.py``)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..dmp.lora import apply_lora_peft, load_lora, save_lora_attn_procs
from ..dmp.sampler import SD14_BETA_END, SD14_BETA_START, SD14_NUM_TRAIN_TIMESTEPS
from ..dmp.train import (
    OFFICIAL_RANK,
    TARGET_SCALE,
    add_trainable_lora,
    dmp_training_loss,
    extract_lora,
    mark_lora_trainable,
    normalize_fixed_scale,
)
from ..io.checkpoints import require_subfolder, scheduler_config
from ..merge.train import latent_valid_mask
from .merge_recipe import alphas_cumprod_from
from .prompts import PromptBank, load_prompt_bank
from .recipe import OfficialSettings, Recipe, encode_latents, sample_timesteps

SD14_SCHEDULER = dict(
    num_train_timesteps=SD14_NUM_TRAIN_TIMESTEPS,
    beta_start=SD14_BETA_START,
    beta_end=SD14_BETA_END,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
)
SD14_FOLDER_HINT = (
    "Expected a local diffusers folder of 'CompVis/stable-diffusion-v1-4' with unet/, vae/ and scheduler/ "
    "(text_encoder/ and tokenizer/ unless --empty-prompt is given)."
)


class DMPTrainStep(nn.Module):
    """The SD UNet with the trainable LoRA inside; ``forward(**inputs)`` is the official v-prediction loss."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def forward(self, image_latent, target_latent, timesteps, context, valid_latent):
        return dmp_training_loss(
            self.unet, image_latent, target_latent, timesteps, self.alphas_cumprod, context, valid_latent
        )


class DMPRecipe(Recipe):
    """DMP: interpolation from the image latent, v-target, LoRA rank 4 on every attention (spec §3.2-3.3)."""

    name = "dmp"
    official = OfficialSettings(
        learning_rate=1e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=0,
        batch_size=8,
        processes=1,
        gradient_accumulation=1,
        max_steps=50_000,
        mixed_precision="fp16",
        notes="README 'Training': batch 8, 50k steps, cosine, no warm-up; GPU count not stated [?]; depth: "
        "--target_mode=F --target_scale=8 --random_flip.",
    )
    prediction_kind = "depth"
    inference_steps = 5
    size_multiple = 8
    result_name = "lora"

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        prompts: PromptBank,
        scheduler: dict | None = None,
        target_scale: float = TARGET_SCALE,
        rank: int = OFFICIAL_RANK,
        self_attn_only: bool = False,
        init_lora: str | None = None,
    ):
        self.vae = vae.requires_grad_(False).eval()
        self.prompts = prompts
        self.scheduler_config = dict(scheduler or SD14_SCHEDULER)
        self.target_scale, self.rank, self.self_attn_only = target_scale, rank, self_attn_only
        normalize_fixed_scale(torch.zeros(1, 1, 1), target_scale)  # checks the value up front
        if init_lora is not None:  # continue from a saved LoRA (official layout or peft)
            unet = apply_lora_peft(unet, load_lora(init_lora))
            mark_lora_trainable(unet)
        else:
            add_trainable_lora(unet, rank, self_attn_only)
        self.unet = unet.eval()
        self.alphas_cumprod = alphas_cumprod_from(self.scheduler_config)
        self.module = DMPTrainStep(self.unet, self.alphas_cumprod)

    @classmethod
    def from_folders(
        cls,
        sd_dir: str,
        empty_prompt_path: str | None = None,
        target_scale: float = TARGET_SCALE,
        rank: int = OFFICIAL_RANK,
        self_attn_only: bool = False,
        init_lora: str | None = None,
    ) -> DMPRecipe:
        """Load SD 1.4 (UNet, VAE, scheduler; CLIP unless a saved empty prompt is given) from a local folder."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        def sub(name: str) -> str:
            return require_subfolder(sd_dir, name, SD14_FOLDER_HINT)

        unet = UNet2DConditionModel.from_pretrained(sub("unet"), local_files_only=True)
        vae = AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True)
        prompts = load_prompt_bank(sd_dir, empty_prompt_path, SD14_FOLDER_HINT)
        sched = {**scheduler_config(sd_dir, SD14_SCHEDULER), "prediction_type": "v_prediction"}
        return cls(unet, vae, prompts, sched, target_scale, rank, self_attn_only, init_lora)

    def target(self, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return normalize_fixed_scale(depth, self.target_scale)

    def frozen(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae}

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def inputs(self, batch: dict, device: torch.device) -> dict[str, Any]:
        dtype = next(self.unet.parameters()).dtype
        seeds = batch["seed"]
        rgb = batch["rgb"].to(device, dtype)
        target = batch["target"].to(device, dtype).repeat(1, 3, 1, 1)
        z_x = encode_latents(self.vae, rgb, seeds, stream=1)  # [B,4,h,w] image latent
        z_y = encode_latents(self.vae, target, seeds, stream=2)  # [B,4,h,w] target latent
        factor = rgb.shape[-1] // z_x.shape[-1]
        return dict(
            image_latent=z_x,
            target_latent=z_y,
            timesteps=sample_timesteps(seeds, 3, len(self.alphas_cumprod), device),
            context=self.prompts.to(device, dtype)(batch["caption"]),
            valid_latent=latent_valid_mask(batch["valid"].to(device), factor),
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        from ..evaluation.estimators import dmp_predict_depth

        dtype = next(self.unet.parameters()).dtype
        ctx = self.prompts.to(images.device, dtype).empty
        scale = max(self.target_scale, 0.0)  # -1 (min-max targets) reads out min-max too: dmp_depth's 0
        return dmp_predict_depth(self.unet, self.vae, ctx, images, steps, scale, seed)

    def save(self, folder: str) -> str:
        path = os.path.join(folder, self.result_name)
        save_lora_attn_procs(extract_lora(self.unet), path)
        return path

    def describe(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale, "rank": self.rank, "self_attn_only": self.self_attn_only}
