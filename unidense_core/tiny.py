"""Tiny random models with the real architectures, for the self-check, the benchmarks and the tests.

Weights are random: these models verify wiring, shapes and formulas, never output quality.
"""

from __future__ import annotations

import torch
from torch import nn

from .converters import ConverterConfig, MergeConverters

# diffusers PixArtTransformer2DModel kwargs: PixArt-α 512 layout at toy width (4 blocks, 2 heads × 32).
TINY_PIXART = dict(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=4,
    out_channels=8,
    num_layers=4,
    cross_attention_dim=64,
    caption_channels=32,
    sample_size=8,
    patch_size=2,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    use_additional_conditions=False,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
)
# The real PixArt-XL-2-512x512 transformer config (for shape checks and benchmarks).
PIXART_XL_512 = dict(
    TINY_PIXART,
    num_attention_heads=16,
    attention_head_dim=72,
    num_layers=28,
    cross_attention_dim=1152,
    caption_channels=4096,
    sample_size=64,
)

TINY_CONVERTER = ConverterConfig(num_layers=2, num_attention_heads=2, attention_head_dim=32, sample_size=8)

# diffusers AutoencoderKL kwargs: 4 levels (factor 8), 4 latent channels, SD scaling factor.
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Give every parameter non-zero random values, so no zero-init can hide a wrong path."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float32) * scale
        r = torch.where(r.abs() < 1e-3, torch.full_like(r, 1e-3), r)  # strictly non-zero
        p.copy_(r.to(p.dtype))
    return module


def tiny_converters(cfg: ConverterConfig = TINY_CONVERTER, seed: int = 1) -> MergeConverters:
    return randomize_(MergeConverters(cfg), seed).eval()


def tiny_pixart(seed: int = 0, **overrides) -> nn.Module:
    """A diffusers PixArtTransformer2DModel (needs diffusers) with random non-zero weights."""
    from diffusers import PixArtTransformer2DModel

    return randomize_(PixArtTransformer2DModel(**{**TINY_PIXART, **overrides}), seed).eval()


def tiny_vae(seed: int = 2) -> nn.Module:
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**TINY_VAE), seed, scale=0.1).eval()
