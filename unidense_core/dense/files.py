"""A :class:`DenseMap` to files that keep its values: 32-bit float EXR, ``.npy``, 16-bit PNG, each saying what the
values mean where the format allows (EXR header attributes, a PNG text chunk).

* EXR: float32 as computed (bit-identical on reading), depth/disparity in channel Y, normals in R, G, B; a ``valid``
  channel (1/0) when the map has invalid pixels; attributes ``unidense:kind``, ``…:scale``, ``…:units`` etc.
* ``.npy``: the raw float32 array ([H,W] or [H,W,3]), nothing else (NumPy's own format, ``np.load`` reads it).
* 16-bit PNG: one channel, ``round((v − low) / (high − low) · 65535)``; low/high and the meaning go into an
  ``unidense`` text chunk, so :func:`read_png16` gives the values back within (high − low) / 65535 / 2. Values outside
  a fixed range are refused rather than clipped; invalid pixels are written as code 0 (use EXR to keep the mask).

Normals are written in the convention asked for (OpenGL y up or DirectX y down).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..io.exr import read_exr, write_exr
from .convert import convert_normals, value_range
from .maps import DenseMap

FORMATS = ("exr", "npy", "png16")
PNG_KEY = "unidense"


def metadata(dense: DenseMap, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the values mean, as strings (for EXR attributes, PNG text, 3D files)."""
    meta = {"kind": dense.kind, "scale": dense.scale, "units": dense.units, "source": dense.source}
    if dense.kind == "normals":
        meta["convention"] = dense.convention
    meta["description"] = dense.describe()
    meta.update(extra or {})
    return meta


def _prepare(dense: DenseMap, index: int, convention: str) -> tuple[DenseMap, np.ndarray]:
    if not 0 <= index < dense.batch_size:
        raise ValueError(f"index {index} is outside the batch of {dense.batch_size}.")
    one = dense.select(index)
    if one.kind == "normals":
        one = convert_normals(one, convention)
    return one, one.values[0].detach().float().cpu().numpy()


def save_exr(dense: DenseMap, index: int, path: str, convention: str = "opengl") -> str:
    """Batch item ``index`` as a float32 EXR (see the module notes); returns ``path``."""
    one, values = _prepare(dense, index, convention)
    extra = None if one.valid is None else {"valid": one.valid[0].cpu().numpy().astype(np.float32)}
    attrs = {f"{PNG_KEY}:{k}": v for k, v in metadata(one).items()}
    return write_exr(path, values, attrs, extra)


def save_npy(dense: DenseMap, index: int, path: str, convention: str = "opengl") -> str:
    """Batch item ``index``'s raw float32 values as ``.npy``; returns ``path``."""
    _, values = _prepare(dense, index, convention)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.save(path, values)
    return path


def save_png16(dense: DenseMap, index: int, path: str, low: float, high: float) -> str:
    """Batch item ``index`` (depth or disparity) as a 16-bit greyscale PNG over [low, high]; returns ``path``."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if dense.kind == "normals":
        raise ValueError("A 16-bit PNG holds one channel here; save normals as EXR or npy.")
    if not (high > low) or not np.isfinite([low, high]).all():
        raise ValueError(f"The PNG range needs finite high > low, got low={low}, high={high}.")
    one, values = _prepare(dense, index, "")
    valid = one.valid_mask()[0].cpu().numpy()
    v = values[valid]
    if v.size and (v.min() < low or v.max() > high):
        raise ValueError(
            f"Image {index} holds values in [{v.min():.6g}, {v.max():.6g}] outside the PNG range [{low:.6g}, "
            f"{high:.6g}], which a 16-bit PNG would clip. Use range per_image or per_batch, widen the fixed range, or "
            "save as EXR."
        )
    codes = np.where(valid, np.rint((values - low) / (high - low) * 65535), 0).astype(np.uint16)
    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(metadata(one, {"low": repr(float(low)), "high": repr(float(high))})))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(codes).save(path, pnginfo=info)
    return path


def read_png16(path: str) -> tuple[np.ndarray, dict[str, str]]:
    """A PNG written by :func:`save_png16` -> (values [H,W] float32 mapped back to [low, high], its metadata)."""
    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get(PNG_KEY)
        codes = np.asarray(im).astype(np.float64)
    if text is None:
        raise ValueError(f"'{path}' has no '{PNG_KEY}' text chunk, so its value range is unknown.")
    meta = json.loads(text)
    low, high = float(meta["low"]), float(meta["high"])
    return (low + codes / 65535 * (high - low)).astype(np.float32), meta


def read_exr_dense(path: str) -> tuple[np.ndarray, dict[str, str]]:
    """An EXR written by :func:`save_exr` -> (values, its metadata without the ``unidense:`` prefix)."""
    values, _, attrs = read_exr(path)
    prefix = f"{PNG_KEY}:"
    return values, {k[len(prefix) :]: v for k, v in attrs.items() if k.startswith(prefix)}


def png_ranges(dense: DenseMap, mode: str, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """[B, 2] (low, high) each 16-bit PNG spans: the valid values' range per image or per batch, or a fixed one."""
    rng = value_range(dense, mode, low, high)
    flat = rng[:, 1] <= rng[:, 0]  # a constant map: any positive span keeps its value exactly
    rng[flat, 1] = rng[flat, 0] + 1
    return rng


def save_dense(dense: DenseMap, index: int, path: str, fmt: str, convention: str = "opengl", low=0.0, high=1.0):
    """Batch item ``index`` in format ``fmt`` (:data:`FORMATS`); ``low``/``high`` only for png16."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")
    if fmt == "exr":
        return save_exr(dense, index, path, convention)
    if fmt == "npy":
        return save_npy(dense, index, path, convention)
    return save_png16(dense, index, path, low, high)
