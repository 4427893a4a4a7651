"""Turning decoded prediction images into depth maps, and depth maps into display/ControlNet images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORMALIZE = ("none", "per_image", "per_batch")


@dataclass(frozen=True)
class DepthKind:
    """What a depth map's values mean: ``affine`` (MERGE: affine-invariant depth), ``metric``, ``disparity``."""

    kind: str
    near_is_low: bool  # True: small values are near (depth); False: large values are near (disparity)


MERGE_DEPTH = DepthKind("affine", near_is_low=True)


def decoded_to_unit(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] -> [0, 1], clamped, as diffusers' ``postprocess`` (x/2 + 0.5)."""
    return (decoded / 2 + 0.5).clamp(0, 1)


def merge_depth_from_unit(image: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """MERGE read-out: mean of the 3 decoded channels of an image in [0, 1] -> depth in [0, 1], 0 = near.

    ``image`` is [B,3,H,W] (channel_dim=1) or ComfyUI's [B,H,W,3] (channel_dim=-1); returns [B,H,W].
    """
    if image.shape[channel_dim] < 3:
        raise ValueError(f"Expected a 3-channel decoded image, got shape {tuple(image.shape)}.")
    rgb = image.narrow(channel_dim, 0, 3)
    return rgb.float().mean(dim=channel_dim)


def normalize_depth(depth: torch.Tensor, mode: str = "per_image", eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise [B,H,W] depth to [0, 1] per image or over the whole batch (steadier for video)."""
    if mode not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {mode!r}.")
    if mode == "none":
        return depth
    dims = tuple(range(1, depth.ndim)) if mode == "per_image" else tuple(range(depth.ndim))
    lo = depth.amin(dim=dims, keepdim=True)
    hi = depth.amax(dim=dims, keepdim=True)
    return (depth - lo) / (hi - lo).clamp_min(eps)


def depth_to_display(depth: torch.Tensor, near_is_low: bool = True, near_white: bool = True) -> torch.Tensor:
    """[B,H,W] depth in [0, 1] -> [B,H,W,3] grey image; ``near_white`` gives the MiDaS/ControlNet polarity."""
    if depth.ndim != 3:
        raise ValueError(f"Expected depth of shape [B,H,W], got {tuple(depth.shape)}.")
    img = depth.clamp(0, 1)
    if near_is_low == near_white:
        img = 1 - img
    return img.unsqueeze(-1).expand(*img.shape, 3).contiguous()


def resize_depth(depth: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize [B,H,W] depth (bilinear, align_corners=False, as the official MERGE pipeline)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth[:, None], size=size, mode=mode, align_corners=False)[:, 0]


# ----------------------------------------------------------------------------------------------------------
# JointNet read-out (Zhang et al., ICLR 2024): channel 0 of the decoded depth half, relative disparity.

JOINTNET_DISPARITY = DepthKind("disparity", near_is_low=False)  # MiDaS-style relative disparity: near = bright


def jointnet_depth_from_unit(image: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """JointNet read-out: channel 0 of the decoded depth image in [0, 1] -> [B,H,W] disparity (near = bright).

    ``image`` is [B,3,H,W] (channel_dim=1) or ComfyUI's [B,H,W,3] (channel_dim=-1).
    """
    if image.ndim != 4:
        raise ValueError(f"Expected a decoded image [B,3,H,W] or [B,H,W,3], got shape {tuple(image.shape)}.")
    return image.select(channel_dim, 0).float()


def quantile_normalize(depth: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """The official JointNet ``--normalize``: per image, map the 1% / 99% quantiles to 0 / 1 and clip."""
    if depth.ndim != 3:
        raise ValueError(f"Expected depth of shape [B,H,W], got {tuple(depth.shape)}.")
    flat = depth.float().flatten(1)
    q = torch.quantile(flat, torch.tensor([low, high], dtype=flat.dtype, device=flat.device), dim=1)  # [2,B]
    lo, hi = q[0][:, None, None], q[1][:, None, None]
    return ((depth - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def depth_to_uint16(depth: torch.Tensor) -> torch.Tensor:
    """[..., H, W] values in [0, 1] -> uint16 codes ``round(d · 65535)`` (the official 16-bit PNG export)."""
    return (depth.float().clamp(0, 1) * 65535).round().to(torch.int32).to(torch.uint16)


def save_depth_png16(depth: torch.Tensor, path: str) -> str:
    """Write one [H,W] depth map in [0, 1] as a 16-bit greyscale PNG (needs Pillow)."""
    import numpy as np
    from PIL import Image

    if depth.ndim != 2:
        raise ValueError(f"save_depth_png16 writes one [H,W] map; got shape {tuple(depth.shape)}.")
    codes = depth_to_uint16(depth.detach().cpu()).to(torch.int32).numpy().astype(np.uint16)
    Image.fromarray(codes).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# DMP read-outs (Lee et al., CVPR 2024; decoded prediction image -> task output). ``image`` is the decoded image
# mapped to [0, 1]: ComfyUI's VAEDecode output, or x/2 + 0.5 of the raw decode (unclamped = the official read-out).


def dmp_depth(image: torch.Tensor, target_scale: float = 0.0, channel_dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Official depth read-out (``decode_latents(target_mode='F')``): mean of the 3 channels, clamp ≥ 0, then
    × ``target_scale`` when the checkpoint has one (8 for the bedroom depth model: metres), else min-max per image.

    [B,3,H,W] (channel_dim=1) or [B,H,W,3] (channel_dim=-1) -> [B,H,W] depth (near = small).
    """
    if image.shape[channel_dim] < 3:
        raise ValueError(f"Expected a 3-channel decoded image, got shape {tuple(image.shape)}.")
    if target_scale < 0:
        raise ValueError(f"target_scale must be ≥ 0 (0 = unknown: normalise per image), got {target_scale}.")
    d = image.narrow(channel_dim, 0, 3).float().mean(dim=channel_dim).clamp(min=0)
    if target_scale > 0:
        return d * target_scale
    lo = d.amin(dim=(-2, -1), keepdim=True)
    hi = d.amax(dim=(-2, -1), keepdim=True)
    return (d - lo) / (hi - lo).clamp_min(eps)


def dmp_normals(image: torch.Tensor, channel_dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Normal map image in [0, 1] (official RGB read-out) -> unit vectors in [−1, 1], same layout.

    n = 2·rgb − 1, then normalised to length 1 (the decoder's vectors are only approximately unit length).
    """
    if image.shape[channel_dim] < 3:
        raise ValueError(f"Expected a 3-channel decoded image, got shape {tuple(image.shape)}.")
    n = image.narrow(channel_dim, 0, 3).float() * 2.0 - 1.0
    return n / n.norm(dim=channel_dim, keepdim=True).clamp_min(eps)


def normals_to_image(normals: torch.Tensor, flip_y: bool = False, channel_dim: int = 1) -> torch.Tensor:
    """Unit normals in [−1, 1] -> a [0, 1] visualisation ((n + 1)/2); ``flip_y`` negates the green channel
    (switches between the OpenGL and DirectX conventions)."""
    if flip_y:
        sign = torch.ones(3, dtype=normals.dtype, device=normals.device)
        sign[1] = -1.0
        shape = [1] * normals.ndim
        shape[channel_dim] = 3
        normals = normals * sign.view(shape)
    return ((normals + 1.0) / 2.0).clamp(0, 1)
