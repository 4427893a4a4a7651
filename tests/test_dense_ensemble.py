"""Ensembles (unidense_core/dense/ensemble.py): alignment, median/mean, uncertainty, member layout, mirrors."""

import math

import pytest
import torch

from unidense_core.dense.align import batched_scale_shift
from unidense_core.dense.ensemble import (
    ensemble_map,
    ensemble_normals,
    ensemble_scalar,
    masked_median,
    repeat_members,
    split_members,
    unflip_members,
)
from unidense_core.dense.maps import DenseMap


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------
# Least squares


def test_lstsq_recovers_a_known_scale_and_shift_per_map():
    ref = rand(3, 2, 9, 11)
    scale = torch.tensor([[2.5, 0.3], [-1.5, 7.0], [1.0, 0.01]])
    shift = torch.tensor([[0.1, -4.0], [2.0, 0.0], [-0.5, 3.3]])
    pred = (ref - shift[..., None, None]) / scale[..., None, None]  # so that scale·pred + shift = ref
    s, t = batched_scale_shift(pred, ref)
    assert s.dtype == torch.float32 and s.shape == (3, 2)
    torch.testing.assert_close(s, scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t, shift, rtol=1e-5, atol=1e-5)


def test_lstsq_uses_only_masked_pixels_even_if_the_rest_is_nan():
    ref = rand(1, 16, 16)
    pred = (ref - 0.25) / 4.0
    mask = rand(1, 16, 16, seed=1) > 0.3
    pred = torch.where(mask, pred, torch.full_like(pred, math.nan))  # outside the mask: garbage
    ref_bad = torch.where(mask, ref, torch.full_like(ref, 1e9))
    s, t = batched_scale_shift(pred, ref_bad, mask)
    torch.testing.assert_close(s, torch.tensor([4.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(t, torch.tensor([0.25]), rtol=1e-5, atol=1e-6)


def test_lstsq_scale_only_and_identity_is_exact():
    ref = rand(2, 8, 8) + 0.5
    s, t = batched_scale_shift(ref / 3.0, ref, shift=False)
    torch.testing.assert_close(s, torch.full((2,), 3.0), rtol=1e-6, atol=0)
    assert torch.equal(t, torch.zeros(2))
    s, t = batched_scale_shift(ref, ref.clone())
    assert torch.equal(s, torch.ones(2)) and torch.equal(t, torch.zeros(2))  # bit-exact, not just close


def test_lstsq_constant_map_keeps_scale_one_and_matches_means():
    ref = rand(1, 8, 8)
    s, t = batched_scale_shift(torch.full((1, 8, 8), 0.7), ref)
    assert s.item() == 1.0
    assert math.isclose(t.item(), ref.mean().item() - 0.7, rel_tol=1e-5)


def test_lstsq_refuses_another_size():
    with pytest.raises(ValueError, match=r"reference is \(1, 8, 9\).*same size"):
        batched_scale_shift(torch.rand(1, 8, 8), torch.rand(1, 8, 9))


# ----------------------------------------------------------------------------------------------------------
# Ensembles


@pytest.mark.parametrize("reduction", ["median", "mean"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_identical_members_give_that_member_and_zero_uncertainty(reduction, n):
    member = rand(3, 12, 10)
    out = ensemble_scalar(member.expand(n, -1, -1, -1).clone(), reduction=reduction)
    assert torch.equal(out.values, member)
    assert torch.equal(out.uncertainty, torch.zeros(3, 12, 10))
    assert torch.equal(out.scales, torch.ones(n, 3)) and torch.equal(out.shifts, torch.zeros(n, 3))


@pytest.mark.parametrize("reduction", ["median", "mean"])
@pytest.mark.parametrize("align", ["scale_shift", "scale", "none"])
def test_order_of_members_does_not_matter(reduction, align):
    members = rand(6, 2, 10, 9) + 0.2
    valid = rand(6, 2, 10, 9, seed=3) > 0.1
    out = ensemble_scalar(members, valid, align, reduction)
    for seed in range(3):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        again = ensemble_scalar(members[perm], valid[perm], align, reduction)
        assert torch.equal(again.values, out.values) and torch.equal(again.uncertainty, out.uncertainty)
        assert torch.equal(again.scales, out.scales[perm]) and torch.equal(again.shifts, out.shifts[perm])


def test_affine_copies_of_one_map_are_aligned_back_exactly():
    """Members that are one map under different scales and shifts: the alignment undoes them, spread ~ 0."""
    depth = rand(2, 16, 16)
    a = torch.tensor([1.0, 0.5, 3.0, 2.0])[:, None]
    b = torch.tensor([0.0, 0.2, -1.0, 0.7])[:, None]
    members = a[..., None, None] * depth + b[..., None, None]  # [4,2,16,16]
    out = ensemble_scalar(members)
    aligned = out.scales[..., None, None] * members + out.shifts[..., None, None]
    torch.testing.assert_close(aligned, aligned[:1].expand_as(aligned), rtol=0, atol=1e-5)
    # the known scales and shifts are recovered: s_j·(a_j·d + b_j) + t_j is one map, the same for every member j,
    # and the gauge is the members' average (mean fitted scale 1, mean fitted shift 0)
    torch.testing.assert_close(out.scales * a, (out.scales * a)[:1].expand(4, 2), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        out.scales * b + out.shifts, (out.scales * b + out.shifts)[:1].expand(4, 2), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(out.scales.mean(0), torch.ones(2), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.shifts.mean(0), torch.zeros(2), rtol=0, atol=1e-6)
    assert out.uncertainty.abs().max() < 1e-5
    # the combined map is one of these affine copies (the scale of the members' median is kept, not renormalised)
    s, t = batched_scale_shift(depth, out.values)
    torch.testing.assert_close(s[:, None, None] * depth + t[:, None, None], out.values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reduction", ["median", "mean"])
def test_noisy_members_keep_their_scale_and_spread_over_iterations(reduction):
    """Least squares of noisy members to their own median shrinks (regression dilution); the gauge fix keeps the
    truth's scale and the uncertainty the noise's spread, however many rounds run."""
    truth = rand(1, 32, 32)
    noise = torch.randn(10, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    members = truth + 0.2 * noise
    first = ensemble_scalar(members, reduction=reduction, iterations=1)
    for rounds in (2, 10):
        out = ensemble_scalar(members, reduction=reduction, iterations=rounds)
        s, _ = batched_scale_shift(truth, out.values)
        assert 0.97 < s.item() < 1.03, s  # without the gauge fix: 0.50 after 2 rounds, 0.03 after 10
        assert math.isclose(out.uncertainty.mean().item(), first.uncertainty.mean().item(), rel_tol=0.01)
    expected = 0.2 * (0.6745 if reduction == "median" else 1.0)  # MAD or std of N(0, 0.2²)
    assert abs(out.uncertainty.mean().item() - expected) < 0.2 * expected


def test_median_even_count_is_the_mean_of_the_two_middle_values_and_mad_is_unscaled():
    x = torch.tensor([1.0, 4.0, 2.0, 10.0]).view(4, 1, 1, 1)
    out = ensemble_scalar(x, align="none")
    assert out.values.item() == 3.0  # torch.median would give 2
    assert out.uncertainty.item() == 1.5  # |x − 3| = 2, 1, 1, 7 -> median 1.5
    out = ensemble_scalar(x, align="none", reduction="mean")
    assert out.values.item() == 4.25
    assert math.isclose(out.uncertainty.item(), x.flatten().std(correction=0).item(), rel_tol=1e-6)


def test_invalid_pixels_are_left_out_and_reported():
    x = torch.tensor([1.0, 2.0, 100.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).clone()
    valid = torch.ones(3, 1, 2, 2, dtype=torch.bool)
    valid[2] = False  # member 2 is invalid everywhere
    valid[:, 0, 1, 1] = False  # no member at this pixel
    x[2, 0, 0, 0] = math.nan
    out = ensemble_scalar(x, valid, align="none")
    assert out.values[0, 0, 0].item() == 1.5 and out.uncertainty[0, 0, 0].item() == 0.5
    assert out.valid.tolist() == [[[True, True], [True, False]]]
    assert out.values[0, 1, 1].item() == 0.0 and out.uncertainty[0, 1, 1].item() == 0.0


def test_non_finite_member_is_reported_with_where_it_is():
    x = rand(3, 2, 4, 4)
    x[1, 0, 2, 3] = math.inf
    with pytest.raises(ValueError, match=r"1 non-finite.*N=1, B=0, H=2, W=3"):
        ensemble_scalar(x)


def test_normals_identical_members_and_order():
    n = unit(rand(2, 5, 6, 3) - 0.5)
    out = ensemble_normals(n.expand(4, -1, -1, -1, -1).clone())
    torch.testing.assert_close(out.values, n, rtol=0, atol=1e-6)
    assert out.uncertainty.abs().max() < 1e-3  # arccos near 1 is steep: float32 cosines of 1 − 1e-7
    members = unit(rand(5, 2, 5, 6, 3, seed=4) - 0.5)
    for reduction in ("median", "mean"):
        out = ensemble_normals(members, reduction=reduction)
        perm = torch.tensor([3, 0, 4, 2, 1])
        again = ensemble_normals(members[perm], reduction=reduction)
        assert torch.equal(again.values, out.values) and torch.equal(again.uncertainty, out.uncertainty)
        assert torch.allclose(out.values.norm(dim=-1), torch.ones(2, 5, 6))
    opposite = torch.stack([members[0], -members[0]])
    assert torch.allclose(ensemble_normals(opposite, reduction="median").uncertainty, torch.full((2, 5, 6), 0.5))


def test_member_major_layout_and_mirrors_round_trip():
    x = rand(2, 4, 6)  # [B,H,W]
    batch = repeat_members(x, 3)
    assert torch.equal(batch[4], x[0]) and torch.equal(batch[3], x[1])  # member j of image b is j·B + b
    assert torch.equal(split_members(batch, 3)[2], x)
    flipped = repeat_members(x, 4, "hflip")
    assert torch.equal(flipped[2], x[0].flip(-1)) and torch.equal(flipped[4], x[0])
    assert torch.equal(unflip_members(split_members(flipped, 4), "hflip"), x.expand(4, -1, -1, -1))
    normals = unit(rand(2, 4, 6, 3) - 0.5)
    mirrored = repeat_members(normals, 2, "hflip", width_dim=-2)
    mirrored[2:, ..., 0] *= -1  # what a mirror-equivariant estimator predicts for the mirrored image
    assert torch.equal(unflip_members(split_members(mirrored, 2), "hflip", normals=True)[1], normals)


def test_split_members_refuses_counts_that_do_not_divide():
    with pytest.raises(ValueError, match=r"holds 10 maps.*not a multiple of ensemble_size 4"):
        split_members(torch.zeros(10, 2, 2), 4)
    with pytest.raises(ValueError, match="empty batch"):
        split_members(torch.zeros(0, 2, 2), 2)
    with pytest.raises(ValueError, match="ensemble_size must be an integer from 1 to 64"):
        split_members(torch.zeros(4, 2, 2), 0)


def test_ensemble_map_follows_the_maps_scale_and_mirrors():
    depth = rand(2, 8, 8)
    members = torch.cat([depth, 2 * depth.flip(-1) + 1])  # member 1 mirrored and affine-changed
    dense = DenseMap(members, "depth", source="merge-b")
    out, unc = ensemble_map(dense, 2, "hflip")
    assert out.values.shape == (2, 8, 8) and out.kind == "depth" and out.source == "merge-b"
    assert unc.abs().max() < 1e-5  # affine: aligned back
    metric = DenseMap(members, "depth", scale="metric", units="m")
    _, unc = ensemble_map(metric, 2, "hflip")  # metric: never rescaled, so the spread stays
    assert unc.mean() > 0.1
    with pytest.raises(ValueError, match="not a multiple of ensemble_size 3"):
        ensemble_map(dense, 3)


def test_median_of_masked_entries_matches_a_plain_median():
    x = rand(7, 50)
    valid = rand(7, 50, seed=2) > 0.4
    med = masked_median(x, valid)
    for j in range(50):
        vals = x[valid[:, j], j].sort().values
        if len(vals):
            expect = (vals[(len(vals) - 1) // 2] + vals[len(vals) // 2]) / 2
            assert med[j].item() == pytest.approx(expect.item(), abs=0)
