"""Least-squares scale and shift between dense maps: affine depth to metric depth, one frame to another.

The fit is the one of the Marigold evaluation protocol that MERGE's official code uses (``align_depth_least_square``):
per image, ``scale·pred + shift ≈ ref`` over the valid pixels, in depth space, or in disparity space where the
prediction is a disparity and the reference a depth (``scale·pred + shift ≈ 1/ref``). Batched over the first axis;
each image gets its own pair.

``robust=True`` is a seeded RANSAC scored by the least median of residuals (LMedS, Rousseeuw 1984) followed by a
least-squares refit on the inliers. Why this and not IRLS: it needs no threshold in the user's units (the median
sets it), it tolerates up to half of the points being wrong wherever they are (sensor spikes in sparse metric points,
wrong predictions at object edges), and with the seed it is deterministic. IRLS with Huber weights keeps a pull from
every outlier (biased), and with a redescending weight it depends on its starting fit, which outliers spoil.

The sums run in float64 on the CPU (one image's valid points at a time), so the result does not depend on the
device's float32 reductions, and Apple MPS, which has no float64, is never asked for it.
"""

from __future__ import annotations

import math

import torch

SPACES = ("depth", "disparity")
ROBUST_HYPOTHESES = 256  # RANSAC pairs per image: P(no all-inlier pair | 50 % outliers) = 0.75**256 ≈ 1e-32
ROBUST_SCORE_POINTS = 4096  # LMedS scores each hypothesis on at most this many points (a seeded random subset)
ROBUST_CUTOFF = 2.5  # inliers: residual ≤ 2.5 σ, σ = 1.4826 · median |residual| (Rousseeuw & Leroy)


