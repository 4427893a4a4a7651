"""Processing resolutions: PixArt's aspect-ratio bins and checks that a size fits a latent model."""

from __future__ import annotations

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
