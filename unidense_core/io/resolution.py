"""Processing resolutions: PixArt's aspect-ratio bins and checks that a size fits a latent model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PixArt-α 512 aspect-ratio bins, ratio h/w -> (height, width) in pixels, as the official MERGE pipeline uses them
# (`use_resolution_binning=True`). Data from PixArt-α (Apache-2.0), as published in diffusers.
ASPECT_RATIO_512_BIN: dict[str, tuple[int, int]] = {
    "0.25": (256, 1024),
    "0.28": (256, 928),
    "0.32": (288, 896),
    "0.33": (288, 864),
    "0.35": (288, 832),
    "0.4": (320, 800),
    "0.42": (320, 768),
    "0.48": (352, 736),
    "0.5": (352, 704),
    "0.52": (352, 672),
    "0.57": (384, 672),
    "0.6": (384, 640),
    "0.68": (416, 608),
    "0.72": (416, 576),
    "0.78": (448, 576),
    "0.82": (448, 544),
    "0.88": (480, 544),
    "0.94": (480, 512),
    "1.0": (512, 512),
    "1.07": (512, 480),
    "1.13": (544, 480),
    "1.21": (544, 448),
    "1.29": (576, 448),
    "1.38": (576, 416),
    "1.46": (608, 416),
    "1.67": (640, 384),
    "1.75": (672, 384),
    "2.0": (704, 352),
    "2.09": (736, 352),
    "2.4": (768, 320),
    "2.5": (800, 320),
    "3.0": (864, 288),
    "4.0": (1024, 256),
}


def classify_bin(height: int, width: int, bins: dict[str, tuple[int, int]] = ASPECT_RATIO_512_BIN) -> tuple[int, int]:
    """The bin whose ratio is closest to height/width (ties: the first listed, as diffusers)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image is {width}×{height} px; an image needs at least one pixel on each side.")
    ratio = height / width
    key = min(bins, key=lambda r: abs(float(r) - ratio))
    return bins[key]


def check_multiple(height: int, width: int, multiple: int, name: str = "image") -> None:
    """Raise a ValueError naming the input and the nearest valid sizes when a side is not a multiple."""
    if height % multiple == 0 and width % multiple == 0:
        return

    def near(v: int) -> str:
        lo = max(multiple, v // multiple * multiple)
        return f"{lo} or {lo + multiple}" if lo != v else str(v)

    raise ValueError(
        f"{name} is {width}×{height} px, but both sides must be multiples of {multiple} px here. "
        f"Resize or crop it to width {near(width)} and height {near(height)}, or use the official resolution bins."
    )


# ----------------------------------------------------------------------------------------------------------
# Processing resolution for dense estimators (diffusers Marigold semantics, shared by the UniDense estimators)

RESIZE_SIDES = ("longer", "shorter")  # longer: diffusers Marigold; shorter: DMP's official __call__ (512)
MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION: no processing size may have a longer side than this (or than the input)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(value / multiple + 0.5) * multiple)


def processing_size(
    height: int,
    width: int,
    processing_resolution: int,
    multiple: int = 8,
    side: str = "longer",
    max_side: int = MAX_SIDE,
) -> tuple[int, int]:
    """(height, width) at which to run an estimator, aspect ratio kept.

    ``processing_resolution`` is the length of the ``side`` ("longer" as diffusers Marigold, "shorter" as DMP's
    official pipeline); 0 keeps the native size. Both sides are then rounded to the nearest multiple of
    ``multiple`` (the VAE factor 8), so the result may differ from the input aspect by < 1 multiple. A result whose
    longer side exceeds ``max_side`` (and the input's) is refused: a thin strip scaled on its shorter side would
    otherwise ask for tens of GiB.
    """
    if side not in RESIZE_SIDES:
        raise ValueError(f"side must be one of {RESIZE_SIDES}, got {side!r}.")
    if processing_resolution < 0 or processing_resolution % multiple:
        raise ValueError(
            f"processing_resolution must be 0 (native size) or a positive multiple of {multiple}, "
            f"got {processing_resolution}."
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}.")
    if processing_resolution == 0:
        return _round_to(height, multiple), _round_to(width, multiple)
    ref = max(height, width) if side == "longer" else min(height, width)
    scale = processing_resolution / ref
    out = _round_to(height * scale, multiple), _round_to(width * scale, multiple)
    limit = max(max_side, _round_to(max(height, width), multiple))
    if max(out) > limit:
        raise ValueError(
            f"processing_resolution {processing_resolution} on the {side} side of this {width}×{height} image gives "
            f"{out[1]}×{out[0]} px, over the limit of {limit} px per side ({4 * 3 * out[0] * out[1] / 2**30:.1f} GiB "
            "per image). Use side 'longer', a smaller processing_resolution, or crop the image to a less extreme "
            "aspect ratio."
        )
    return out


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize [B,C,H,W] to ``size`` (antialiased when shrinking, as Marigold); unchanged if already that size."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    aa = shrink and mode in ("bilinear", "bicubic")
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(image, size=tuple(size), mode=mode, align_corners=align, antialias=aa)


def resize_for_processing(
    image: torch.Tensor, processing_resolution: int, multiple: int = 8, side: str = "longer", mode: str = "bicubic"
) -> torch.Tensor:
    """[B,C,H,W] image in [0, 1] -> the processing size of :func:`processing_size`, clamped to [0, 1]."""
    size = processing_size(image.shape[-2], image.shape[-1], processing_resolution, multiple, side)
    return resize_image(image, size, mode).clamp(0, 1)
