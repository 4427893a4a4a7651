"""Depth and mask files on disk: 16-bit PNG, ``.npy`` / ``.npz``, ETH3D raw float32; atomic writes.

Reading never guesses: a PNG must be 16-bit (or 8-bit with an explicit scale), a float file keeps its values, and
invalid pixels (0, NaN, ±Inf) are reported as such through the validity mask, never turned into numbers. EXR files
are read through ``io/exr.py`` (the ASWF's OpenEXR package, a dependency): one float channel, kept as it is.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable

import numpy as np

DEPTH_SUFFIXES = (".png", ".npy", ".npz", ".exr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
EXR_IN_ARCHIVE = (
    "EXR depth is read from files in a folder, not from inside a tar archive; extract the archive and point the "
    "root at the folder."
)


def _open_bytes(source: str | bytes) -> io.BytesIO | str:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def read_png_depth(source: str | bytes, scale: float, name: str = "depth") -> np.ndarray:
    """A 16-bit PNG divided by ``scale`` (e.g. 1000 for millimetres) -> float32 [H,W]; 0 stays 0 (= no data)."""
    from PIL import Image

    with Image.open(_open_bytes(source)) as img:
        mode = img.mode
        arr = np.asarray(img)
    if arr.ndim == 3:
        raise ValueError(
            f"{name} is a {arr.shape[2]}-channel PNG ({mode}); depth PNGs must have one channel (16-bit greyscale)."
        )
    if arr.dtype == np.uint8:
        raise ValueError(
            f"{name} is an 8-bit PNG: 256 levels cannot hold depth. Save depth as a 16-bit PNG or a float32 .npy."
        )
    if scale <= 0:
        raise ValueError(f"The PNG depth scale must be > 0 (units per metre, e.g. 1000), got {scale}.")
    return arr.astype(np.float32) / np.float32(scale)


def read_float_depth(source: str | bytes, name: str = "depth") -> np.ndarray:
    """A float array from ``.npy`` / ``.npz`` (first array, or key ``depth``/``x``), squeezed to [H,W]."""
    data = np.load(_open_bytes(source), allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = next((k for k in ("depth", "x", "arr_0") if k in keys), keys[0] if keys else None)
        if key is None:
            raise ValueError(f"{name} is an empty .npz archive.")
        data = data[key]
    arr = np.asarray(data).squeeze()
    if arr.ndim != 2:
        raise ValueError(f"{name} must hold one [H,W] map; it has shape {tuple(np.asarray(data).shape)}.")
    return arr.astype(np.float32)


def read_eth3d_depth(source: str | bytes, height: int = 4032, width: int = 6048, name: str = "depth") -> np.ndarray:
    """ETH3D's raw little-endian float32 depth (no header, inf = no data -> 0), as Marigold reads it."""
    raw = source if isinstance(source, bytes) else open(source, "rb").read()  # noqa: SIM115
    arr = np.frombuffer(raw, dtype=np.float32).copy()
    if arr.size != height * width:
        raise ValueError(f"{name} holds {arr.size} float32 values; ETH3D depth has {height}×{width}.")
    arr[arr == np.inf] = 0.0
    return arr.reshape(height, width)


def read_exr_depth(source: str) -> np.ndarray:
    """A one-channel float EXR (e.g. written by Save Dense) -> float32 [H,W], values as stored."""
    from .exr import read_exr

    values, _, _ = read_exr(source)
    if values.ndim != 2:
        raise ValueError(
            f"'{source}' holds {values.shape[-1]} channels (R, G, B); a depth EXR must hold one (Y) channel."
        )
    return values


def read_depth(source: str, png_scale: float = 1000.0) -> np.ndarray:
    """Read a depth file by its suffix: 16-bit PNG (÷ ``png_scale``), ``.npy``/``.npz`` or one-channel EXR float."""
    suffix = os.path.splitext(source)[1].lower()
    if not os.path.isfile(source):
        raise FileNotFoundError(f"Depth file not found: '{source}'.")
    if suffix == ".png":
        return read_png_depth(source, png_scale, f"'{source}'")
    if suffix in (".npy", ".npz"):
        return read_float_depth(source, f"'{source}'")
    if suffix == ".exr":
        return read_exr_depth(source)
    raise ValueError(f"'{source}' is not a depth file this reader knows; use one of {DEPTH_SUFFIXES}.")


def read_mask(source: str) -> np.ndarray:
    """A validity mask file (PNG: non-zero = valid; ``.npy``: truthy = valid) -> bool [H,W]."""
    suffix = os.path.splitext(source)[1].lower()
    if suffix in (".npy", ".npz"):
        return read_float_depth(source, f"mask '{source}'") != 0
    from PIL import Image

    with Image.open(source) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr != 0


def image_size(source: str) -> tuple[int, int]:
    """(H, W) of an image or depth file without decoding its pixels (PIL header, ``.npy`` header)."""
    suffix = os.path.splitext(source)[1].lower()
    if suffix == ".npy":
        shape = np.load(source, mmap_mode="r").shape
        shape = tuple(s for s in shape if s != 1) or (1, 1)
        if len(shape) != 2:
            raise ValueError(f"'{source}' has shape {shape}; a depth .npy must hold one [H,W] map.")
        return int(shape[0]), int(shape[1])
    if suffix == ".npz":
        h, w = read_float_depth(source, f"'{source}'").shape
        return h, w
    if suffix == ".exr":
        h, w = read_exr_depth(source).shape
        return h, w
    from PIL import Image

    with Image.open(source) as img:
        w, h = img.size
    return h, w


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Write through a temporary file in the same folder, then rename: a reader (or a resumed run) sees either
    nothing or the whole file, never a partial one. ``write(tmp_path)`` writes the data."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{suffix}", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def is_partial(name: str) -> bool:
    """A temporary file left by an interrupted :func:`atomic_write`."""
    return name.startswith(".") and ".partial" in name


def write_depth_npy(path: str, depth: np.ndarray) -> str:
    """Save float32 [H,W] depth as ``.npy`` atomically."""
    arr = np.ascontiguousarray(depth, dtype=np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    return atomic_write(path, write)


def write_depth_png16(path: str, depth_unit: np.ndarray, scale: float = 1.0) -> str:
    """Save [H,W] values in [0, 1] as a 16-bit PNG (round(d·65535)) atomically; ``scale`` (what 1.0 means, e.g.
    8 m for DMP's bedroom depth) is stored in the PNG text chunk ``unidense:scale``. Values outside [0, 1] raise."""
    from PIL import Image, PngImagePlugin

    d = np.asarray(depth_unit, dtype=np.float64)
    if not np.isfinite(d).all():
        raise ValueError(f"Depth for '{path}' has non-finite values; refusing to write them as numbers.")
    if d.min() < -1e-6 or d.max() > 1 + 1e-6:
        raise ValueError(
            f"16-bit PNG holds values in [0, 1]; the depth for '{path}' spans [{d.min():.4g}, {d.max():.4g}]. "
            "Write .npy for raw values."
        )
    codes = np.round(np.clip(d, 0, 1) * 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("unidense:scale", repr(float(scale)))
    return atomic_write(path, lambda tmp: Image.fromarray(codes).save(tmp, format="PNG", pnginfo=info))
