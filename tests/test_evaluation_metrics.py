"""The evaluation protocol (Marigold as MERGE's official code implements it): metrics against hand calculations,
exact recovery of a known scale and shift, the dataset ranges and clipping, and the official width-only
alignment subsampling."""

import math

import numpy as np
import pytest

from unidense_core.evaluation.metrics import (
    METRICS,
    _downsample_width,
    align,
    depth_metrics,
    evaluate_prediction,
    fit_scale_shift,
)

GT = np.array([[1.0, 2.0], [4.0, 5.0]])
PRED = np.array([[1.1, 3.0], [4.0, 8.0]])


def by_hand(pred, gt, valid):
    """The ten metrics written out element by element (×100, SILog ×10,000), for one image."""
    p = [float(x) for x, v in zip(pred.flat, valid.flat, strict=True) if v]
    g = [float(x) for x, v in zip(gt.flat, valid.flat, strict=True) if v]
    n = len(p)
    mean = lambda xs: sum(xs) / n  # noqa: E731
    d = [math.log(a) - math.log(b) for a, b in zip(p, g, strict=True)]
    ratio = [max(a / b, b / a) for a, b in zip(p, g, strict=True)]
    return {
        "abs_relative_difference": 100 * mean([abs(a - b) / b for a, b in zip(p, g, strict=True)]),
        "squared_relative_difference": 100 * mean([(a - b) ** 2 / b for a, b in zip(p, g, strict=True)]),
        "rmse_linear": 100 * math.sqrt(mean([(a - b) ** 2 for a, b in zip(p, g, strict=True)])),
        "rmse_log": 100 * math.sqrt(mean([x * x for x in d])),
        "log10": 100 * mean([abs(math.log10(a) - math.log10(b)) for a, b in zip(p, g, strict=True)]),
        "delta1_acc": 100 * mean([r < 1.25 for r in ratio]),
        "delta2_acc": 100 * mean([r < 1.25**2 for r in ratio]),
        "delta3_acc": 100 * mean([r < 1.25**3 for r in ratio]),
        "i_rmse": 100 * math.sqrt(mean([(1 / a - 1 / b) ** 2 for a, b in zip(p, g, strict=True)])),
        "silog_rmse": 10_000 * math.sqrt(mean([x * x for x in d]) - mean(d) ** 2),
    }


def test_metrics_equal_hand_calculation():
    valid = np.ones_like(GT, dtype=bool)
    got = depth_metrics(PRED, GT, valid)
    want = by_hand(PRED, GT, valid)
    for m in METRICS:
        assert got[m] == pytest.approx(want[m], rel=1e-12, abs=1e-12), m
    # the deltas of this example are easy to check by eye: ratios 1.1, 1.5, 1.0, 1.6
    assert (got["delta1_acc"], got["delta2_acc"], got["delta3_acc"]) == (50.0, 75.0, 100.0)
    assert got["abs_relative_difference"] == pytest.approx(100 * (0.1 + 0.5 + 0 + 0.6) / 4)


def test_invalid_pixels_are_ignored_even_when_zero_or_nan():
    gt = np.array([[1.0, 0.0], [4.0, 5.0]])  # a hole (0) in the ground truth
    pred = np.array([[1.1, np.nan], [4.0, 8.0]])
    valid = gt > 0
    got = depth_metrics(np.nan_to_num(pred, nan=1.0), gt, valid)
    want = by_hand(np.nan_to_num(pred, nan=1.0), gt, valid)
    assert all(got[m] == pytest.approx(want[m], rel=1e-12) for m in METRICS)


def test_batch_metrics_average_per_image_except_log10():
    import torch

    from unidense_core.evaluation.metrics import METRIC_FUNCTIONS

    p2 = np.stack([PRED, PRED * 2])
    g2 = np.stack([GT, GT])
    v2 = np.ones_like(g2, dtype=bool)
    v2[1, 0, 0] = False
    per = [by_hand(p2[i], g2[i], v2[i]) for i in range(2)]
    t = [torch.as_tensor(x) for x in (p2, g2, v2)]
    absrel = float(METRIC_FUNCTIONS["abs_relative_difference"](*t))
    assert absrel == pytest.approx((per[0]["abs_relative_difference"] + per[1]["abs_relative_difference"]) / 2)
    # log10 is pooled over every valid pixel of the batch in the official code
    logs = [abs(math.log10(a) - math.log10(b)) for a, b, v in zip(p2.flat, g2.flat, v2.flat, strict=True) if v]
    assert float(METRIC_FUNCTIONS["log10"](*t)) == pytest.approx(100 * sum(logs) / len(logs))


def test_alignment_recovers_known_scale_and_shift_exactly():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, (24, 32))
    gt = 3.7 * pred + 1.25
    valid = rng.uniform(size=gt.shape) > 0.3
    gt_noisy = np.where(valid, gt, 1e6)  # values under the mask must not matter
    fit = fit_scale_shift(gt_noisy, pred, valid)
    assert fit.scale == pytest.approx(3.7, abs=1e-12) and fit.shift == pytest.approx(1.25, abs=1e-12)
    aligned, _ = align(pred, gt_noisy, valid, "least_square")
    np.testing.assert_allclose(aligned[valid], gt[valid], rtol=0, atol=1e-12)


def test_disparity_alignment_recovers_depth():
    rng = np.random.default_rng(1)
    disparity_pred = rng.uniform(0.1, 1.0, (16, 16))
    gt = 1.0 / (0.4 * disparity_pred + 0.05)  # depth whose disparity is an affine map of the prediction
    valid = np.ones_like(gt, dtype=bool)
    depth, fit = align(disparity_pred, gt, valid, "least_square_disparity")
    assert fit.scale == pytest.approx(0.4, abs=1e-12) and fit.shift == pytest.approx(0.05, abs=1e-12)
    np.testing.assert_allclose(depth, gt, rtol=1e-12)
    metrics, _ = evaluate_prediction(disparity_pred, gt, valid, 1e-3, 80.0, "least_square_disparity")
    assert metrics["abs_relative_difference"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["delta1_acc"] == 100.0


def test_clipping_to_the_dataset_range_after_alignment():
    gt = np.array([[1.0, 2.0], [3.0, 9.0]])
    pred = np.array([[1.0, 2.0], [3.0, 12.0]])  # "none": already metric; 12 m is clipped to NYU's 10 m
    metrics, fit = evaluate_prediction(pred, gt, np.ones_like(gt, bool), 1e-3, 10.0, "none")
    assert fit is None
    assert metrics["abs_relative_difference"] == pytest.approx(100 * (1.0 / 9.0) / 4)


def test_align_max_res_subsamples_only_the_width_as_the_official_code():
    x = np.arange(4 * 2048, dtype=np.float64).reshape(4, 2048)
    small = _downsample_width(x, 1024 / 2048)
    assert small.shape == (4, 1024)  # every row kept; columns 0, 2, 4, … (nearest)
    np.testing.assert_array_equal(small, x[:, ::2])


def test_size_mismatch_and_empty_masks_are_clear_errors():
    with pytest.raises(ValueError, match=r"prediction is 3×2 but the ground truth is 2×2"):
        evaluate_prediction(np.ones((2, 3)), GT, np.ones((2, 2), bool), 0, 10)
    with pytest.raises(ValueError, match="at least 2 valid pixels"):
        evaluate_prediction(PRED, GT, np.zeros((2, 2), bool), 0, 10)
