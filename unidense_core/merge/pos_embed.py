"""Fixed 2-D sin-cos position embeddings as PixArt and MERGE's converter patch embedding use them."""

from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, embed_dim] as (sin | cos), frequencies 1/10000^(2i/D) (DiT/MAE convention)."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)  # [M, D/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [M, D]


def sincos_2d(
    embed_dim: int,
    grid_h: int,
    grid_w: int,
    base_size: int,
    interpolation_scale: float = 1.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """[grid_h*grid_w, embed_dim] position table, row-major over (h, w); first half encodes x, second y.

    Positions are rescaled so that any grid spans ``base_size`` units, as in PixArt's PatchEmbed.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be a multiple of 4 for 2-D sin-cos embeddings, got {embed_dim}.")
    ys = torch.arange(grid_h, dtype=torch.float32, device=device) / (grid_h / base_size) / interpolation_scale
    xs = torch.arange(grid_w, dtype=torch.float32, device=device) / (grid_w / base_size) / interpolation_scale
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
    emb_x = sincos_1d(embed_dim // 2, gx)  # [h*w, D/2]
    emb_y = sincos_1d(embed_dim // 2, gy)  # [h*w, D/2]
    return torch.cat([emb_x, emb_y], dim=1).float()  # [h*w, D]
