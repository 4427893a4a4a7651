"""A synthetic video with exact depth: a shaded sphere moving across a textured, tilted plane (for the video tests
and benchmarks/video_depth.py)."""

from __future__ import annotations

import torch


def moving_sphere(frames: int = 8, height: int = 64, width: int = 64, radius: float = 10.0, seed: int = 0):
    """(images [T,3,H,W] in [0, 1], depth [T,H,W] in scene units, static [H,W] bool: pixels never covered).

    The plane's depth grows from 3 (bottom) to 5 (top); the sphere (centre depth 2) crosses from left to right."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    plane_depth = 3.0 + 2.0 * (1.0 - y / (height - 1))
    grain = torch.rand(3, height, width, generator=g) * 0.15
    plane = (
        torch.stack(
            [
                0.5 + 0.3 * torch.sin(x / 3.0) * torch.cos(y / 5.0),
                0.4 + 0.3 * torch.sin((x + y) / 4.0),
                0.5 + 0.25 * torch.cos(x / 7.0 - y / 3.0),
            ]
        )
        + grain
    )  # [3,H,W]
    images, depths, covered = [], [], torch.zeros(height, width, dtype=torch.bool)
    for t in range(frames):
        cx = radius + 1 + (width - 2 * radius - 3) * t / max(frames - 1, 1)
        cy = height / 2
        rho2 = (x - cx) ** 2 + (y - cy) ** 2
        inside = rho2 < radius**2
        cap = torch.sqrt((radius**2 - rho2).clamp_min(0)) / radius  # 0 at the rim, 1 at the centre
        depth = torch.where(inside, 2.0 - 0.8 * cap, plane_depth)
        shade = 0.25 + 0.75 * cap  # lit from the viewer
        sphere = torch.stack([0.9 * shade, 0.3 * shade, 0.2 + 0.5 * shade])
        images.append(torch.where(inside[None], sphere, plane).clamp(0, 1))
        depths.append(depth)
        covered |= inside
    return torch.stack(images), torch.stack(depths), ~covered
