"""Read-outs to DenseMap keep every value (no clamp), and conversions put near at the white / warm end."""

import pytest
import torch

from unidense_core.dense.convert import colorize, colormap, control_image, decoded_unit, dense_from_decoded, nearness
from unidense_core.dense.maps import DenseMap
from unidense_core.dense.readout import dmp_depth, jointnet_depth_from_unit, merge_depth_from_unit


def _decoded(seed=0):
    """A raw decode in [−1.6, 1.6]: a trained decoder overshoots [−1, 1] a little."""
    return torch.rand(2, 4, 6, 3, generator=torch.Generator().manual_seed(seed)) * 3.2 - 1.6


def test_readouts_are_the_official_ones_without_the_clamp():
    raw = _decoded()
    unit = decoded_unit(raw)
    assert float(unit.max()) > 1.0 and float(unit.min()) < 0.0
    merge = dense_from_decoded(unit, "merge-b")
    torch.testing.assert_close(merge.values, merge_depth_from_unit(unit, channel_dim=-1), rtol=0, atol=0)
    assert (merge.kind, merge.scale, merge.source) == ("depth", "affine", "merge-b")
    joint = dense_from_decoded(unit, "jointnet")
    torch.testing.assert_close(joint.values, jointnet_depth_from_unit(unit, channel_dim=-1), rtol=0, atol=0)
    assert joint.kind == "disparity" and not joint.near_is_low
    dmp = dense_from_decoded(unit, "dmp-depth", target_scale=8.0)
    assert (dmp.scale, dmp.units) == ("metric", "m")
    # Where the official read-out's value is positive, ours is the same; above 8 m it is not capped; ≤ 0 is invalid.
    official = dmp_depth(unit, 8.0, channel_dim=-1)
    valid = dmp.valid_mask()
    torch.testing.assert_close(dmp.values[valid], official[valid], rtol=0, atol=0)
    assert float(dmp.values.max()) > 8.0
    assert torch.equal(valid, unit[..., :3].mean(-1) > 0)
    scale_only = dense_from_decoded(unit, "dmp-depth", target_scale=0.0)
    assert scale_only.scale == "scale" and torch.equal(scale_only.values, unit[..., :3].mean(-1))


def test_dmp_normals_are_unit_vectors_with_a_convention():
    n = dense_from_decoded(decoded_unit(_decoded(1)), "dmp-normals", convention="directx")
    assert n.convention == "directx"
    torch.testing.assert_close(n.values.norm(dim=-1), torch.ones(2, 4, 6), rtol=0, atol=1e-6)


def test_near_is_white_for_depth_and_disparity():
    v = torch.tensor([[[1.0, 2.0, 5.0]]])
    for kind, near in (("depth", 0), ("disparity", 2)):
        img = control_image(DenseMap(v, kind))
        assert img.shape == (1, 1, 3, 3)
        assert float(img[0, 0, near, 0]) == 1.0 and float(img[0, 0, 2 - near, 0]) == 0.0
        assert torch.equal(img[..., 0], img[..., 1]) and torch.equal(img[..., 0], img[..., 2])
    torch.testing.assert_close(control_image(DenseMap(v, "depth"))[0, 0, 1, 0], torch.tensor(0.75))


def test_ranges_per_image_per_batch_fixed():
    v = torch.tensor([[[1.0, 3.0]], [[2.0, 5.0]]])
    d = DenseMap(v, "disparity")
    assert nearness(d, "per_image").tolist() == [[[0.0, 1.0]], [[0.0, 1.0]]]
    assert nearness(d, "per_batch").tolist() == [[[0.0, 0.5]], [[0.25, 1.0]]]
    assert nearness(d, "fixed", 0.0, 4.0).tolist() == [[[0.25, 0.75]], [[0.5, 1.0]]]  # 5 saturates at the end


def test_colormap_ends():
    t = torch.tensor([0.0, 1.0])
    assert colormap(t, "grey").tolist() == [[0.0] * 3, [1.0] * 3]
    spectral = colormap(t, "spectral")  # far -> violet #5e4fa2, near -> dark red #9e0142 (ColorBrewer)
    torch.testing.assert_close(spectral * 255, torch.tensor([[94.0, 79, 162], [158, 1, 66]]), rtol=0, atol=1e-4)
    inferno = colormap(t, "inferno")  # black -> pale yellow (0.988, 0.998, 0.645)
    torch.testing.assert_close(inferno, torch.tensor([[0.0015, 0.0005, 0.0139], [0.988, 0.998, 0.645]]), atol=0.015,
                               rtol=0)  # fmt: skip
    turbo = colormap(t, "turbo")  # dark blue-violet (0.190, 0.072, 0.232) -> dark red (0.480, 0.016, 0.011)
    err = (turbo - torch.tensor([[0.190, 0.072, 0.232], [0.480, 0.016, 0.011]])).abs().amax(dim=1)
    assert float(err[0]) < 0.13 and float(err[1]) < 0.09  # the polynomial fit is loosest at its dark ends
    assert float(turbo[1, 0]) > 3 * float(turbo[1, 2]) and float(turbo[0].sum()) < 0.5  # red near, dark far


def test_colorize_puts_near_at_the_warm_end_and_invalid_black():
    valid = torch.tensor([[[True, True, False]]])
    d = DenseMap(torch.tensor([[[1.0, 4.0, 9.0]]]), "depth", valid=valid)
    rgb = colorize(d, "spectral")
    torch.testing.assert_close(rgb[0, 0, 0] * 255, torch.tensor([158.0, 1, 66]), rtol=0, atol=1e-4)  # nearest
    assert rgb[0, 0, 2].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: dense_from_decoded(torch.full((1, 2, 2, 3), float("nan")), "merge-b"),
            r"12 non-finite.*B=0, H=0, W=0",
        ),
        (lambda: dense_from_decoded(torch.rand(0, 2, 2, 3), "merge-b"), "empty"),
        (lambda: dense_from_decoded(torch.rand(1, 2, 2, 3), "marigold"), "method must be one of"),
        (lambda: colorize(DenseMap(torch.rand(1, 2, 2), "depth"), "jet"), "colormap must be one of"),
        (lambda: nearness(DenseMap(torch.rand(1, 2, 2), "depth"), "fixed", 1.0, 1.0), "high > low"),
        (lambda: nearness(DenseMap(torch.rand(1, 1, 2), "depth", valid=torch.zeros(1, 1, 2).bool())), "no valid"),
    ],
)
def test_bad_conversions(call, match):
    with pytest.raises(ValueError, match=match):
        call()
