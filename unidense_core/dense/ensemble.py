"""Ensembles: N predictions of the same image combined into one map, with the spread across them as uncertainty.

The diffusion estimators give a different map for every starting noise (MERGE-B, MERGE-L, JointNet rgb2j); DMP is
deterministic, so its members come from test-time augmentation instead (the image and its horizontal mirror, the
mirror undone before combining). Ensembling follows Marigold (Ke et al., CVPR 2024; diffusers'
``MarigoldDepthPipeline.ensemble_depth``): align the members' unknown scale and shift, then take the pixelwise median
or mean; the uncertainty is the spread of the aligned members. What differs from Marigold, and why:

* alignment is closed-form least squares to a common reference, not BFGS over all pairs with a [0, 1] regulariser:
  the reference starts as the pixelwise median of the raw members and becomes the combined map after each round
  (``iterations`` rounds, default 2), so the result never depends on the order of the members; after each fit the
  common affine freedom is fixed to mean scale 1 and mean shift 0 over the members (:func:`_fix_gauge`), without which
  repeated fits of noisy members shrink the map and its uncertainty towards 0 (regression dilution);
* everything is float32 (Marigold's SciPy path goes through float64, which MPS lacks: kijai/ComfyUI-Marigold#22);
* raw values are kept: the combined map keeps the members' average scale (members in [0, 1] stay near [0, 1]), it is not
  re-normalised to [0, 1], and the uncertainty is in the same units as the combined map;
* the median of an even number of members is the mean of the two middle values (``torch.median``, which Marigold
  uses, returns the lower one).

Uncertainty per pixel (depth and disparity): with ``reduction="median"`` the median absolute deviation from the median
(MAD, unscaled, as Marigold; × 1.4826 estimates a normal σ); with ``"mean"`` the standard deviation of the aligned
members (population form, divided by N, so one member gives 0, not NaN). Normals: the mean angle between each member
and the combined direction, in radians / π (0 = all agree, 1 = opposite), as Marigold's ``ensemble_normals``.

Batch layout (member-major, as ComfyUI's RepeatLatentBatch and its conditioning broadcast): a batch of N·B maps holds
member 0 of every image, then member 1, …; member j of image b is item ``j·B + b``.

Members are aligned with ``dense.align.batched_scale_shift`` (float32, all maps at once, exact under permutations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..io.checks import check_finite
from .align import batched_scale_shift
from .maps import DenseMap

REDUCTIONS = ("median", "mean")
ALIGNMENTS = ("auto", "scale_shift", "scale", "none")  # auto: by the map's scale (affine / scale / metric)
AUGMENTATIONS = ("noise", "hflip")  # noise: members differ by their noise; hflip: odd members are mirrored
MAX_MEMBERS = 64
DEFAULT_ITERATIONS = 2
MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of normally distributed members
_AUTO = {"affine": "scale_shift", "scale": "scale", "metric": "none"}


@dataclass(frozen=True)
class Ensemble:
    """An ensemble's result. ``values`` [B,H,W] (or [B,H,W,3] normals), ``uncertainty`` [B,H,W] (0 where invalid),
    ``valid`` [B,H,W] (a pixel is valid where any member is), ``scales``/``shifts`` [N,B]: each member's alignment
    (aligned = scale · member + shift)."""

    values: torch.Tensor
    uncertainty: torch.Tensor
    valid: torch.Tensor
    scales: torch.Tensor
    shifts: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Checks and layout


def check_ensemble_size(n: object, name: str = "ensemble_size") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_MEMBERS:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_MEMBERS}, got {n!r}.")
    return n


def check_reduction(reduction: object, name: str = "reduction") -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def split_members(x: torch.Tensor, n: int, name: str = "members") -> torch.Tensor:
    """A member-major batch [N·B, …] -> [N, B, …]; the batch must hold a whole number of ensembles."""
    check_ensemble_size(n)
    total = x.shape[0]
    if total == 0:
        raise ValueError(f"{name} is an empty batch; connect the N·B maps of an ensemble.")
    if total % n:
        raise ValueError(
            f"{name} holds {total} maps, which is not a multiple of ensemble_size {n}: an ensemble of {n} members "
            f"per image needs N·B maps (member-major, as 'UniDense Ensemble Batch' makes them). Set ensemble_size "
            f"to the value used there."
        )
    return x.reshape(n, total // n, *x.shape[1:])


def repeat_members(x: torch.Tensor, n: int, augmentation: str = "noise", width_dim: int = -1) -> torch.Tensor:
    """[B, …] -> [N·B, …] member-major; with ``hflip`` every odd member is mirrored along ``width_dim``."""
    check_ensemble_size(n)
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}.")
    copies = [x.flip(width_dim) if augmentation == "hflip" and j % 2 else x for j in range(n)]
    return torch.cat(copies)


def unflip_members(members: torch.Tensor, augmentation: str, normals: bool = False) -> torch.Tensor:
    """Undo :func:`repeat_members`' mirrors on [N,B,H,W] (or [N,B,H,W,3] normals, whose x component changes sign)."""
    if augmentation == "noise":
        return members
    if augmentation != "hflip":
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}.")
    width = -2 if normals else -1
    out = members.clone()
    out[1::2] = members[1::2].flip(width)
    if normals:
        out[1::2, ..., 0] = -out[1::2, ..., 0]
    return out


