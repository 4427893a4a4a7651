"""Channel-wise RGB-D inpainting for JointNet (Zhang et al., ICLR 2024, §3.5), as the official inpaint pipeline.

Masks are per modality, 1 = generate, 0 = keep. Image→depth (``rgb2j``) keeps all RGB channels and generates all
depth channels; ``j2rgb`` is the reverse; free masks edit regions of either. Masks are binarised at 0.5 in pixel
space, resized to the latent with nearest-neighbour, and after every sampler step the kept channels are replaced
by the known latent noised to the next timestep with the same noise tensor throughout (RePaint-style blend; the
last step writes the clean latent). The inpainting model also sees ``[m, (m<0.5)·z0]`` of both branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..io.checks import check_finite

# Preset -> (RGB mask, depth mask) fill values, 1 = generate. "joint" is plain joint generation.
PRESETS: dict[str, tuple[float, float]] = {
    "rgb2j": (0.0, 1.0),  # image -> depth: keep the image, generate the depth
    "j2rgb": (1.0, 0.0),  # depth -> image: keep the depth, generate the image
    "joint": (1.0, 1.0),  # text -> RGB-D
}
MODES = (*PRESETS, "custom")


def as_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """[H,W], [B,H,W] (ComfyUI MASK) or [B,1,H,W] in [0, 1] -> float [B,1,H,W]; errors name the input."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(mask).__name__}.")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    elif mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{name} must be [H,W], [B,H,W] or [B,1,H,W]; got shape {tuple(mask.shape)}.")
    mask = check_finite(mask, name, "B1HW").float()  # a NaN must never mean 'keep' (NaN >= 0.5 is False)
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"{name} must hold values in [0, 1] (1 = generate, 0 = keep).")
    return mask


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """The official binarisation: values >= 0.5 become 1 (generate), the rest 0 (keep)."""
    return (mask >= 0.5).to(mask.dtype)


def check_mask_size(mask: torch.Tensor, size: tuple[int, int], name: str, reference: str) -> None:
    if tuple(mask.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{name} is {mask.shape[-1]}×{mask.shape[-2]} but {reference} is {size[1]}×{size[0]}; masks must have "
            f"the size of the images they belong to. Resize the mask (or the image) so both match."
        )


def preset_masks(
    preset: str, batch: int, size: tuple[int, int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB mask, depth mask) [B,1,H,W] of a preset."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r} (use free masks for 'custom').")
    fill_rgb, fill_depth = PRESETS[preset]
    shape = (batch, 1, *size)
    return torch.full(shape, fill_rgb, device=device), torch.full(shape, fill_depth, device=device)


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Binarised pixel mask [B,1,H,W] -> latent size with nearest-neighbour (F.interpolate's default, as official).

    A mask already at the latent size is only binarised.
    """
    mask = binarize(as_mask(mask))
    if tuple(mask.shape[-2:]) != tuple(latent_size):
        mask = F.interpolate(mask, size=tuple(latent_size))  # mode="nearest"
    return mask


def channel_mask(mask_rgb: torch.Tensor, mask_depth: torch.Tensor, channels: int = 4) -> torch.Tensor:
    """Per-modality latent masks [B,1,h,w] -> the per-channel mask of the joint latent [B,2C,h,w] (1 = generate)."""
    b = max(mask_rgb.shape[0], mask_depth.shape[0])
    return torch.cat(
        [mask_rgb.expand(b, channels, -1, -1), mask_depth.to(mask_rgb).expand(b, channels, -1, -1)], dim=1
    )  # [B,8,h,w]


def masked_condition(
    mask_rgb: torch.Tensor, z_rgb: torch.Tensor, mask_depth: torch.Tensor, z_depth: torch.Tensor
) -> torch.Tensor:
    """The inpainting model's extra input ``[m_rgb, (m_rgb<0.5)·z_rgb, m_d, (m_d<0.5)·z_d]`` [B,10,h,w].

    The latents are of the *full* inputs, masked in latent space (the official pipeline, unlike SD inpainting,
    does not encode a masked image). Latents are model-space (scaled by the VAE factor).
    """
    b = max(mask_rgb.shape[0], mask_depth.shape[0], z_rgb.shape[0], z_depth.shape[0])

    def half(m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        m = m.to(z).expand(b, -1, -1, -1)
        return torch.cat([m, (m < 0.5).to(z) * z.expand(b, -1, -1, -1)], dim=1)  # [B,5,h,w]

    return torch.cat([half(mask_rgb, z_rgb), half(mask_depth, z_depth)], dim=1)  # [B,10,h,w]


def repaint_blend(z: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1 − M)·known + M·z`` for a binary channel mask M; kept channels are bit-identical to ``known``."""
    return torch.where(mask.to(z.device) >= 0.5, z, known.to(z))


def join_rgbd(rgb: torch.Tensor, depth: torch.Tensor, channels: int = 4) -> torch.Tensor:
    """An RGB and a depth latent [B,4,h,w] -> the joint latent [B,8,h,w] (RGB first, as JointNet)."""
    for name, z in (("rgb", rgb), ("depth", depth)):
        if z.ndim != 4 or z.shape[1] != channels:
            got = f"{z.shape[1]} channels" if z.ndim == 4 else f"shape {tuple(z.shape)}"
            hint = (
                " It looks like a joint RGB-D latent already; split it first."
                if z.ndim == 4 and z.shape[1] == 2 * channels
                else ""
            )
            raise ValueError(f"The {name} latent must have {channels} channels, got {got}.{hint}")
    if rgb.shape[-2:] != depth.shape[-2:]:
        raise ValueError(
            f"The rgb latent is {tuple(rgb.shape[-2:])} but the depth latent is {tuple(depth.shape[-2:])}."
        )
    if rgb.shape[0] != depth.shape[0] and 1 not in (rgb.shape[0], depth.shape[0]):
        raise ValueError(f"Batch sizes differ: rgb {rgb.shape[0]}, depth {depth.shape[0]}.")
    b = max(rgb.shape[0], depth.shape[0])
    return torch.cat([rgb.expand(b, -1, -1, -1), depth.to(rgb).expand(b, -1, -1, -1)], dim=1)  # [B,8,h,w]


def split_rgbd(latent: torch.Tensor, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint latent [B,8,h,w] -> (RGB [B,4,h,w], depth [B,4,h,w])."""
    if latent.ndim != 4 or latent.shape[1] != 2 * channels:
        raise ValueError(
            f"Expected a joint RGB-D latent with {2 * channels} channels, got shape {tuple(latent.shape)}"
            + (" (a plain latent: nothing to split)." if latent.ndim == 4 and latent.shape[1] == channels else ".")
        )
    return latent[:, :channels], latent[:, channels:]


def depth_image_to_model_input(depth: torch.Tensor, near_white: bool = True) -> torch.Tensor:
    """Depth image [B,3|1,H,W] in [0, 1] -> the JointNet VAE input [B,3,H,W] in [-1, 1] (disparity, near = bright).

    JointNet was trained on MiDaS-style disparity (near = bright); ``near_white=False`` inverts a near-dark map.
    """
    if depth.ndim != 4 or depth.shape[1] not in (1, 3):
        raise ValueError(f"depth must be [B,1|3,H,W], got {tuple(depth.shape)}.")
    d = depth.float().clamp(0, 1)
    if not near_white:
        d = 1 - d
    return d.expand(-1, 3, -1, -1) * 2 - 1
