"""Dense files keep their values: EXR and .npy read back bit-identical (NaN-free floats of any size, normals in the
convention asked for), a 16-bit PNG within one code of its range, and each says what its values mean."""

import numpy as np
import pytest
import torch

from unidense_core.dense.files import png_ranges, read_exr_dense, read_png16, save_dense
from unidense_core.dense.maps import DenseMap


def _metric(seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(2, 7, 9, generator=g) * 37.5 + 0.01  # metric depth far above 1: nothing clamps
    v[0, 0, 0] = 1e-30  # denormal-range and huge values survive too
    v[1, 6, 8] = 3.0e38
    return DenseMap(v, "depth", "metric", "m", source="dmp")


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_exr_and_npy_are_bit_identical(tmp_path):
    d = _metric()
    for i in range(2):
        exr = save_dense(d, i, str(tmp_path / f"d{i}.exr"), "exr")
        npy = save_dense(d, i, str(tmp_path / f"d{i}.npy"), "npy")
        values, meta = read_exr_dense(exr)
        assert np.array_equal(_bits(values), _bits(d.values[i].numpy()))
        assert np.array_equal(_bits(np.load(npy)), _bits(d.values[i].numpy()))
        assert meta["kind"] == "depth" and meta["scale"] == "metric" and meta["units"] == "m"


def test_exr_keeps_the_valid_mask(tmp_path):
    from unidense_core.io.exr import read_exr

    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    valid[0, 1, 2] = False
    d = DenseMap(torch.rand(1, 3, 4), "disparity", valid=valid, source="jointnet")
    _, channels, _ = read_exr(save_dense(d, 0, str(tmp_path / "v.exr"), "exr"))
    assert np.array_equal(channels["valid"], valid[0].numpy().astype(np.float32))


def test_normals_in_either_convention(tmp_path):
    n = torch.nn.functional.normalize(torch.randn(1, 4, 5, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    d = DenseMap(n, "normals", convention="opengl", source="dmp")
    gl, meta = read_exr_dense(save_dense(d, 0, str(tmp_path / "gl.exr"), "exr", convention="opengl"))
    dx, meta_dx = read_exr_dense(save_dense(d, 0, str(tmp_path / "dx.exr"), "exr", convention="directx"))
    assert np.array_equal(_bits(gl), _bits(n[0].numpy()))
    assert np.array_equal(dx[..., 1], -n[0, ..., 1].numpy()) and np.array_equal(dx[..., ::2], n[0, ..., ::2].numpy())
    assert meta["convention"] == "opengl" and meta_dx["convention"] == "directx"
    npy = np.load(save_dense(d, 0, str(tmp_path / "dx.npy"), "npy", convention="directx"))
    assert np.array_equal(npy, dx)


@pytest.mark.parametrize("mode", ["per_image", "per_batch", "fixed"])
def test_png16_within_one_code_of_its_range(tmp_path, mode):
    d = _metric(1).replace(values=torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(1)) * 37.5 + 0.5)
    rng = png_ranges(d, mode, 0.0, 40.0)
    for i in range(2):
        low, high = (float(x) for x in rng[i])
        values, meta = read_png16(save_dense(d, i, str(tmp_path / f"{mode}{i}.png"), "png16", low=low, high=high))
        err = np.abs(values.astype(np.float64) - d.values[i].double().numpy()).max()
        assert err <= (high - low) / 65535 / 2 * 1.0001, (err, (high - low) / 65535)
        assert meta["units"] == "m" and float(meta["low"]) == low
    if mode == "per_image":  # each image spans the full 16 bits
        from PIL import Image

        codes = np.asarray(Image.open(tmp_path / "per_image0.png"))
        assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == 65535


def test_png16_refuses_to_clip(tmp_path):
    with pytest.raises(ValueError, match="outside the PNG range"):
        save_dense(_metric(), 0, str(tmp_path / "x.png"), "png16", low=0.0, high=1.0)
    n = DenseMap(torch.nn.functional.normalize(torch.randn(1, 2, 2, 3), dim=-1), "normals", convention="opengl")
    with pytest.raises(ValueError, match="save normals as EXR or npy"):
        save_dense(n, 0, str(tmp_path / "n.png"), "png16")


def test_align_example_reference_is_shipped_and_aligns_the_room():
    """workflows/input/room_depth_points.exr is what tools/example_images.py makes; an affine depth of the room fitted
    to its 256 sparse points is the room's metric depth again (the dense_depth_align_point_cloud workflow's chain)."""
    import json
    import os
    import sys

    from unidense_core.dense.align import align_dense
    from unidense_core.io.exr import read_exr

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "tools"))
    import example_images

    shipped, _, attrs = read_exr(os.path.join(root, "workflows/input/room_depth_points.exr"))
    expected = example_images.room_reference()
    assert np.array_equal(_bits(shipped), _bits(expected)) and attrs["unidense:units"] == "m"
    assert int((shipped > 0).sum()) == 16 * 16
    _, distance = example_images.room_scene()
    z = torch.from_numpy(distance / np.linalg.norm(example_images._rays(512, 512), axis=-1)).float()[None]
    affine = DenseMap((z - 1.0) / 5.0, "depth", source="merge-b")  # an affine-invariant depth of the room
    ref = torch.from_numpy(shipped)[None]
    points = DenseMap(ref, "depth", "metric", "m", valid=ref > 0)
    metric, scale, shift, _ = align_dense(affine, points)
    assert abs(float(scale) - 5.0) < 1e-4 and abs(float(shift) - 1.0) < 1e-4
    torch.testing.assert_close(metric.values, z, rtol=1e-5, atol=1e-5)
    with open(os.path.join(root, "workflows/dense_depth_align_point_cloud.json"), encoding="utf-8") as f:
        types = [n["type"] for n in json.load(f)["nodes"]]
    assert {"UniDense_DenseDecode", "UniDense_LoadDense", "UniDense_DenseAlign", "UniDense_SaveRGBD3D"} <= set(types)
