"""MERGE-L forward (Lin et al., NeurIPS 2025, FLUX.1-dev) over any FLUX implementation.

The algorithm is written once against a small host interface (:class:`FluxHost`); hosts adapt a diffusers
``FluxTransformer2DModel`` (here) or ComfyUI's ``comfy.ldm.flux.model.Flux`` (``nodes/hosts/flux.py``). Generation
mode never reaches this file: it is the host model, untouched.

Official forward (``MERGEFluxTransformerModel.merge_forward``): the converter's ``x_embedder`` embeds the packed
``cat([z_t, z_img])`` (noisy depth first); the frozen FLUX embeds time, guidance (0) and the pooled CLIP vector, and
projects the T5 context; converter ``single_transformer_blocks_in_dual[g]`` runs on the image tokens before every
double block of group g, ``single_transformer_blocks[g]`` on the joint [text; image] sequence before every single
block of group g; the converter's own ``norm_out``/``proj_out`` reads out the velocity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .flux_converters import FLUX_DEV_BLOCKS, FLUX_DEV_WIDTH, MergeFluxConverters

logger = logging.getLogger(__name__)

MODES = ("generate", "depth")


def official_groups(num_blocks: int, num_groups: int) -> list[list[int]]:
    """The official split (``xFluxTransformer2DModel.__init__``): groups of ceil(N/G) consecutive blocks."""
    length = num_blocks // num_groups + (1 if num_blocks % num_groups else 0)
    return [list(range(i * length, min((i + 1) * length, num_blocks))) for i in range(num_groups)]


@dataclass(frozen=True)
class FluxGroupPlan:
    """Which converter runs before which base block, in both stages (19 double, 38 single, 5 groups for MERGE-L)."""

    num_double: int
    num_single: int
    num_groups: int

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.num_double < 1 or self.num_single < 1:
            raise ValueError(
                f"A MERGE-L plan needs at least one group and one block of each kind; got {self.num_groups} groups "
                f"for {self.num_double} double and {self.num_single} single blocks."
            )

    @property
    def double_groups(self) -> list[list[int]]:
        return official_groups(self.num_double, self.num_groups)

    @property
    def single_groups(self) -> list[list[int]]:
        return official_groups(self.num_single, self.num_groups)

    def unused(self) -> list[str]:
        """Converters an empty group leaves unused (the official split gives these for some group counts)."""
        out = [f"in-dual {g}" for g, grp in enumerate(self.double_groups) if not grp]
        return out + [f"single {g}" for g, grp in enumerate(self.single_groups) if not grp]


class FluxHost(Protocol):
    """What the MERGE-L forward needs from a frozen FLUX: its embedders, RoPE, attention and blocks."""

    num_double_blocks: int
    num_single_blocks: int
    hidden_size: int
    num_heads: int
    guidance_embed: bool
    dtype: torch.dtype  # the dtype the base blocks compute in

    def embed(
        self, timestep: torch.Tensor, guidance: torch.Tensor, pooled: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep = σ in [0, 1] [B]; guidance [B]; -> (temb [B,D] conditioning vector, txt [B,T,D])."""
        ...

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor, batch: int) -> tuple[Any, Any]:
        """ids [T,3], [N,3] -> (RoPE for the joint [text; image] sequence, RoPE for the image tokens alone)."""
        ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Any) -> torch.Tensor:
        """q, k, v [B,H,S,hd] (q, k normalised) -> [B,S,H·hd], with the host's RoPE and attention kernel."""
        ...

    def run_double(
        self, index: int, img: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor, rope: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen double block ``index`` -> (img, txt)."""
        ...

    def run_single(self, index: int, x: torch.Tensor, txt_len: int, temb: torch.Tensor, rope: Any) -> torch.Tensor:
        """Frozen single block ``index`` on the joint sequence [B,T+N,D]."""
        ...


def check_flux_compatible(host: FluxHost, converters: MergeFluxConverters) -> FluxGroupPlan:
    """The plan for this base/converter pair, or a ValueError that says which sizes disagree."""
    cfg = converters.config
    if (host.hidden_size, host.num_heads) != (cfg.hidden_size, cfg.num_attention_heads):
        raise ValueError(
            f"The MERGE-L converters have width {cfg.hidden_size} ({cfg.num_attention_heads} heads) but the FLUX "
            f"model has width {host.hidden_size} ({host.num_heads} heads); they were made for another base model. "
            "MERGE-L needs FLUX.1-dev."
        )
    if not host.guidance_embed:
        raise ValueError(
            "This FLUX model has no guidance embedding (FLUX.1-schnell or a de-distilled variant). MERGE-L was "
            "trained on FLUX.1-dev with its guidance embedding fed 0; load FLUX.1-dev instead."
        )
    blocks = (host.num_double_blocks, host.num_single_blocks)
    released = cfg.hidden_size == FLUX_DEV_WIDTH and cfg.num_single_layers == 5  # the merge-large-depth-v1 layout
    if released and blocks != FLUX_DEV_BLOCKS:
        raise ValueError(
            f"This FLUX model has {blocks[0]} double and {blocks[1]} single blocks; MERGE-L converters are placed "
            f"by FLUX.1-dev's {FLUX_DEV_BLOCKS[0]} + {FLUX_DEV_BLOCKS[1]} (a pruned or lite FLUX does not fit). "
            "Load FLUX.1-dev."
        )
    plan = FluxGroupPlan(host.num_double_blocks, host.num_single_blocks, converters.num_groups)
    if plan.unused():
        logger.warning("MERGE-L: with %d groups the official split leaves %s unused.", plan.num_groups, plan.unused())
    return plan


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,(h/2)(w/2),4C], FLUX's 2×2 packing (channel-major within a patch)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B,(h/2)(w/2),4C] -> [B,C,h,w]."""
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h2: int, w2: int, device: torch.device | None = None) -> torch.Tensor:
    """[h2·w2, 3] position ids (0, row, column) of the packed image tokens, as FLUX pipelines make them."""
    ids = torch.zeros(h2, w2, 3, device=device)
    ids[..., 1] = torch.arange(h2, device=device)[:, None]
    ids[..., 2] = torch.arange(w2, device=device)[None, :]
    return ids.reshape(h2 * w2, 3)


