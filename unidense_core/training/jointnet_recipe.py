"""JointNet training recipe (paper §3.3-3.4, §4.1; no official code): the depth branch and the exchange layers
on a frozen SD 2.1-base RGB UNet (stage 1), or everything at a lower rate (stage 2)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..io.checkpoints import require_subfolder, scheduler_config
from ..jointnet.model import JointNetRGBD, load_jointnet, save_jointnet
from ..jointnet.pipeline import SD21_BASE_SCHEDULER, SD21_FOLDER_HINT, JointNetPipeline
from ..jointnet.train import (
    INPAINT_MODES,
    NOISE_OFFSET,
    TEXT_DROPOUT_STAGE1,
    TEXT_DROPOUT_STAGE2,
    jointnet_from_unet,
    jointnet_training_loss,
    stage1_trainable,
    training_masked_condition,
    with_masked_latent_input,
)
from ..merge.train import latent_valid_mask
from .data import disparity_quantile_normalize, generator, mix_seed
from .merge_recipe import alphas_cumprod_from
from .prompts import PromptBank, load_prompt_bank
from .recipe import OfficialSettings, Recipe, encode_latents, sample_timesteps


class JointNetTrainStep(nn.Module):
    """Both branches; ``forward(**inputs)`` is the paper's ε loss summed over the RGB and depth halves."""

    def __init__(self, model: JointNetRGBD, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def forward(self, rgb_latent, depth_latent, timesteps, noise, context, valid_latent, masked=None):
        return jointnet_training_loss(
            self.model, rgb_latent, depth_latent, timesteps, noise, self.alphas_cumprod, context, valid_latent, masked
        )


class JointNetRecipe(Recipe):
    """JointNet stage 1 (RGB UNet frozen; depth copy + zero-initialised exchange convs) or stage 2 (all); with
    ``inpaint`` the inpainting model (masked-latent conv; masks drawn uniformly from rgb2j / j2rgb / joint [I])."""

    name = "jointnet"
    official = OfficialSettings(
        learning_rate=1e-4,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=1000,
        batch_size=4,
        processes=64,
        gradient_accumulation=1,
        max_steps=10_000,
        mixed_precision="fp16",
        flip_p=0.0,
        notes="Paper §4.1 stage 1: 64 A100 x batch 4, lr 1e-4, 10k steps, 1k warm-up, text drop 15 %, noise offset "
        "0.05; schedule after warm-up, precision, clipping and flips not stated [?] (constant, fp16, 1.0, none).",
    )
    prediction_kind = "disparity"
    inference_steps = 50
    size_multiple = 8
    result_name = "jointnet_rgbd"

    def __init__(
        self,
        model: JointNetRGBD,
        vae: nn.Module,
        prompts: PromptBank,
        scheduler: dict | None = None,
        stage: int = 1,
        text_dropout: float | None = None,
        noise_offset: float = NOISE_OFFSET,
        inpaint: bool = False,
    ):
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (RGB UNet frozen) or 2 (everything trains), got {stage!r}.")
        self.model, self.vae, self.prompts, self.stage = model, vae.requires_grad_(False).eval(), prompts, stage
        self.scheduler_config = dict(scheduler or SD21_BASE_SCHEDULER)
        self.text_dropout = (
            (TEXT_DROPOUT_STAGE1 if stage == 1 else TEXT_DROPOUT_STAGE2) if text_dropout is None else text_dropout
        )
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be a probability in [0, 1], got {self.text_dropout}.")
        self.noise_offset = noise_offset
        self.inpaint = inpaint
        if inpaint:  # the inpainting model (rgbd_inpaint_sd21b): masked-latent conv, zero-initialised if new
            model = self.model = with_masked_latent_input(model)
        if stage == 1:
            stage1_trainable(model)
        else:
            model.requires_grad_(True)
        self.alphas_cumprod = alphas_cumprod_from(self.scheduler_config)
        self.module = JointNetTrainStep(model, self.alphas_cumprod)

    @classmethod
    def from_folders(
        cls,
        sd21_dir: str,
        empty_prompt_path: str | None = None,
        init_jointnet: str | None = None,
        stage: int = 1,
        text_dropout: float | None = None,
        noise_offset: float = NOISE_OFFSET,
        inpaint: bool = False,
    ) -> JointNetRecipe:
        """SD 2.1-base (UNet, VAE, scheduler, CLIP) from a local folder; ``init_jointnet`` continues a JointNet."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        def sub(name: str) -> str:
            return require_subfolder(sd21_dir, name, SD21_FOLDER_HINT)

        if init_jointnet is not None:
            model = load_jointnet(init_jointnet)
        else:
            model = jointnet_from_unet(UNet2DConditionModel.from_pretrained(sub("unet"), local_files_only=True))
        vae = AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True)
        prompts = load_prompt_bank(sd21_dir, empty_prompt_path, SD21_FOLDER_HINT)
        sched = scheduler_config(sd21_dir, SD21_BASE_SCHEDULER)
        return cls(model, vae, prompts, sched, stage, text_dropout, noise_offset, inpaint)

    def target(self, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return disparity_quantile_normalize(depth, valid)

    def frozen(self) -> dict[str, nn.Module]:
        return {"rgb_unet": self.model.rgb.unet, "vae": self.vae} if self.stage == 1 else {"vae": self.vae}

    def enable_gradient_checkpointing(self) -> None:
        self.model.rgb.unet.enable_gradient_checkpointing()
        self.model.depth.unet.enable_gradient_checkpointing()

    def inputs(self, batch: dict, device: torch.device) -> dict[str, Any]:
        dtype = self.model.rgb.conv_in.weight.dtype
        seeds = batch["seed"]
        rgb = batch["rgb"].to(device, dtype)
        target = batch["target"].to(device, dtype).repeat(1, 3, 1, 1)
        z_rgb = encode_latents(self.vae, rgb, seeds, stream=1)  # [B,4,h,w]
        z_depth = encode_latents(self.vae, target, seeds, stream=2)
        shape = (2 * z_rgb.shape[1], *z_rgb.shape[2:])
        noises, captions = [], []
        for s, caption in zip(seeds, batch["caption"], strict=True):
            g = generator(mix_seed(s, 4))
            eps = torch.randn(shape, generator=g)  # [8,h,w] independent noise per branch
            if self.noise_offset:
                eps = eps + self.noise_offset * torch.randn(shape[0], 1, 1, generator=g)
            noises.append(eps)
            dropped = float(torch.rand(1, generator=generator(mix_seed(s, 5)))) < self.text_dropout
            captions.append("" if dropped else caption)
        factor = rgb.shape[-1] // z_rgb.shape[-1]
        out = dict(
            rgb_latent=z_rgb,
            depth_latent=z_depth,
            timesteps=sample_timesteps(seeds, 3, len(self.alphas_cumprod), device),
            noise=torch.stack(noises).to(device, dtype),
            context=self.prompts.to(device, dtype)(captions),
            valid_latent=latent_valid_mask(batch["valid"].to(device), factor),
        )
        if self.inpaint:
            modes = [INPAINT_MODES[int(torch.randint(3, (1,), generator=generator(mix_seed(s, 6))))] for s in seeds]
            out["masked"] = training_masked_condition(modes, z_rgb, z_depth)
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        pipe = JointNetPipeline(self.model, self.vae, self.scheduler_config)
        dtype = self.model.rgb.conv_in.weight.dtype
        ctx = self.prompts.to(images.device, dtype).empty
        out = pipe.inpaint(
            prompt_embeds=ctx.expand(images.shape[0], -1, -1),
            image=images,
            preset="rgb2j",
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        return out.depth

    def save(self, folder: str) -> str:
        path = os.path.join(folder, self.result_name)
        save_jointnet(self.model.to("cpu", torch.float32), path)  # the loop places the model again afterwards
        return path

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "text_dropout": self.text_dropout,
            "noise_offset": self.noise_offset,
            "inpaint": self.inpaint,
        }
