"""The Marigold evaluation protocol as MERGE's official code implements it (``src/util/alignment.py``, ``metric.py``
and Marigold's ``eval.py`` per-sample loop; spec §1.6, §1.6a).

Per image: least-squares scale and shift on the valid pixels, in depth space (``[pred, 1]·x ≈ gt``) or in disparity
space (fit against 1/gt, clip the disparity at 1e-3, invert); clip to the dataset's depth range, then to ≥ 1e-6;
then the ten metrics. Every metric is returned ×100, as the official ``metric.py`` does and the papers' tables
print (AbsRel and δ in %, RMSE in cm for metres; SILog is ×100 twice, i.e. 10,000 × the usual value).
Computed in float64, so a hand calculation matches to the last digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

METRICS = (
    "abs_relative_difference",
    "squared_relative_difference",
    "rmse_linear",
    "rmse_log",
    "log10",
    "delta1_acc",
    "delta2_acc",
    "delta3_acc",
    "i_rmse",
    "silog_rmse",
)
SHORT_NAMES = {
    "abs_relative_difference": "AbsRel",
    "squared_relative_difference": "SqRel",
    "rmse_linear": "RMSE",
    "rmse_log": "RMSE-log",
    "log10": "log10",
    "delta1_acc": "δ1",
    "delta2_acc": "δ2",
    "delta3_acc": "δ3",
    "i_rmse": "i-RMSE",
    "silog_rmse": "SILog",
}
LOWER_IS_BETTER = {m: not m.startswith("delta") for m in METRICS}
ALIGNMENTS = ("least_square", "least_square_disparity", "none")
UNITS_NOTE = (
    "All metrics ×100 as in MERGE's official metric.py and the papers' tables: AbsRel, SqRel and δ1-δ3 in %, RMSE "
    "and i-RMSE ×100 (cm for metres), RMSE-log and log10 ×100, SILog ×100 twice (10,000 × the usual value)."
)


@dataclass(frozen=True)
class Alignment:
    scale: float
    shift: float


def _downsample_width(x: np.ndarray, factor: float) -> np.ndarray:
    """The official ``align_max_res``: nn.Upsample(nearest) on a [1,H,W] tensor, i.e. (N, C, L): only the last
    axis (the width) is resampled; every row is kept (spec §1.6a)."""
    t = torch.as_tensor(np.ascontiguousarray(x))[None]  # [1,H,W]
    return F.interpolate(t, scale_factor=factor, mode="nearest")[0].numpy()


def fit_scale_shift(
    gt: np.ndarray, pred: np.ndarray, valid: np.ndarray, max_resolution: int | None = None
) -> Alignment:
    """Least squares ``scale·pred + shift ≈ gt`` over ``valid`` (official ``align_depth_least_square``)."""
    gt, pred, valid = np.asarray(gt).squeeze(), np.asarray(pred).squeeze(), np.asarray(valid).squeeze().astype(bool)
    if not (gt.shape == pred.shape == valid.shape):
        raise ValueError(
            f"Alignment needs equal shapes; got gt {gt.shape}, prediction {pred.shape}, mask {valid.shape}."
        )
    if max_resolution is not None:
        factor = float(np.min(max_resolution / np.array(gt.shape[-2:])))
        if factor < 1:
            gt, pred = _downsample_width(gt, factor), _downsample_width(pred, factor)
            valid = _downsample_width(valid.astype(np.float32), factor).astype(bool)
    n = int(valid.sum())
    if n < 2:
        raise ValueError(f"Scale-and-shift alignment needs at least 2 valid pixels; this image has {n}.")
    a = np.stack([pred[valid].astype(np.float64), np.ones(n)], axis=1)  # [N,2]
    (scale, shift), *_ = np.linalg.lstsq(a, gt[valid].astype(np.float64), rcond=None)
    return Alignment(float(scale), float(shift))


def align(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    space: str = "least_square",
    max_resolution: int | None = None,
) -> tuple[np.ndarray, Alignment | None]:
    """The aligned prediction in depth units (Marigold ``eval.py``): depth-space fit, disparity-space fit (the raw
    prediction is treated as disparity, fit against 1/gt on valid positive pixels, clipped at 1e-3 and inverted),
    or ``none`` (the prediction is already metric)."""
    pred = np.asarray(pred, dtype=np.float64)
    if space == "none":
        return pred, None
    if space == "least_square":
        fit = fit_scale_shift(gt, pred, valid, max_resolution)
        return pred * fit.scale + fit.shift, fit
    if space == "least_square_disparity":
        gt = np.asarray(gt, dtype=np.float64)
        gt_disp = np.where(gt > 0, 1.0 / np.where(gt > 0, gt, 1.0), 0.0)
        mask = np.asarray(valid, bool) & (gt > 0) & (pred > 0)
        fit = fit_scale_shift(gt_disp, pred, mask, max_resolution)
        disp = np.clip(pred * fit.scale + fit.shift, 1e-3, None)
        return 1.0 / disp, fit
    raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {space!r}.")


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: sum over valid pixels / number of valid pixels (official pattern: zero the rest, divide by n)."""
    return torch.where(valid, x, torch.zeros_like(x)).sum((-1, -2)) / valid.sum((-1, -2))


