"""Synthetic RGB-D scenes with exact depth: a slanted back wall and spheres at known depths, colour-coded.

For the tests, the benchmarks and the self-check: every pixel's depth is known analytically, so training runs can
be judged by AbsRel against the truth. Images are rendered with an orthographic camera; the red/blue balance
encodes depth relative to the scene's range and green the shading, so a tiny model can learn depth from colour in
a few hundred steps, while an untrained model that passes the image through (DMP starts from the image latent)
predicts nothing: the channel mean carries no depth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scene:
    rgb: np.ndarray  # [H,W,3] uint8
    depth: np.ndarray  # [H,W] float32 metres, 0 where invalid
    valid: np.ndarray  # [H,W] bool


def render_scene(height: int, width: int, seed: int, hole: bool = False) -> Scene:
    """One scene: wall at 3-6 m tilted up to ±1.5 m across the image, 1-2 spheres at 1.2-2.8 m; optional hole."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    # 1. The wall: a plane with its own albedo and a faint stripe texture.
    d0, gx, gy = rng.uniform(3.0, 6.0), rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
    depth = d0 + gx * (u - 0.5) + gy * (v - 0.5)
    normal = np.stack(np.broadcast_arrays(-gx / 4, -gy / 4, -1.0 + 0 * u), axis=-1)
    albedo = np.broadcast_to(rng.uniform(0.8, 1.0, 3), (height, width, 3)).copy()
    albedo *= (0.92 + 0.08 * np.sin(2 * np.pi * 6 * (u + v)))[..., None]
    # 2. Spheres in front: z = zc - R·sqrt(1 - ρ²) with R in metres over an image-space radius r.
    for _ in range(rng.integers(1, 3)):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.25)
        zc, radius_m = rng.uniform(1.2, 2.8), rng.uniform(0.3, 0.8)
        rho2 = ((u - cx) ** 2 + (v - cy) ** 2) / r**2
        inside = rho2 < 1
        nz = np.sqrt(np.clip(1 - rho2, 0, 1))
        z = zc - radius_m * nz
        hit = inside & (z < depth)
        depth = np.where(hit, z, depth)
        n_sphere = np.stack([(u - cx) / r, (v - cy) / r, -nz], axis=-1)
        normal = np.where(hit[..., None], n_sphere, normal)
        albedo = np.where(hit[..., None], rng.uniform(0.75, 1.0, 3), albedo)
    # 3. Colour-coded relative depth (red = far, blue = near; the channel mean does not depend on depth), green =
    #    Lambert shading, all times a little albedo texture: a per-pixel linear map of the colour recovers depth, so
    #    a tiny model learns it quickly, while copying the image (an untrained model) predicts nothing.
    normal = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([0.4, -0.5, -0.77])
    light = light / np.linalg.norm(light)
    shade = np.clip(normal @ light, 0, 1)
    rel = (depth - depth.min()) / (depth.max() - depth.min())
    rgb = np.stack([0.15 + 0.7 * rel, 0.2 + 0.6 * shade, 0.85 - 0.7 * rel], axis=-1) * (0.9 + 0.1 * albedo)
    valid = np.ones((height, width), dtype=bool)
    if hole:  # a rectangle without measurements, as real sensors leave
        h0, w0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        valid[h0 : h0 + height // 4, w0 : w0 + width // 4] = False
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    return Scene((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth, valid)


def write_scene_folder(
    root: str | os.PathLike,
    count: int,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    depth_format: str = "png",
    holes: bool = True,
) -> list[str]:
    """Write ``count`` scenes as a plain pair folder: ``rgb/<name>.png`` + ``depth/<name>.png`` (16-bit mm) or
    ``.npy`` (float metres). Every third scene gets a hole (0 = no data) when ``holes``. Returns the names."""
    from PIL import Image

    root = os.fspath(root)
    os.makedirs(os.path.join(root, "rgb"), exist_ok=True)
    os.makedirs(os.path.join(root, "depth"), exist_ok=True)
    names = []
    for i in range(count):
        scene = render_scene(height, width, seed * 100_003 + i, hole=holes and i % 3 == 2)
        name = f"scene_{i:04d}"
        Image.fromarray(scene.rgb).save(os.path.join(root, "rgb", name + ".png"))
        if depth_format == "png":
            mm = np.round(scene.depth * 1000).astype(np.uint16)
            Image.fromarray(mm).save(os.path.join(root, "depth", name + ".png"))
        elif depth_format == "npy":
            np.save(os.path.join(root, "depth", name + ".npy"), scene.depth)
        else:
            raise ValueError(f"depth_format must be 'png' or 'npy', got {depth_format!r}.")
        names.append(name)
    return names
