"""32-bit float OpenEXR files through the ASWF's official binding (``pip install OpenEXR``, imported lazily).

One part, scan lines, ZIP (lossless) compression, every channel FLOAT: what is written is read back bit for bit,
NaN and ±Inf included. String header attributes carry what the values mean (kind, units, camera, …).
"""

from __future__ import annotations

import os

import numpy as np

CHANNELS = {1: "Y", 3: "RGB"}  # [H,W] -> one luminance channel "Y"; [H,W,3] -> "R", "G", "B"


def require_openexr():
    """Import OpenEXR, or say how to get it."""
    try:
        import OpenEXR
    except ImportError as exc:
        raise ImportError(
            "Writing and reading EXR files needs the 'OpenEXR' package (the ASWF's official binding), a dependency "
            "of UniDense. Install it into ComfyUI's Python with `pip install OpenEXR`, then restart ComfyUI."
        ) from exc
    return OpenEXR


def write_exr(path: str, values: np.ndarray, attributes: dict[str, str] | None = None, extra=None) -> str:
    """Write [H,W] (channel "Y") or [H,W,3] (channels R, G, B) float32 values, plus optional ``extra`` named [H,W]
    float32 channels and string header ``attributes``; returns ``path``."""
    openexr = require_openexr()
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 2:
        channels = {"Y": values}
    elif values.ndim == 3 and values.shape[-1] == 3:
        channels = {"RGB": values}
    else:
        raise ValueError(f"An EXR holds [H,W] or [H,W,3] values here; got shape {values.shape}.")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"Nothing to write: the map is {values.shape[1]}×{values.shape[0]} pixels.")
    for name, plane in (extra or {}).items():
        plane = np.ascontiguousarray(plane, dtype=np.float32)
        if plane.shape != values.shape[:2]:
            raise ValueError(f"Channel {name!r} is {plane.shape}, the image {values.shape[:2]}.")
        channels[name] = plane
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    for key, value in (attributes or {}).items():
        header[key] = str(value)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with openexr.File(header, channels) as f:
        f.write(path)
    return path


def read_exr(path: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """Read a file written by :func:`write_exr` (or any one-part float EXR with Y or R, G, B): (values [H,W] or
    [H,W,3] float32, the other channels by name, the string header attributes)."""
    openexr = require_openexr()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EXR file '{path}' does not exist.")
    try:
        with openexr.File(path) as f:  # copies: the binding empties its objects when the file closes
            channels = {name: np.array(ch.pixels, copy=True) for name, ch in f.channels().items()}
            header = dict(f.header())
    except RuntimeError as exc:  # what the binding raises for a truncated or foreign file
        raise ValueError(f"'{path}' is not a readable EXR file ({exc}); export it again as a float EXR.") from exc
    if "RGB" in channels:
        values = channels.pop("RGB")
    elif "Y" in channels:
        values = channels.pop("Y")
    else:
        raise ValueError(f"'{path}' has channels {sorted(channels)}; expected Y (one value) or R, G, B.")
    if values.dtype != np.float32:
        values = values.astype(np.float32)  # a half-float file from elsewhere: exact in float32
    attributes = {k: v for k, v in header.items() if isinstance(v, str)}
    return values, channels, attributes
