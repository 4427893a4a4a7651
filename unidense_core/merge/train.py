"""MERGE-B training pieces (Lin et al., NeurIPS 2025; official ``train_merge_base_depth.py``, spec §1.4).

Converters are initialised from the frozen PixArt as the official ``xTransformerModel.from_transformer`` +
``_replace_in_out_proj_conv`` do; the target is ε (DDPM, the PixArt scheduler's linear β), the noise is Marigold's
annealed multi-resolution noise, and the MSE is taken only over latent pixels whose 8×8 image block is fully valid.
Written against :class:`~.forward.PixArtHost`, so another base (FLUX for MERGE-L) adds its own init and forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .converters import ConverterConfig, MergeConverters
from .forward import PixArtHost, merge_depth_forward

MULTI_RES_STRENGTH = 0.9  # config/train_merge.yaml multi_res_noise.strength, annealed by t / T
MULTI_RES_LEVELS = 10


@torch.no_grad()
def init_converters_from_base(
    transformer: nn.Module, num_layers: int | None = None, ff_mult: int = 1
) -> MergeConverters:
    """New converters from a diffusers PixArt transformer, as the official initialisation (spec §1.2a).

    Head (``scale_shift_table`` [2,D], ``proj_out``) copied; ``pos_embed.proj`` = 0.5·[W, W] over the 8 input
    channels, bias copied; converter blocks ``0 .. ⌈L/share⌉-1`` take the attention, ``scale_shift_table`` and
    ``ff.net.2.bias`` of base blocks ``0, share, 2·share, …`` (FFN weights differ in width and stay random);
    the remaining converter blocks keep their random init. Uses the global torch RNG for the random parts.
    """
    cfg = transformer.config
    n_base = len(transformer.transformer_blocks)
    num_layers = num_layers or n_base // 2
    if n_base % num_layers:
        raise ValueError(f"{num_layers} converters cannot share {n_base} base blocks evenly (use a divisor).")
    share = n_base // num_layers
    interp = cfg.get("interpolation_scale", None)
    conv_cfg = ConverterConfig(
        num_layers=num_layers,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=2 * cfg.in_channels,
        out_channels=cfg.out_channels,
        patch_size=cfg.patch_size,
        sample_size=cfg.sample_size,
        interpolation_scale=None if interp is None else float(interp),
        ff_mult=ff_mult,
        norm_eps=cfg.norm_eps,
    )
    conv = MergeConverters(conv_cfg)
    base = transformer.state_dict()
    target = conv.state_dict()
    # 1. Everything outside the blocks whose name and shape match (official: from_transformer, first loop).
    for name in ("scale_shift_table", "proj_out.weight", "proj_out.bias", "pos_embed.proj.bias"):
        if name in base and base[name].shape == target[name].shape:
            target[name].copy_(base[name])
    # 2. The 4-channel patch embedding repeated over [image, noisy] and halved (official _replace_in_out_proj_conv).
    w = base["pos_embed.proj.weight"]  # [D,4,p,p]
    target["pos_embed.proj.weight"].copy_(0.5 * w.repeat(1, 2, 1, 1))  # [D,8,p,p]
    # 3. Converter blocks 0.. from base blocks 0, share, 2·share, ... where names and shapes match.
    for i, src in enumerate(range(0, num_layers, share)):
        block = transformer.transformer_blocks[src].state_dict()
        for name, tensor in conv.transformer_blocks[i].state_dict().items():
            if name in block and block[name].shape == tensor.shape:
                tensor.copy_(block[name])
    return conv


def latent_valid_mask(valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """[B,1,H,W] pixel validity -> [B,1,H/f,W/f]: a latent pixel is valid when its whole f×f block is (official:
    ``~max_pool2d(~valid, 8, 8)``)."""
    return ~F.max_pool2d((~valid.bool()).float(), factor, factor).bool()


def multi_res_noise(
    shape: tuple[int, int, int], strength: float, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Marigold's multi-resolution noise (``downscale_strategy='original'``) for ONE sample [C,h,w].

    ε + Σ_i strength^i · up(N(0, I) at a size divided by r^i, r ~ U[2, 4)), the size shrinking cumulatively as in
    the official loop, then scaled to unit standard deviation. Normalised per sample (the official code normalises
    over each process's micro-batch, which would make the noise depend on how a batch is split across processes).
    """
    c, h, w = shape
    noise = torch.randn(shape, generator=generator)
    hh, ww = h, w
    for i in range(MULTI_RES_LEVELS):
        r = float(torch.rand(1, generator=generator)) * 2 + 2
        hh, ww = max(1, int(hh / r**i)), max(1, int(ww / r**i))
        low = torch.randn(1, c, hh, ww, generator=generator)
        noise = noise + F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0] * strength**i
        if hh == 1 or ww == 1:
            break
    return (noise / noise.std()).to(device)


def annealed_strength(timestep: int, num_train_timesteps: int = 1000) -> float:
    """The official annealing: strength · t / T."""
    return MULTI_RES_STRENGTH * timestep / num_train_timesteps


def merge_training_loss(
    host: PixArtHost,
    converters: MergeConverters,
    image_latent: torch.Tensor,
    depth_latent: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor | None,
    valid_latent: torch.Tensor,
    gradient_checkpointing: bool = False,
) -> torch.Tensor:
    """ε-prediction MSE over valid latent pixels (official loop): z_t = √ᾱ·z_d + √(1−ᾱ)·ε, input [z_img, z_t]."""
    a = alphas_cumprod.to(depth_latent.device)[timesteps].float().view(-1, 1, 1, 1)  # [B,1,1,1]
    noisy = (a.sqrt() * depth_latent.float() + (1 - a).sqrt() * noise.float()).to(depth_latent.dtype)  # [B,4,h,w]
    out = merge_depth_forward(
        host,
        converters,
        image_latent,
        noisy,
        timesteps,
        context,
        context_mask,
        gradient_checkpointing=gradient_checkpointing,
    )[:, :4]  # [B,4,h,w] ε (the learned-σ half is discarded)
    mask = valid_latent.expand_as(out)
    if not bool(mask.any()):
        raise ValueError(
            "No latent pixel of this batch is fully valid (every 8×8 block has a pixel without depth); MERGE masks "
            "its loss at latent resolution, so sparse depth (e.g. LiDAR) cannot train it. Use dense ground truth."
        )
    return F.mse_loss(out[mask].float(), noise[mask].float(), reduction="mean")