def merge_l_depth_forward(
    host: FluxHost,
    converters: MergeFluxConverters,
    image_latent: torch.Tensor,
    noisy_latent: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    guidance: torch.Tensor | None = None,
) -> torch.Tensor:
    """MERGE-L depth velocity [B,16,h,w] for flow-matching latents at σ = ``timestep`` (guidance 0 by default)."""
    if image_latent.shape != noisy_latent.shape:
        raise ValueError(
            f"image latent {tuple(image_latent.shape)} and noisy depth latent {tuple(noisy_latent.shape)} must match."
        )
    b, c, h, w = noisy_latent.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"Latent size {h}×{w} is odd; FLUX packs 2×2 patches: use image sides that are multiples of 16."
        )
    if 2 * 4 * c != converters.config.in_channels:
        raise ValueError(
            f"{c}-channel latents do not fit the converters' {converters.config.in_channels}-input embedding "
            f"(2 × {converters.config.in_channels // 8} channels × 2×2); use the FLUX VAE (16 channels)."
        )
    plan = check_flux_compatible(host, converters)
    wdtype = converters.x_embedder.weight.dtype
    # 1. The converter's embedding of the packed [noisy depth, image] (noisy first, unlike MERGE-B).
    x = torch.cat([pack_latents(noisy_latent), pack_latents(image_latent)], dim=2)  # [B,N,8C]
    img = converters.x_embedder(x.to(wdtype))  # [B,N,D]
    # 2. The frozen FLUX's conditioning vector (time, guidance 0, pooled CLIP) and T5 projection.
    g = torch.zeros(b, device=img.device) if guidance is None else guidance
    temb, txt = host.embed(timestep.to(img.dtype), g.to(img.dtype), pooled, context)  # official casts t first
    t_len = txt.shape[1]
    rope, rope_img = host.rotary(torch.zeros(t_len, 3, device=img.device), image_ids(h // 2, w // 2, img.device), b)
    ctemb = temb.to(wdtype)
    # 3. Double-block stage: converter (image tokens only) before every double block of its group.
    for gi, group in enumerate(plan.double_groups):
        for i in group:
            img = converters.single_transformer_blocks_in_dual[gi](img.to(wdtype), ctemb, rope_img, host.attention)
            img, txt = host.run_double(i, img.to(host.dtype), txt, temb, rope)
    # 4. Single-block stage on the joint [text; image] sequence.
    joint = torch.cat([txt, img], dim=1)  # [B,T+N,D]
    for gi, group in enumerate(plan.single_groups):
        for i in group:
            joint = converters.single_transformer_blocks[gi](joint.to(wdtype), ctemb, rope, host.attention)
            joint = host.run_single(i, joint.to(host.dtype), t_len, temb, rope)
    # 5. The converter's own head on the image tokens.
    v = converters.head(joint[:, t_len:].to(wdtype), ctemb)  # [B,N,4C]
    return unpack_latents(v, h, w)  # [B,C,h,w]


class DiffusersFluxHost:
    """:class:`FluxHost` over a diffusers ``FluxTransformer2DModel``."""

    def __init__(self, transformer: nn.Module):
        missing = [
            a
            for a in ("time_text_embed", "context_embedder", "transformer_blocks", "single_transformer_blocks")
            if getattr(transformer, a, None) is None
        ]
        if missing:
            raise ValueError(
                f"{type(transformer).__name__} is not a FLUX transformer (lacks {', '.join(missing)}); MERGE-L needs "
                "diffusers' FluxTransformer2DModel from FLUX.1-dev."
            )
        cfg = transformer.config
        self.model = transformer
        self.num_double_blocks = len(transformer.transformer_blocks)
        self.num_single_blocks = len(transformer.single_transformer_blocks)
        self.hidden_size = cfg.num_attention_heads * cfg.attention_head_dim
        self.num_heads = cfg.num_attention_heads
        self.guidance_embed = bool(cfg.guidance_embeds)
        self.dtype = transformer.context_embedder.weight.dtype

    def embed(self, timestep, guidance, pooled, context):
        temb = self.model.time_text_embed(timestep * 1000, guidance * 1000, pooled.to(self.dtype))
        return temb, self.model.context_embedder(context.to(self.dtype))

    def rotary(self, txt_ids, img_ids, batch):
        cos, sin = self.model.pos_embed(torch.cat([txt_ids, img_ids], dim=0))  # [T+N,hd] each
        t = txt_ids.shape[0]
        return (cos, sin), (cos[t:], sin[t:])

    def attention(self, q, k, v, rope):
        import torch.nn.functional as F
        from diffusers.models.embeddings import apply_rotary_emb

        q, k = apply_rotary_emb(q, rope, sequence_dim=2), apply_rotary_emb(k, rope, sequence_dim=2)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # [B,S,D]

    def run_double(self, index, img, txt, temb, rope):
        txt, img = self.model.transformer_blocks[index](
            hidden_states=img, encoder_hidden_states=txt, temb=temb, image_rotary_emb=rope
        )
        return img, txt

    def run_single(self, index, x, txt_len, temb, rope):
        txt, img = self.model.single_transformer_blocks[index](
            hidden_states=x[:, txt_len:], encoder_hidden_states=x[:, :txt_len], temb=temb, image_rotary_emb=rope
        )
        return torch.cat([txt, img], dim=1)


class MergeFluxTransformer(nn.Module):
    """A frozen FLUX with pluggable MERGE-L converters: ``'generate'`` is the stock model, ``'depth'`` is MERGE-L.

    Latents are unpacked [B,16,h,w]; ``timestep`` is σ in [0, 1]. Depth mode:
    ``model(noisy, sigma, t5, pooled, mode="depth", image_latent=z_img)`` (guidance 0, as the official code).
    """

    def __init__(self, transformer: nn.Module, converters: MergeFluxConverters | None = None):
        super().__init__()
        self.transformer = transformer
        self.converters = converters
        self.host = DiffusersFluxHost(transformer)
        if converters is not None:
            check_flux_compatible(self.host, converters)

    def forward(
        self,
        noisy_latent: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        pooled: torch.Tensor,
        mode: str = "generate",
        image_latent: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mode == "generate":
            b, _, h, w = noisy_latent.shape
            dev = noisy_latent.device
            out = self.transformer(
                hidden_states=pack_latents(noisy_latent),
                encoder_hidden_states=context,
                pooled_projections=pooled,
                timestep=timestep,
                img_ids=image_ids(h // 2, w // 2, dev),
                txt_ids=torch.zeros(context.shape[1], 3, device=dev),
                guidance=guidance,
                return_dict=False,
            )[0]
            return unpack_latents(out, h, w)
        if mode != "depth":
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if self.converters is None:
            raise ValueError("Depth mode needs converters: pass them when building MergeFluxTransformer.")
        if image_latent is None:
            raise ValueError("Depth mode needs `image_latent`, the shifted and scaled FLUX VAE latent of the image.")
        return merge_l_depth_forward(
            self.host, self.converters, image_latent, noisy_latent, timestep, context, pooled, guidance
        )
