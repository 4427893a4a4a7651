"""One dense representation for every estimator: float values that say what they are.

A :class:`DenseMap` carries a batch of depth, disparity or normal maps as float32 (never clamped, never quantised)
together with their meaning: the quantity (``kind``), what is known about its scale (``scale``, ``units``), which
pixels are valid, which method made it, and for normals the axis convention. Nodes pass it on the
``UNIDENSE_DENSE`` socket; conversions to ComfyUI's IMAGE/MASK, colour maps, files and point clouds read it.

Polarity follows from the kind: depth grows with distance (near = low), disparity shrinks with it (near = high).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..io.checks import check_finite

KINDS = ("depth", "disparity", "normals")
SCALES = {
    "affine": "known up to an unknown scale and shift (affine-invariant)",
    "scale": "known up to an unknown scale (scale-invariant)",
    "metric": "absolute, in `units`",
}
NORMAL_CONVENTIONS = {
    "opengl": "x right, y up, z towards the viewer (OpenGL, Blender)",
    "directx": "x right, y down, z towards the viewer (DirectX, Unreal)",
}


@dataclass(frozen=True)
class DenseMap:
    """A batch of dense predictions with their meaning.

    ``values``: depth/disparity [B,H,W] or normals [B,H,W,3] (unit vectors), float32.
    ``kind``: "depth" (near = low), "disparity" (near = high) or "normals".
    ``scale``: "affine", "scale" or "metric" (see :data:`SCALES`); ``units`` names the unit of metric values ("m").
    ``valid``: [B,H,W] bool, False where the value means nothing (sky, invalid pixels); None = all valid.
    ``source``: the method that made it ("merge-b", "merge-l", "dmp", "jointnet", "file", …).
    ``convention``: the axes of normals (:data:`NORMAL_CONVENTIONS`); "" for depth and disparity.
    """

    values: torch.Tensor
    kind: str
    scale: str = "affine"
    units: str = ""
    valid: torch.Tensor | None = None
    source: str = ""
    convention: str = ""

    def __post_init__(self) -> None:
        v = self.values
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(f"DenseMap values must be a floating-point tensor, got {type(v).__name__}.")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {tuple(SCALES)}, got {self.scale!r}.")
        if self.kind == "normals":
            if v.ndim != 4 or v.shape[-1] != 3:
                raise ValueError(f"normals must be [B,H,W,3], got shape {tuple(v.shape)}.")
            if self.convention not in NORMAL_CONVENTIONS:
                raise ValueError(f"normals need a convention in {tuple(NORMAL_CONVENTIONS)}, got {self.convention!r}.")
        else:
            if v.ndim != 3:
                raise ValueError(f"{self.kind} must be [B,H,W], got shape {tuple(v.shape)}.")
            if self.convention:
                raise ValueError(f"only normals have an axis convention; {self.kind} got {self.convention!r}.")
        if self.scale == "metric" and not self.units:
            raise ValueError("metric values need their units (e.g. units='m').")
        if 0 in v.shape:
            raise ValueError(f"DenseMap values are empty: shape {tuple(v.shape)}.")
        if self.valid is not None:
            if self.valid.dtype != torch.bool or tuple(self.valid.shape) != tuple(v.shape[:3]):
                raise ValueError(
                    f"valid must be a bool mask [B,H,W] = {tuple(v.shape[:3])}, got {self.valid.dtype} "
                    f"{tuple(self.valid.shape)}."
                )
        check_finite(v if self.valid is None else v[self.valid], f"{self.kind} values")

    # ------------------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.values.shape[1:3])

    @property
    def near_is_low(self) -> bool:
        """True for depth (near = small values), False for disparity; normals have no polarity."""
        if self.kind == "normals":
            raise ValueError("normals have no near/far polarity.")
        return self.kind == "depth"

    def valid_mask(self) -> torch.Tensor:
        """[B,H,W] bool, all True when no mask was given."""
        if self.valid is None:
            return torch.ones(self.values.shape[:3], dtype=torch.bool, device=self.values.device)
        return self.valid

    def replace(self, **changes) -> DenseMap:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def select(self, index: int | slice | torch.Tensor) -> DenseMap:
        """Batch items ``index`` (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.replace(values=self.values[index], valid=None if self.valid is None else self.valid[index])

    def describe(self) -> str:
        """One line for tooltips, file metadata and logs."""
        what = {"depth": "depth (near = low)", "disparity": "disparity (near = high)", "normals": "normals"}[self.kind]
        scale = f"metric in {self.units}" if self.scale == "metric" else SCALES[self.scale].split(" (")[0]
        extra = f", {NORMAL_CONVENTIONS[self.convention]}" if self.kind == "normals" else ""
        src = f" from {self.source}" if self.source else ""
        b, h, w = self.values.shape[:3]
        return f"{what}, {scale}{extra}{src}; {b}×{h}×{w}"


def cat(maps: list[DenseMap]) -> DenseMap:
    """Concatenate batches of maps that mean the same thing (kind, scale, units, convention must agree)."""
    if not maps:
        raise ValueError("cat needs at least one DenseMap.")
    first = maps[0]
    for i, m in enumerate(maps[1:], 1):
        for field in ("kind", "scale", "units", "convention"):
            if getattr(m, field) != getattr(first, field):
                raise ValueError(
                    f"map {i} has {field} {getattr(m, field)!r} but map 0 has {getattr(first, field)!r}; "
                    "only maps of the same meaning can be batched."
                )
        if m.size != first.size:
            raise ValueError(f"map {i} is {m.size[1]}×{m.size[0]} but map 0 is {first.size[1]}×{first.size[0]}.")
    valid = None
    if any(m.valid is not None for m in maps):
        valid = torch.cat([m.valid_mask() for m in maps])
    source = first.source if all(m.source == first.source for m in maps) else "mixed"
    return first.replace(values=torch.cat([m.values for m in maps]), valid=valid, source=source)
