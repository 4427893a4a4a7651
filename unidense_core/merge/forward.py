"""MERGE-B forward (Lin et al., NeurIPS 2025, Group Reuse Mechanism) over any PixArt implementation.

The algorithm is written once against a small host interface (:class:`PixArtHost`); hosts adapt a diffusers
``PixArtTransformer2DModel`` (here) or ComfyUI's ``PixArtMS`` (in ``nodes/``). Generation mode never reaches this
file: it is the host model, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.utils.checkpoint
from torch import nn

from .converters import MergeConverters

MODES = ("generate", "depth")


@dataclass(frozen=True)
class GroupReusePlan:
    """N base blocks in G groups of N/G consecutive blocks; converter ``b // (N/G)`` runs before base block ``b``."""

    num_blocks: int
    num_groups: int

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.num_blocks % self.num_groups != 0:
            raise ValueError(
                f"{self.num_groups} converter groups cannot share {self.num_blocks} base blocks evenly; the converters "
                "were made for a base model with a different depth (PixArt-α 512 has 28 blocks, 14 groups)."
            )

    @property
    def share(self) -> int:
        return self.num_blocks // self.num_groups

    def group_of(self, block: int) -> int:
        return block // self.share

    def groups(self) -> list[list[int]]:
        return [list(range(g * self.share, (g + 1) * self.share)) for g in range(self.num_groups)]


