"""The one dense representation: it refuses maps whose meaning or values are inconsistent, and says what it holds."""

import pytest
import torch

from unidense_core.dense.maps import DenseMap, cat


def depth(b=2, h=4, w=5, **kw):
    return DenseMap(torch.rand(b, h, w), "depth", **kw)


def test_meaning_and_shape():
    d = depth(scale="metric", units="m", source="dmp")
    assert d.batch_size == 2 and d.size == (4, 5) and d.near_is_low
    assert "metric in m" in d.describe() and "dmp" in d.describe()
    assert not DenseMap(torch.rand(1, 2, 2), "disparity").near_is_low
    n = DenseMap(torch.nn.functional.normalize(torch.randn(1, 3, 3, 3), dim=-1), "normals", convention="opengl")
    assert "y up" in n.describe()
    with pytest.raises(ValueError, match="no near/far"):
        _ = n.near_is_low


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(values=torch.rand(2, 4, 5), kind="height"), "kind must be one of"),
        (dict(values=torch.rand(2, 4, 5), kind="depth", scale="metric"), "need their units"),
        (dict(values=torch.rand(2, 4, 5, 3), kind="depth"), r"depth must be \[B,H,W\]"),
        (dict(values=torch.rand(2, 4, 5), kind="normals", convention="opengl"), r"normals must be \[B,H,W,3\]"),
        (dict(values=torch.rand(2, 4, 5, 3), kind="normals"), "need a convention"),
        (dict(values=torch.rand(2, 4, 5), kind="depth", convention="opengl"), "only normals"),
        (dict(values=torch.rand(0, 4, 5), kind="depth"), "empty"),
        (dict(values=torch.randint(0, 9, (1, 2, 2)), kind="depth"), "floating-point"),
        (dict(values=torch.rand(1, 2, 2), kind="depth", valid=torch.ones(1, 2, 3, dtype=torch.bool)), "valid must"),
        (dict(values=torch.tensor([[[1.0, float("nan")]]]), kind="depth"), "1 non-finite"),
    ],
)
def test_inconsistent_maps_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        DenseMap(**kw)


def test_invalid_pixels_may_hold_anything():
    v = torch.tensor([[[1.0, float("nan")]]])
    d = DenseMap(v, "depth", valid=torch.tensor([[[True, False]]]))
    assert d.valid_mask().tolist() == [[[True, False]]]


def test_select_and_cat_keep_the_meaning():
    a, b = depth(source="merge-b"), depth(b=1, source="dmp", valid=torch.ones(1, 4, 5, dtype=torch.bool))
    ab = cat([a, b])
    assert ab.batch_size == 3 and ab.source == "mixed" and ab.valid.all()
    assert torch.equal(ab.select(2).values, b.values)
    with pytest.raises(ValueError, match="same meaning"):
        cat([a, DenseMap(torch.rand(1, 4, 5), "disparity")])
    with pytest.raises(ValueError, match="5×4"):
        cat([a, depth(b=1, w=6)])
