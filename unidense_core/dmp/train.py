"""DMP training pieces (Lee et al., CVPR 2024; official ``train.py`` / ``pipeline.py::train_batch``, spec §3.3).

A rank-4 LoRA on ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every attention (attn1 and attn2) of a frozen SD 1.x
UNet, initialised like diffusers' ``LoRAAttnProcessor`` (down ~ N(0, 1/r²), up = 0, scale 1); the forward process
is the interpolation z_t = √ᾱ·z_y + √(1−ᾱ)·z_x and the target the velocity v = √ᾱ·z_x − √(1−ᾱ)·z_y. The LoRA is
read back as :class:`~.lora.LoraWeights` and written in the official attention-processor layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import LoraModule, LoraWeights
from .sampler import interpolate, velocity_target

OFFICIAL_RANK = 4
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TARGET_SCALE = 8.0  # --target_mode=F --target_scale=8: metres / 8, then Normalize(0.5, 0.5) -> d/4 − 1


def lora_target_pattern(self_attn_only: bool = False) -> str:
    """peft ``target_modules`` regex for the official processors (all 32 in SD 1.x; attn1 only with the flag)."""
    attn = "attn1" if self_attn_only else "attn[12]"
    return rf".*\.{attn}\.(to_q|to_k|to_v|to_out\.0)"


def add_trainable_lora(
    unet: nn.Module, rank: int = OFFICIAL_RANK, self_attn_only: bool = False, adapter_name: str = "dmp"
) -> list[nn.Parameter]:
    """Inject a fresh trainable LoRA with peft (in place; base frozen) and return its parameters.

    ``init_lora_weights="gaussian"`` draws lora_A ~ N(0, 1/r) std and sets lora_B = 0, the official
    ``LoRAAttnProcessor`` init; ``lora_alpha = r`` gives scale 1 (no network_alpha in the official LoRA).
    """
    from peft import LoraConfig, inject_adapter_in_model

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=lora_target_pattern(self_attn_only),
        init_lora_weights="gaussian",
        lora_dropout=0.0,
        bias="none",
    )
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    return mark_lora_trainable(unet, adapter_name)


def mark_lora_trainable(unet: nn.Module, adapter_name: str = "dmp") -> list[nn.Parameter]:
    """requires_grad only on the adapter's lora_A/lora_B weights (e.g. after ``apply_lora_peft`` of a saved LoRA)."""
    params = []
    for name, p in unet.named_parameters():
        train = f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name
        p.requires_grad_(train)
        if train:
            params.append(p)
    if not params:
        raise ValueError(f"The UNet has no LoRA adapter named {adapter_name!r}; inject one first.")
    return params


def extract_lora(unet: nn.Module, adapter_name: str = "dmp", source: str = "trained DMP LoRA") -> LoraWeights:
    """The adapter's weights as :class:`LoraWeights` keyed by UNet module names (detached fp32 copies)."""
    modules = {}
    for name, mod in unet.named_modules():
        if not hasattr(mod, "lora_A") or adapter_name not in getattr(mod, "lora_A", {}):
            continue
        down = mod.lora_A[adapter_name].weight.detach().float().cpu().clone()  # [r, in]
        up = mod.lora_B[adapter_name].weight.detach().float().cpu().clone()  # [out, r]
        modules[name.removesuffix(".base_layer")] = LoraModule(down, up, float(mod.scaling[adapter_name]))
    if not modules:
        raise ValueError(f"The UNet holds no LoRA adapter named {adapter_name!r}.")
    return LoraWeights(modules, source, "peft")


def normalize_fixed_scale(depth: torch.Tensor, scale: float = TARGET_SCALE) -> torch.Tensor:
    """DMP's depth target: ``Normalize(0.5, 0.5)(d / scale)`` = 2·d/scale − 1, not clipped (official data.py);
    ``scale = -1`` min-max normalises each map as the official ``target_scale == -1``."""
    if scale == -1:
        lo, hi = depth.amin(dim=(-2, -1), keepdim=True), depth.amax(dim=(-2, -1), keepdim=True)
        return 2 * (depth - lo) / (hi - lo).clamp_min(1e-8) - 1
    if scale <= 0:
        raise ValueError(f"target_scale must be > 0 (metres mapped to 1) or -1 (min-max per image), got {scale}.")
    return 2 * depth / scale - 1


def dmp_training_loss(
    unet: nn.Module,
    image_latent: torch.Tensor,
    target_latent: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    context: torch.Tensor,
    valid_latent: torch.Tensor | None = None,
) -> torch.Tensor:
    """v-prediction MSE on the interpolation (official ``train_batch`` with ``prediction_type='v_prediction'``).

    With ``valid_latent`` the mean runs over valid latent pixels only (the official data is dense pseudo-GT, where
    this equals the plain mean); the official loss has no SNR weighting by default.
    """
    a = alphas_cumprod.to(target_latent.device)[timesteps].float()  # [B]
    z_t = interpolate(target_latent.float(), image_latent.float(), a).to(target_latent.dtype)  # [B,4,h,w]
    v = velocity_target(target_latent.float(), image_latent.float(), a)  # [B,4,h,w]
    pred = unet(z_t, timesteps, encoder_hidden_states=context).sample  # [B,4,h,w]
    if valid_latent is None:
        return F.mse_loss(pred.float(), v, reduction="mean")
    mask = valid_latent.expand_as(pred)
    if not bool(mask.any()):
        raise ValueError("No latent pixel of this batch is fully valid; DMP needs dense depth targets.")
    return F.mse_loss(pred[mask].float(), v[mask], reduction="mean")