class PixArtHost(Protocol):
    """What the MERGE forward needs from a frozen PixArt: its timestep MLP, caption projection and blocks."""

    num_blocks: int
    hidden_size: int
    patch_size: int

    def embed_timestep(
        self, timestep: torch.Tensor, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (t6 [B,6D] block modulation, t_emb [B,D] embedded timestep)."""
        ...

    def embed_caption(self, context: torch.Tensor, mask: torch.Tensor | None, batch: int) -> tuple[Any, Any]:
        """-> (projected caption, attention mask in the host's own form)."""
        ...

    def run_block(
        self, index: int, h: torch.Tensor, caption: Any, mask: Any, t6: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Run frozen block ``index`` on tokens h [B,N,D]."""
        ...


def check_compatible(host: PixArtHost, converters: MergeConverters) -> GroupReusePlan:
    """The plan for this base/converter pair, or a ValueError that says which sizes disagree."""
    if host.hidden_size != converters.config.hidden_size:
        raise ValueError(
            f"The converters have width {converters.config.hidden_size} but the base model has width "
            f"{host.hidden_size}; they were made for another base model. MERGE-B needs PixArt-XL-2-512x512."
        )
    if host.patch_size != converters.config.patch_size:
        raise ValueError(
            f"The converters use {converters.config.patch_size}×{converters.config.patch_size} patches but the base "
            f"model uses {host.patch_size}×{host.patch_size}; they were made for another base model. MERGE-B needs "
            "PixArt-XL-2-512x512."
        )
    return GroupReusePlan(host.num_blocks, converters.num_groups)


def merge_depth_forward(
    host: PixArtHost,
    converters: MergeConverters,
    image_latent: torch.Tensor,
    noisy_latent: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor | None = None,
    gradient_checkpointing: bool = False,
) -> torch.Tensor:
    """MERGE depth-mode prediction [B,8,H,W] (ε = first 4 channels) for VP-space latents at DDPM ``timestep``.

    ``gradient_checkpointing`` (training) recomputes each converter + base block pair in the backward pass.
    """
    if image_latent.shape != noisy_latent.shape:
        raise ValueError(
            f"image latent {tuple(image_latent.shape)} and noisy depth latent {tuple(noisy_latent.shape)} must match."
        )
    plan = check_compatible(host, converters)
    p = converters.config.patch_size
    if image_latent.shape[-2] % p or image_latent.shape[-1] % p:
        raise ValueError(
            f"Latent size {tuple(image_latent.shape[-2:])} is not divisible by the patch size {p}: use images whose "
            f"sides are multiples of {8 * p} pixels."
        )
    b = noisy_latent.shape[0]
    wdtype = converters.proj_out.weight.dtype
    # 1. Converter patch embedding of cat([z_img, z_t]); the fixed model's pos_embed is never used here.
    h, grid = converters.pos_embed(torch.cat([image_latent, noisy_latent], dim=1).to(wdtype))  # [B,N,D]
    # 2. The frozen model's timestep MLP and caption projection.
    t6, t_emb = host.embed_timestep(timestep, b, noisy_latent.dtype)  # [B,6D], [B,D] in the host's dtype
    caption, mask = host.embed_caption(context, context_mask, b)

    # 3. Group reuse: converter b//share before every frozen block b.
    def pair(i: int, h: torch.Tensor) -> torch.Tensor:
        h = converters.transformer_blocks[plan.group_of(i)](h.to(wdtype), t6.to(wdtype))
        return host.run_block(i, h.to(t6.dtype), caption, mask, t6, grid)

    for i in range(plan.num_blocks):
        if gradient_checkpointing and torch.is_grad_enabled():
            h = torch.utils.checkpoint.checkpoint(pair, i, h, use_reentrant=False)
        else:
            h = pair(i, h)
    # 4. The converter's own head.
    return converters.head(h.to(wdtype), t_emb.to(wdtype), grid)  # [B,8,H,W]


class DiffusersPixArtHost:
    """:class:`PixArtHost` over a diffusers ``PixArtTransformer2DModel``."""

    def __init__(self, transformer: nn.Module):
        missing = [
            a
            for a in ("adaln_single", "caption_projection", "transformer_blocks")
            if getattr(transformer, a, None) is None
        ]
        if missing:
            raise TypeError(
                f"{type(transformer).__name__} is not a PixArt transformer (lacks {', '.join(missing)}); MERGE-B needs "
                "diffusers' PixArtTransformer2DModel from PixArt-XL-2-512x512."
            )
        self.model = transformer
        self.num_blocks = len(transformer.transformer_blocks)
        self.hidden_size = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.patch_size = transformer.config.patch_size

    def embed_timestep(self, timestep, batch, dtype):
        if self.model.use_additional_conditions:
            raise ValueError("MERGE-B was trained on PixArt-α 512, which has no resolution/aspect conditions.")
        return self.model.adaln_single(timestep, None, batch_size=batch, hidden_dtype=dtype)

    def embed_caption(self, context, mask, batch):
        c = self.model.caption_projection(context).view(batch, -1, self.hidden_size)  # [B,T,D]
        if mask is not None and mask.ndim == 2:
            mask = ((1 - mask.to(c.dtype)) * -10000.0).unsqueeze(1)  # keep = 0, drop = -1e4 (official bias)
        return c, mask

    def run_block(self, index, h, caption, mask, t6, grid):
        return self.model.transformer_blocks[index](
            h, encoder_hidden_states=caption, encoder_attention_mask=mask, timestep=t6
        )


class MergePixArtTransformer(nn.Module):
    """A frozen PixArt with pluggable converters: ``mode='generate'`` is the stock model, ``'depth'`` is MERGE.

    In depth mode call it with the image latent: ``model(noisy, t, context, image_latent=z_img)``.
    """

    def __init__(self, transformer: nn.Module, converters: MergeConverters | None = None):
        super().__init__()
        self.transformer = transformer
        self.converters = converters
        self.host = DiffusersPixArtHost(transformer)
        if converters is not None:
            check_compatible(self.host, converters)

    def forward(
        self,
        noisy_latent: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        mode: str = "generate",
        image_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mode == "generate":
            return self.transformer(
                noisy_latent,
                encoder_hidden_states=context,
                encoder_attention_mask=context_mask,
                timestep=timestep,
                return_dict=False,
            )[0]
        if mode != "depth":
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if self.converters is None:
            raise ValueError("Depth mode needs converters: pass them when building MergePixArtTransformer.")
        if image_latent is None:
            raise ValueError("Depth mode needs `image_latent`, the scaled VAE latent of the input image.")
        return merge_depth_forward(
            self.host, self.converters, image_latent, noisy_latent, timestep, context, context_mask
        )