# ----------------------------------------------------------------------------------------------------------
# Least squares, median and spread over members (float32, masked, batched; exact under member permutations)


def masked_median(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 of the valid entries (mean of the two middle ones for an even count); 0 where none."""
    k = valid.sum(0)  # [...]
    s = torch.where(valid, x, torch.full_like(x, math.inf)).sort(dim=0).values
    lo = ((k - 1).clamp_min(0) // 2)[None]
    hi = (k // 2).clamp_max(x.shape[0] - 1)[None]
    med = (s.gather(0, lo) + s.gather(0, hi))[0] / 2
    return torch.where(k > 0, med, torch.zeros_like(med))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the valid entries; 0 where none. Computed as min + mean(x − min) with the differences
    summed in sorted order: equal members give their value bit-exactly, any order of members gives the same bits."""
    k = valid.sum(0)
    low = torch.where(valid, x, torch.full_like(x, math.inf)).amin(0)
    low = torch.where(k > 0, low, torch.zeros_like(low))
    diff = torch.where(valid, x - low, torch.zeros_like(x)).sort(dim=0).values.sum(0)
    return low + diff / k.clamp_min(1).to(x.dtype)


def combine(x: torch.Tensor, valid: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(combined, spread) over dim 0: median + MAD, or mean + population standard deviation."""
    if reduction == "median":
        mid = masked_median(x, valid)
        return mid, masked_median((x - mid).abs(), valid)
    mid = masked_mean(x, valid)
    return mid, masked_mean((x - mid) ** 2, valid).sqrt()


# ----------------------------------------------------------------------------------------------------------
# Ensembles


def ensemble_scalar(
    members: torch.Tensor,
    valid: torch.Tensor | None = None,
    align: str = "scale_shift",
    reduction: str = "median",
    iterations: int = DEFAULT_ITERATIONS,
) -> Ensemble:
    """Align and combine depth or disparity members [N,B,H,W] (the map's own space; see the module doc)."""
    _check_options(align, reduction, iterations)
    if align == "auto":
        raise ValueError("align 'auto' needs the map's scale; use ensemble_map, or pass scale_shift/scale/none.")
    if members.ndim != 4 or 0 in members.shape:
        raise ValueError(f"members must be [N,B,H,W] with N, B, H, W ≥ 1, got {tuple(members.shape)}.")
    x = members.float()
    valid = torch.ones_like(x, dtype=torch.bool) if valid is None else valid
    check_finite(torch.where(valid, x, torch.zeros_like(x)), "ensemble members", "NBHW")
    n, b = x.shape[:2]
    scales, shifts = torch.ones(n, b), torch.zeros(n, b)
    ref = masked_median(x, valid)  # [B,H,W] order-independent start
    aligned = x
    for _ in range(iterations if align != "none" else 0):
        scales, shifts = batched_scale_shift(x, ref.expand_as(x), valid, shift=align == "scale_shift")
        scales, shifts = _fix_gauge(scales, shifts)
        aligned = scales[..., None, None] * x + shifts[..., None, None]
        ref, _ = combine(aligned, valid, reduction)
    values, spread = combine(aligned, valid, reduction)
    any_valid = valid.any(0)
    zero = torch.zeros_like(values)
    values, spread = torch.where(any_valid, values, zero), torch.where(any_valid, spread, zero)
    return Ensemble(values, spread, any_valid, scales, shifts)


def _fix_gauge(scales: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fix the common affine map that alignment leaves free: mean scale 1, mean shift 0 over the members [N,B].

    A least-squares fit of noisy members to their own combination shrinks every round (regression dilution: the
    slope is cov/var of the member, below 1 by var(noise)/var(member)); repeated, the ensemble would collapse to a
    flat map and its uncertainty to 0. Applying (α, β) = (1/mean s, −mean t / mean s) to every member keeps the
    members' own average scale instead (Marigold keeps it with a [0, 1] range regulariser). Means are taken over the
    sorted values, so the result does not depend on the order of the members; (1, 0) stays (1, 0) exactly."""
    n = scales.shape[0]
    mean_s = scales.sort(dim=0).values.sum(0) / n
    mean_t = shifts.sort(dim=0).values.sum(0) / n
    bad = mean_s.abs() <= 1e-12  # members that disagree in sign and cancel: keep the fit as it is
    alpha = torch.where(bad, torch.ones_like(mean_s), 1.0 / torch.where(bad, torch.ones_like(mean_s), mean_s))
    beta = torch.where(bad, torch.zeros_like(mean_t), -mean_t * alpha)
    return scales * alpha, shifts * alpha + beta


def ensemble_normals(members: torch.Tensor, valid: torch.Tensor | None = None, reduction: str = "median") -> Ensemble:
    """Unit normals [N,B,H,W,3]: mean direction (``mean``) or the member closest to it (``median``, Marigold's
    "closest"; for N = 2 the mean direction, as both members are equally close); uncertainty = mean angle to the
    combined direction / π."""
    _check_options("none", reduction, 0)
    if members.ndim != 5 or members.shape[-1] != 3 or 0 in members.shape:
        raise ValueError(f"normal members must be [N,B,H,W,3], got {tuple(members.shape)}.")
    x = members.float()
    valid = torch.ones(x.shape[:4], dtype=torch.bool) if valid is None else valid
    check_finite(torch.where(valid[..., None], x, torch.zeros_like(x)), "ensemble normals", "NBHWC")
    v = valid[..., None]
    total = torch.where(v, x, torch.zeros_like(x)).sort(dim=0).values.sum(0)  # [B,H,W,3], order-independent
    length = total.norm(dim=-1, keepdim=True)
    # members that cancel (e.g. two opposite normals) have no mean direction: take the valid member facing the viewer
    # most (largest z; a choice that does not depend on the order of the members)
    facing = torch.where(valid, x[..., 2], torch.full_like(x[..., 2], -2.0)).argmax(0)  # [B,H,W]
    fallback = x.gather(0, facing[None, ..., None].expand(1, *x.shape[1:]))[0]
    mean = torch.where(length > 1e-6, total / length.clamp_min(1e-12), fallback)
    cos = (x * mean).sum(-1).clamp(-1, 1)  # [N,B,H,W]
    if reduction == "median" and x.shape[0] > 2:  # two members are equally close to their mean: it is the median
        best = torch.where(valid, cos, torch.full_like(cos, -2.0)).argmax(0)  # [B,H,W]
        mean = x.gather(0, best[None, ..., None].expand(1, *x.shape[1:]))[0]
        cos = (x * mean).sum(-1).clamp(-1, 1)
    spread = masked_mean(torch.where(valid, torch.arccos(cos) / math.pi, torch.zeros_like(cos)), valid)
    any_valid = valid.any(0)
    values = torch.where(any_valid[..., None], mean, torch.zeros_like(mean))
    spread = torch.where(any_valid, spread, torch.zeros_like(spread))
    n, b = x.shape[:2]
    return Ensemble(values, spread, any_valid, torch.ones(n, b), torch.zeros(n, b))


def ensemble_map(
    members: DenseMap,
    ensemble_size: int,
    augmentation: str = "noise",
    reduction: str = "median",
    align: str = "auto",
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[DenseMap, torch.Tensor]:
    """A member-major DenseMap batch of N·B maps -> (B combined maps, uncertainty [B,H,W] float32)."""
    _check_options(align, reduction, iterations)
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}.")
    normals = members.kind == "normals"
    x = unflip_members(split_members(members.values, ensemble_size), augmentation, normals)
    valid = None
    if members.valid is not None:
        valid = unflip_members(split_members(members.valid, ensemble_size), augmentation)
    if normals:
        result = ensemble_normals(x, valid, reduction)
    else:
        mode = _AUTO[members.scale] if align == "auto" else align
        result = ensemble_scalar(x, valid, mode, reduction, iterations)
    out = members.replace(values=result.values, valid=None if members.valid is None else result.valid)
    return out, result.uncertainty


def _check_options(align: str, reduction: str, iterations: int) -> None:
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}.")
    check_reduction(reduction)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or not 0 <= iterations <= 10:
        raise ValueError(f"iterations must be an integer from 0 to 10, got {iterations!r}.")