def _check_pair(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None, space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    for name, t in (("pred", pred), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim < 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a batched float tensor [B,...], got {shape}.")
    if pred.shape[0] == 0:
        raise ValueError("pred is an empty batch; alignment needs at least one map.")
    if ref.shape[1:] != pred.shape[1:] or ref.shape[0] not in (1, pred.shape[0]):
        raise ValueError(
            f"ref {tuple(ref.shape)} must have the size of pred {tuple(pred.shape)} (batch 1 or {pred.shape[0]}). "
            "Resize the reference to the prediction first."
        )
    if mask is not None and (mask.shape[1:] != pred.shape[1:] or mask.shape[0] not in (1, pred.shape[0])):
        raise ValueError(f"mask {tuple(mask.shape)} must have the size of pred {tuple(pred.shape)} (batch 1 or B).")


def _points(pred, ref, mask, space: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i``'s valid (x, y) as float64 on the CPU: finite, inside the mask, and y > 0 in disparity space."""
    x = pred[i].detach().reshape(-1).to("cpu", torch.float64)
    y = ref[min(i, ref.shape[0] - 1)].detach().reshape(-1).to("cpu", torch.float64)
    keep = torch.isfinite(x) & torch.isfinite(y)
    if mask is not None:
        m = mask[min(i, mask.shape[0] - 1)].detach().reshape(-1).cpu()
        keep &= m if m.dtype == torch.bool else m > 0.5
    if space == "disparity":
        keep &= y > 0
        y = torch.where(keep, 1.0 / torch.where(keep, y, torch.ones_like(y)), y)
    return x[keep], y[keep]


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Closed-form ``argmin Σ (s·x + t − y)²`` on centred values (float64)."""
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    s = (dx * (y - ym)).sum() / (dx * dx).sum()
    return float(s), float(ym - s * xm)


def _check_enough(x: torch.Tensor, i: int, space: str) -> None:
    n = x.numel()
    if n < 2 or float(x.max() - x.min()) == 0.0:
        what = f"{n} valid point(s)" if n < 2 else f"{n} valid points that all have the same predicted value"
        extra = " (in disparity space the reference must be > 0)" if space == "disparity" else ""
        raise ValueError(
            f"Image {i} has {what}{extra}; a scale and a shift need at least 2 points with different predicted "
            "values. Give more reference points (a larger mask, another reference map)."
        )


def _robust(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[float, float]:
    """LMedS RANSAC: the pair-line with the least median residual, then least squares on its inliers (twice)."""
    n = x.numel()
    # 1. Hypotheses: lines through random point pairs, plus the plain least-squares line.
    a = torch.randint(n, (ROBUST_HYPOTHESES,), generator=gen)
    b = torch.randint(n, (ROBUST_HYPOTHESES,), generator=gen)
    dx = x[a] - x[b]
    ok = dx != 0
    s = (y[a] - y[b])[ok] / dx[ok]
    t = y[a][ok] - s * x[a][ok]
    s0, t0 = _least_squares(x, y)
    s = torch.cat([torch.tensor([s0], dtype=s.dtype), s])  # [K]
    t = torch.cat([torch.tensor([t0], dtype=t.dtype), t])
    # 2. Score each on a seeded subset by the median absolute residual.
    sub = torch.randperm(n, generator=gen)[:ROBUST_SCORE_POINTS] if n > ROBUST_SCORE_POINTS else torch.arange(n)
    med = (y[sub][None] - s[:, None] * x[sub][None] - t[:, None]).abs().median(dim=1).values  # [K]
    best = int(med.argmin())
    m = sub.numel()
    sigma = 1.4826 * (1 + 5 / max(m - 2, 1)) * float(med[best])  # Rousseeuw's small-sample factor
    floor = 1e-9 * float(y.abs().max())  # exact data: residuals of rounding only
    scale, shift = float(s[best]), float(t[best])
    # 3. Least squares on the inliers, twice (the second pass with the refitted line).
    for _ in range(2):
        inliers = (y - scale * x - shift).abs() <= max(ROBUST_CUTOFF * sigma, floor)
        xi, yi = x[inliers], y[inliers]
        if xi.numel() < 2 or float(xi.max() - xi.min()) == 0.0:
            break
        scale, shift = _least_squares(xi, yi)
    return scale, shift


def batched_scale_shift(
    pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None, shift: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (scale, shift) with scale·pred + shift ≈ ref over ``mask`` pixels, per map; float32.

    ``pred``, ``ref``: [..., H, W] (leading dims are a batch); ``mask``: bool of the same shape (None = all). Returns
    two tensors of the leading shape. ``shift=False`` fits a scale alone. A constant map (no spread) keeps scale 1
    and takes the shift that matches the means (a minimiser too); a map without valid pixels gets (1, 0).
    The members' fit of ensembles and video (``dense/ensemble.py``, ``dense/video.py``): vectorised in float32 and
    never raising on a degenerate map, where ``fit_scale_shift`` (one user-facing alignment) works per image in
    float64 and refuses too few points.
    """
    if pred.shape != ref.shape:
        raise ValueError(
            f"The map to align is {tuple(pred.shape)} but its reference is {tuple(ref.shape)}; they must have the "
            "same size (resize one first)."
        )
    if mask is not None and mask.shape != pred.shape:
        raise ValueError(f"mask is {tuple(mask.shape)} but the maps are {tuple(pred.shape)}.")
    valid = torch.ones(pred.shape, dtype=torch.bool, device=pred.device) if mask is None else mask
    zero = torch.zeros((), dtype=torch.float32, device=pred.device)
    p = torch.where(valid, pred.float(), zero)  # invalid pixels (even NaN ones) contribute nothing
    r = torch.where(valid, ref.float(), zero)
    dims = (-2, -1)
    n = valid.sum(dims).float()
    safe_n = n.clamp_min(1.0)
    if shift:
        mp, mr = p.sum(dims) / safe_n, r.sum(dims) / safe_n
        dp = torch.where(valid, p - mp[..., None, None], zero)
        dr = torch.where(valid, r - mr[..., None, None], zero)
        num, den = (dp * dr).sum(dims), (dp * dp).sum(dims)  # the same expression: pred == ref gives scale 1 exactly
    else:
        mp = mr = torch.zeros_like(n)
        num, den = (p * r).sum(dims), (p * p).sum(dims)
    flat = den <= 1e-12 * safe_n  # constant (or empty) map: every scale fits as well; keep 1
    one = torch.ones_like(den)
    scale = torch.where(flat, one, num / torch.where(flat, one, den))
    offset = mr - scale * mp
    return scale, offset


def fit_scale_shift(
    pred: torch.Tensor,
    ref: torch.Tensor,
    mask: torch.Tensor | None = None,
    space: str = "depth",
    robust: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, least-squares ``scale·pred + shift ≈ ref`` (``space="depth"``: any two maps of the same kind) or
    ``≈ 1/ref`` (``space="disparity"``: pred a disparity, ref a depth; Marigold's ``least_square_disparity``).

    ``pred`` [B,...] float; ``ref`` and ``mask`` (bool, or float > 0.5 = use) of the same size, batch B or 1.
    Non-finite values (and ref ≤ 0 in disparity space) are left out. ``robust``: seeded LMedS RANSAC + refit on
    the inliers. Returns (scale [B], shift [B]) as float32 on pred's device; raises if an image has fewer than 2
    usable points or all its predicted values are equal.
    """
    _check_pair(pred, ref, mask, space)
    gen = torch.Generator().manual_seed(int(seed))
    scales, shifts = [], []
    for i in range(pred.shape[0]):
        x, y = _points(pred, ref, mask, space, i)
        _check_enough(x, i, space)
        s, t = _robust(x, y, gen) if robust else _least_squares(x, y)
        if not (math.isfinite(s) and math.isfinite(t)):
            raise ValueError(f"Image {i}: the fit is not finite (scale {s}, shift {t}); check the reference values.")
        scales.append(s)
        shifts.append(t)
    out = dict(dtype=torch.float32, device=pred.device)
    return torch.tensor(scales, **out), torch.tensor(shifts, **out)


def apply_scale_shift(
    pred: torch.Tensor, scale: torch.Tensor | float, shift: torch.Tensor | float, space: str = "depth"
) -> torch.Tensor:
    """``scale·pred + shift`` per image (``space="depth"``), or the depth ``1 / (scale·pred + shift)`` of a
    disparity fit (``space="disparity"``; +inf where the fitted disparity is ≤ 0, i.e. beyond any finite distance)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    view = (-1,) + (1,) * (pred.ndim - 1)
    s = torch.as_tensor(scale, dtype=pred.dtype, device=pred.device).reshape(view)
    t = torch.as_tensor(shift, dtype=pred.dtype, device=pred.device).reshape(view)
    fitted = pred * s + t
    if space == "depth":
        return fitted
    return torch.where(fitted > 0, 1.0 / fitted, torch.inf)


def align_dense(pred, ref, points: torch.Tensor | None = None, robust: bool = False, seed: int = 0):
    """Fit ``pred`` (a :class:`~.maps.DenseMap`, e.g. MERGE's affine depth or JointNet's disparity) to ``ref`` (a
    metric depth map, sparse metric points with ``points`` [B or 1,H,W] marking them, or another frame) and return
    (the aligned DenseMap with ref's scale and units, scale [B], shift [B], the space fitted in).

    Depth to depth and disparity to disparity fit ``scale·pred + shift ≈ ref``; a disparity to a (metric) depth
    fits in disparity space, ``≈ 1/ref``, and returns depth ``1 / (scale·pred + shift)`` (Marigold's protocol).
    Only pixels valid in both maps (and marked in ``points``) count; aligned depth or disparity ≤ 0 is marked invalid
    and set to 0 when the reference is metric or scale-known.
    """
    if pred.kind == "normals" or ref.kind == "normals":
        raise ValueError("Normals have no scale and shift to fit; align depth or disparity maps.")
    if ref.size != pred.size:
        raise ValueError(
            f"The reference is {ref.size[1]}×{ref.size[0]} but the prediction {pred.size[1]}×{pred.size[0]}. Resize "
            "the reference (or the prediction's reference_image) so both have the same size."
        )
    if ref.batch_size not in (1, pred.batch_size):
        raise ValueError(f"The reference has {ref.batch_size} maps for {pred.batch_size} predictions; give 1 or B.")
    if pred.kind == "depth" and ref.kind == "disparity":
        raise ValueError(
            "A depth prediction cannot be fitted to a disparity reference (an affine depth has no inverse). Give a "
            "depth reference, or align a disparity prediction."
        )
    cross = pred.kind == "disparity" and ref.kind == "depth"
    if cross and ref.scale == "affine":
        raise ValueError(
            "Fitting a disparity to a depth reference goes through 1/depth, which needs a reference with a known "
            "zero (metric or scale-only depth), not an affine-invariant one."
        )
    mask = pred.valid_mask() & ref.valid_mask()
    if points is not None:
        if points.ndim == 2:
            points = points[None]
        if tuple(points.shape[1:]) != pred.size or points.shape[0] not in (1, pred.batch_size):
            raise ValueError(
                f"The points mask is {tuple(points.shape)} but the prediction is {pred.batch_size}×{pred.size[0]}×"
                f"{pred.size[1]} [B,H,W]; give a mask of the same size (batch 1 or B)."
            )
        mask = mask & (points.to(mask.device) > 0.5)
    space = "disparity" if cross else "depth"
    scale, shift = fit_scale_shift(pred.values, ref.values, mask, space, robust, seed)
    out = apply_scale_shift(pred.values.float(), scale.to(pred.values.device), shift.to(pred.values.device), space)
    valid = pred.valid_mask()
    if ref.scale != "affine":
        valid = valid & torch.isfinite(out) & (out > 0)
        out = torch.where(valid, out, torch.zeros_like(out))
    aligned = pred.replace(
        values=out,
        kind="depth" if cross else pred.kind,
        scale=ref.scale,
        units=ref.units,
        valid=None if bool(valid.all()) else valid,
    )
    return aligned, scale, shift, space
