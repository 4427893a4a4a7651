"""Least-squares scale and shift: a known pair is recovered exactly, in depth and disparity space, with outliers
when robust; too few points, another size and an empty batch are refused with what to do."""

import pytest
import torch

from unidense_core.dense.align import apply_scale_shift, fit_scale_shift


def _pred(b=2, h=16, w=20, seed=0):
    return torch.rand(b, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() + 0.1


def test_depth_space_recovers_a_known_pair_per_image():
    pred = _pred()
    scale, shift = torch.tensor([2.5, 0.75]), torch.tensor([0.3, -0.1])
    ref = pred * scale[:, None, None] + shift[:, None, None]
    s, t = fit_scale_shift(pred, ref)
    torch.testing.assert_close(s, scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(t, shift, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_scale_shift(pred, s, t), ref, atol=1e-5, rtol=0)


def test_disparity_space_recovers_a_known_pair():
    disp = _pred(1)
    metric = 1.0 / (3.0 * disp + 0.5)  # depth of a disparity map with scale 3, shift 0.5
    s, t = fit_scale_shift(disp, metric, space="disparity")
    assert abs(float(s) - 3.0) < 1e-5 and abs(float(t) - 0.5) < 1e-5
    torch.testing.assert_close(apply_scale_shift(disp, s, t, space="disparity"), metric, rtol=1e-5, atol=0)


def test_sparse_points_in_a_mask():
    pred = _pred(1)
    ref = torch.zeros_like(pred)  # unknown everywhere except the marked points
    mask = torch.zeros_like(pred, dtype=torch.bool)
    mask[0, ::5, ::7] = True
    ref[mask] = pred[mask] * 4.0 + 1.0
    s, t = fit_scale_shift(pred, ref, mask)
    assert abs(float(s) - 4.0) < 1e-5 and abs(float(t) - 1.0) < 1e-5


def test_robust_ignores_outliers_that_spoil_least_squares():
    pred = _pred(1, 32, 32)
    ref = pred * 2.0 + 0.25
    bad = torch.rand(pred.shape, generator=torch.Generator().manual_seed(1)) < 0.3  # 30 % wrong points
    ref = torch.where(bad, ref + 5.0 * torch.rand(pred.shape, generator=torch.Generator().manual_seed(2)), ref)
    s_ls, _ = fit_scale_shift(pred, ref)
    s, t = fit_scale_shift(pred, ref, robust=True)
    assert abs(float(s_ls) - 2.0) > 0.05  # plain least squares is pulled away
    assert abs(float(s) - 2.0) < 1e-5 and abs(float(t) - 0.25) < 1e-5
    s2, t2 = fit_scale_shift(pred, ref, robust=True)  # seeded: the same result again
    assert float(s2) == float(s) and float(t2) == float(t)


def test_one_reference_for_a_batch():
    pred = torch.stack([_pred(1)[0]] * 3)
    ref = pred[:1] * 1.5 - 0.2
    s, t = fit_scale_shift(pred, ref)
    torch.testing.assert_close(s, torch.full((3,), 1.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, torch.full((3,), -0.2), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pred=torch.rand(0, 4, 4), ref=torch.rand(1, 4, 4)), "empty batch"),
        (dict(pred=torch.rand(1, 4, 4), ref=torch.rand(1, 4, 5)), "must have the size of pred"),
        (dict(pred=torch.rand(1, 4, 4), ref=torch.rand(1, 4, 4), mask=torch.ones(1, 3, 4)), "mask .* size"),
        (dict(pred=torch.rand(1, 4, 4), ref=torch.rand(1, 4, 4), mask=torch.zeros(1, 4, 4)), "0 valid point"),
        (dict(pred=torch.ones(1, 4, 4), ref=torch.rand(1, 4, 4)), "same predicted value"),
        (dict(pred=torch.rand(1, 4, 4), ref=-torch.rand(1, 4, 4), space="disparity"), "must be > 0"),
        (dict(pred=torch.rand(1, 4, 4), ref=torch.rand(1, 4, 4), space="log"), "space must be one of"),
    ],
)
def test_bad_alignment_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        fit_scale_shift(**kw)


# ----------------------------------------------------------------------------------------------------------------
# align_dense: DenseMaps in, a map with the reference's meaning out


def test_align_dense_affine_depth_becomes_metric():
    from unidense_core.dense.align import align_dense
    from unidense_core.dense.maps import DenseMap

    pred = DenseMap(_pred(2), "depth", source="merge-b")
    ref = DenseMap(pred.values * 7.0 + 0.25, "depth", "metric", "m", source="lidar")
    out, s, t, space = align_dense(pred, ref)
    assert (out.kind, out.scale, out.units, out.source, space) == ("depth", "metric", "m", "merge-b", "depth")
    torch.testing.assert_close(out.values, ref.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(s, torch.full((2,), 7.0), rtol=0, atol=1e-5)


def test_align_dense_disparity_to_metric_depth_in_disparity_space():
    from unidense_core.dense.align import align_dense
    from unidense_core.dense.maps import DenseMap

    disp = DenseMap(_pred(1), "disparity", source="jointnet")
    metric = 1.0 / (2.0 * disp.values + 0.1)
    valid = torch.ones_like(metric, dtype=torch.bool)
    valid[0, :2] = False  # rows without a measurement: ignored by the fit
    ref = DenseMap(torch.where(valid, metric, torch.zeros_like(metric)), "depth", "metric", "m", valid=valid)
    out, s, t, space = align_dense(disp, ref)
    assert space == "disparity" and out.kind == "depth" and out.units == "m"
    assert abs(float(s) - 2.0) < 1e-5 and abs(float(t) - 0.1) < 1e-5
    torch.testing.assert_close(out.values, metric, rtol=1e-5, atol=0)  # the unmeasured rows are predicted too


def test_align_dense_marks_non_positive_metric_depth_invalid():
    from unidense_core.dense.align import align_dense
    from unidense_core.dense.maps import DenseMap

    pred = DenseMap(torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]), "depth")
    ref = DenseMap(torch.tensor([[[-1.0, 1.0, 3.0, 5.0]]]), "depth", "metric", "m")  # 2·pred − 1: first is −1 m
    out, *_ = align_dense(pred, ref)
    assert out.valid.tolist() == [[[False, True, True, True]]] and out.values[0, 0, 0] == 0.0


@pytest.mark.parametrize(
    "pred_kw, ref_kw, points, match",
    [
        (dict(kind="depth"), dict(kind="depth", size=(4, 6)), None, "reference is 6×4"),
        (dict(kind="depth"), dict(kind="disparity"), None, "cannot be fitted to a disparity"),
        (dict(kind="disparity"), dict(kind="depth"), None, "known zero"),
        (dict(kind="depth"), dict(kind="depth", scale="metric", units="m"), torch.ones(1, 4, 4), r"points mask"),
        (dict(kind="depth"), dict(kind="depth", scale="metric", units="m"), torch.zeros(1, 4, 5), "0 valid point"),
    ],
)
def test_align_dense_refuses(pred_kw, ref_kw, points, match):
    from unidense_core.dense.align import align_dense
    from unidense_core.dense.maps import DenseMap

    def make(kind, size=(4, 5), **kw):
        return DenseMap(torch.rand(1, *size) + 0.1, kind, **kw)

    with pytest.raises(ValueError, match=match):
        align_dense(make(**pred_kw), make(**ref_kw), points)