def abs_relative_difference(p, g, v):
    return _masked_mean((p - g).abs() / g, v).mean() * 100


def squared_relative_difference(p, g, v):
    return _masked_mean((p - g).abs() ** 2 / g, v).mean() * 100


def rmse_linear(p, g, v):
    return _masked_mean((p - g) ** 2, v).sqrt().mean() * 100


def rmse_log(p, g, v):
    return _masked_mean((p.log() - g.log()) ** 2, v).sqrt().mean() * 100


def log10(p, g, v):
    return (p[v].log10() - g[v].log10()).abs().mean() * 100  # over all valid pixels, not per image


def _delta(p, g, v, threshold):
    ratio = torch.maximum(p / g, g / p)
    return _masked_mean((ratio < threshold).double(), v).mean() * 100


def delta1_acc(p, g, v):
    return _delta(p, g, v, 1.25)


def delta2_acc(p, g, v):
    return _delta(p, g, v, 1.25**2)


def delta3_acc(p, g, v):
    return _delta(p, g, v, 1.25**3)


def i_rmse(p, g, v):
    return _masked_mean((1.0 / p - 1.0 / g) ** 2, v).sqrt().mean() * 100


def silog_rmse(p, g, v):
    diff = torch.where(v, p.log() - g.log(), torch.zeros_like(p))
    n = v.sum((-1, -2))
    first = (diff**2).sum((-1, -2)) / n
    second = diff.sum((-1, -2)) ** 2 / n**2
    return torch.sqrt((first - second).mean()) * 100 * 100  # official: ×100, then ×100 again


# name -> fn(pred, gt, valid) on float64 [H,W] (or [B,H,W]) tensors
METRIC_FUNCTIONS: dict[str, Callable] = {m: globals()[m] for m in METRICS}


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """The ten metrics (×100) of one aligned, clipped prediction against ground truth over ``valid``."""
    p, g = torch.as_tensor(np.asarray(pred, np.float64)), torch.as_tensor(np.asarray(gt, np.float64))
    v = torch.as_tensor(np.asarray(valid, bool))
    if not (p.shape == g.shape == v.shape):
        raise ValueError(
            f"Prediction {tuple(p.shape)}, ground truth {tuple(g.shape)} and mask {tuple(v.shape)} differ."
        )
    if not bool(v.any()):
        raise ValueError("The ground truth has no valid pixel in the evaluation region; nothing to evaluate.")
    if bool((g[v] <= 0).any()):
        raise ValueError("Valid ground-truth depth must be > 0.")
    return {m: float(fn(p, g, v)) for m, fn in METRIC_FUNCTIONS.items()}


def evaluate_prediction(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    min_depth: float,
    max_depth: float,
    alignment: str = "least_square",
    align_max_res: int | None = None,
) -> tuple[dict[str, float], Alignment | None]:
    """Marigold's per-sample evaluation: align, clip to [min_depth, max_depth], clip ≥ 1e-6, metrics (×100)."""
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, bool)
    if pred.shape != gt.shape:
        raise ValueError(
            f"The prediction is {pred.shape[-1]}×{pred.shape[-2]} but the ground truth is "
            f"{gt.shape[-1]}×{gt.shape[-2]}; "
            "predict at the ground truth's size (or resize the prediction explicitly)."
        )
    if not np.isfinite(pred).all():
        raise ValueError(f"The prediction has {int((~np.isfinite(pred)).sum())} non-finite value(s).")
    aligned, fit = align(pred, gt, valid, alignment, align_max_res)
    upper = max_depth if math.isfinite(max_depth) else None
    clipped = np.clip(np.clip(aligned, min_depth, upper), 1e-6, None)
    return depth_metrics(clipped, gt, valid), fit
