"""JointNet stage-1 training pieces (Zhang et al., ICLR 2024, §3.3-3.4 and §4.1; no official training code).

The depth branch starts as a copy of the RGB UNet; every exchange conv of both branches is zero-initialised
(ControlNet's ``zero_module``), so at step 0 the RGB branch is exactly the base UNet. Stage 1 trains the depth copy
and the exchange layers with the RGB UNet frozen; the loss is ‖ε_x − ε̂_x‖² + ‖ε_y − ε̂_y‖² with independent noises
at one shared timestep, text dropped to "" with probability 0.15 and a noise offset of 0.05 (paper §4.1).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .inpaint import masked_condition
from .model import ExchangeConfig, ExchangeLayers, JointNetBranch, JointNetRGBD

TEXT_DROPOUT_STAGE1 = 0.15
TEXT_DROPOUT_STAGE2 = 0.5
NOISE_OFFSET = 0.05
INPAINT_MODES = ("rgb2j", "j2rgb", "joint")  # masks drawn for the inpainting model [I]: the paper does not say


def zero_exchange(cfg: ExchangeConfig) -> ExchangeLayers:
    """Exchange layers with every weight and bias zero (ControlNet's zero_module)."""
    ex = ExchangeLayers(cfg)
    with torch.no_grad():
        for p in ex.parameters():
            p.zero_()
    return ex


def jointnet_from_unet(unet: nn.Module, has_masked_latent_input: bool = False) -> JointNetRGBD:
    """A new JointNet: the RGB branch is ``unet`` itself, the depth branch a deep copy; all exchange convs zero."""
    cfg = ExchangeConfig.from_unet_config({**unet.config, "has_masked_latent_input": has_masked_latent_input})
    rgb = JointNetBranch(unet, zero_exchange(cfg))
    depth = JointNetBranch(copy.deepcopy(unet), zero_exchange(cfg))
    return JointNetRGBD(rgb, depth)


def with_masked_latent_input(model: JointNetRGBD) -> JointNetRGBD:
    """The inpainting variant of a generation JointNet (paper: resumed from stage 1 with a zero-initialised conv on
    the masked latents): same weights, plus ``jointnet_masked_latent_conv`` = 0 in both branches."""
    if model.has_masked_latent_input:
        return model
    branches = []
    for branch in (model.rgb, model.depth):
        cfg = replace(branch.exchange.config, has_masked_latent_input=True)
        ex = zero_exchange(cfg).to(next(branch.exchange.parameters()).device)
        ex.load_state_dict(branch.exchange.state_dict(), strict=False)  # everything but the new conv
        branches.append(JointNetBranch(branch.unet, ex))
    return JointNetRGBD(*branches)


def inpaint_masks(modes: list[str], shape: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent masks (1 = generate) [B,1,h,w] for RGB and depth per sample: ``rgb2j`` keeps the image, ``j2rgb``
    the depth, ``joint`` neither."""
    m_rgb = torch.tensor([0.0 if m == "rgb2j" else 1.0 for m in modes], device=device)
    m_depth = torch.tensor([0.0 if m == "j2rgb" else 1.0 for m in modes], device=device)
    full = (len(modes), 1, *shape)
    return m_rgb.view(-1, 1, 1, 1).expand(full), m_depth.view(-1, 1, 1, 1).expand(full)


def training_masked_condition(modes: list[str], rgb_latent: torch.Tensor, depth_latent: torch.Tensor) -> torch.Tensor:
    """The inpainting model's [B,10,h,w] input for the sampled modes (clean latents where kept)."""
    m_rgb, m_depth = inpaint_masks(modes, tuple(rgb_latent.shape[-2:]), rgb_latent.device)
    return masked_condition(m_rgb, rgb_latent, m_depth, depth_latent)


def stage1_trainable(model: JointNetRGBD) -> list[nn.Parameter]:
    """Freeze the RGB UNet; train the depth branch (UNet + exchange) and the RGB branch's exchange layers."""
    model.requires_grad_(False)
    model.depth.requires_grad_(True)
    model.rgb.exchange.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def jointnet_training_loss(
    model: JointNetRGBD,
    rgb_latent: torch.Tensor,
    depth_latent: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    context: torch.Tensor,
    valid_latent: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's two-branch ε loss: MSE(ε_rgb) + MSE(ε_depth); ``noise`` is [B,8,h,w] (RGB 0-3, depth 4-7).

    ``valid_latent`` restricts the depth term to latent pixels whose 8×8 block has depth everywhere (the paper's
    MiDaS pseudo-depth is dense, where this is the plain mean).
    """
    c = model.latent_channels
    a = alphas_cumprod.to(rgb_latent.device)[timesteps].float().view(-1, 1, 1, 1)  # [B,1,1,1]
    clean = torch.cat([rgb_latent, depth_latent], dim=1).float()  # [B,8,h,w]
    noisy = (a.sqrt() * clean + (1 - a).sqrt() * noise.float()).to(rgb_latent.dtype)
    eps = model(noisy, timesteps, context, masked)  # [B,8,h,w]
    loss_rgb = F.mse_loss(eps[:, :c].float(), noise[:, :c].float(), reduction="mean")
    if valid_latent is None:
        return loss_rgb + F.mse_loss(eps[:, c:].float(), noise[:, c:].float(), reduction="mean")
    mask = valid_latent.expand_as(eps[:, c:])
    if not bool(mask.any()):
        raise ValueError("No latent pixel of this batch has depth in its whole 8×8 block; use denser depth.")
    return loss_rgb + F.mse_loss(eps[:, c:][mask].float(), noise[:, c:][mask].float(), reduction="mean")
