"""The metrics on a real stereo pair with ground truth: scikit-image's Middlebury "motorcycle" (its wheel ships the
left/right images and the ground-truth disparity), against textbook formulas written here in plain numpy."""

import numpy as np
import pytest
from skimage import data

from unidense_core.evaluation.metrics import evaluate_prediction


def box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges replicated), with a summed-area table."""
    p = np.pad(x, r, mode="edge")
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / k**2


def textbook(pred, gt, lo, hi):
    """Least squares on the valid pixels, clip to [lo, hi], then the metrics ×100 (Eigen et al.; SILog ×100 again
    as in the official code)."""
    a = np.stack([pred, np.ones_like(pred)], 1)
    (s, t), *_ = np.linalg.lstsq(a, gt, rcond=None)
    p = np.clip(s * pred + t, lo, hi)
    d = np.log(p) - np.log(gt)
    ratio = np.maximum(p / gt, gt / p)
    return {
        "abs_relative_difference": np.mean(np.abs(p - gt) / gt) * 100,
        "squared_relative_difference": np.mean((p - gt) ** 2 / gt) * 100,
        "rmse_linear": np.sqrt(np.mean((p - gt) ** 2)) * 100,
        "rmse_log": np.sqrt(np.mean(d**2)) * 100,
        "log10": np.mean(np.abs(np.log10(p) - np.log10(gt))) * 100,
        "delta1_acc": np.mean(ratio < 1.25) * 100,
        "delta2_acc": np.mean(ratio < 1.25**2) * 100,
        "delta3_acc": np.mean(ratio < 1.25**3) * 100,
        "i_rmse": np.sqrt(np.mean((1 / p - 1 / gt) ** 2)) * 100,
        "silog_rmse": np.sqrt(np.mean(d**2) - np.mean(d) ** 2) * 100 * 100,
    }, (s, t)


def test_metrics_on_middlebury_motorcycle_equal_the_textbook_formulas():
    left, _right, disp = data.stereo_motorcycle()
    valid = np.isfinite(disp) & (disp > 0)
    assert valid.mean() > 0.9  # the pair's ground truth has holes (inf): they must stay out of every metric
    gt = np.where(valid, 1000.0 / np.where(valid, disp, 1.0), 0.0)  # depth ∝ 1/disparity (units of f·B / 1000)
    # A plausible estimate: the true depth blurred, on another scale and shift, with image texture mixed in.
    filled = np.where(valid, gt, np.median(gt[valid]))
    luminance = left.astype(np.float64).mean(-1) / 255
    pred = 0.05 * box_blur(filled, 6) + 0.4 + 0.1 * luminance
    lo, hi = float(gt[valid].min()), float(gt[valid].max())
    ours, fit = evaluate_prediction(pred, gt, valid, min_depth=lo, max_depth=hi, alignment="least_square")
    hand, (s, t) = textbook(pred[valid], gt[valid], lo, hi)
    assert (fit.scale, fit.shift) == pytest.approx((s, t), rel=1e-9)
    assert set(ours) == set(hand)
    for name, value in hand.items():
        assert ours[name] == pytest.approx(value, rel=1e-7), name  # float64 sums in another order
    assert 5 < ours["abs_relative_difference"] < 50 and 0 < ours["delta1_acc"] < 100  # a real, imperfect estimate
