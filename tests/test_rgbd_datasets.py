"""RGB-D datasets on disk: the plain pair folder (16-bit PNG / npy, masks, captions) and the Marigold layouts
(decoding units, valid ranges, KITTI benchmark crop, Eigen masks, DIODE mask files, tar roots, split files)."""

import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from unidense_core.dense.datasets import LAYOUTS, RGBDSet, eval_crop_mask, kb_crop
from unidense_core.io.depth_files import (
    read_depth,
    read_eth3d_depth,
    write_depth_npy,
    write_depth_png16,
)
from unidense_core.training.synthetic import render_scene, write_scene_folder


def save_png16(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)


def save_rgb(path, h, w, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_pair_folder_png_and_npy_with_masks_and_captions(tmp_path):
    write_scene_folder(tmp_path / "png", 3, 32, 48, seed=1, depth_format="png")
    s = RGBDSet("folder", str(tmp_path / "png"))
    assert [p.rgb for p in s.pairs] == [f"rgb/scene_000{i}.png" for i in range(3)]
    truth = render_scene(32, 48, 100_003 + 2, hole=True)
    got = s.read(2)
    np.testing.assert_allclose(got.depth, np.round(truth.depth * 1000) / 1000, atol=1e-6)  # millimetres -> metres
    np.testing.assert_array_equal(got.valid, truth.valid)  # the hole (0 = no data) is invalid
    # float .npy, an extra mask file and a caption
    root = tmp_path / "npy"
    write_scene_folder(root, 2, 16, 16, seed=2, depth_format="npy", holes=False)
    os.makedirs(root / "mask"), os.makedirs(root / "caption")
    mask = np.ones((16, 16), np.uint8)
    mask[:4] = 0
    Image.fromarray(mask * 255).save(root / "mask" / "scene_0001.png")
    (root / "caption" / "scene_0001.txt").write_text("a ball in front of a wall\n")
    s = RGBDSet("folder", str(root))
    one = s.read(1)
    assert one.caption == "a ball in front of a wall" and not one.valid[:4].any() and one.valid[4:].all()
    assert s.read(0).caption == "" and s.read(0).valid.all()
    np.testing.assert_array_equal(s.read(0).depth, render_scene(16, 16, 200_006).depth)


def test_pair_folder_reads_float_exr_depth_unchanged(tmp_path):
    """EXR depth (as Save Dense writes it) in a pair folder: values read back bit for bit; NaN is an invalid pixel."""
    from unidense_core.io.exr import write_exr

    root = tmp_path / "exr"
    write_scene_folder(root, 2, 16, 24, seed=3, depth_format="npy", holes=False)
    truth = {}
    for name in ("scene_0000", "scene_0001"):
        depth = np.load(root / "depth" / f"{name}.npy").astype(np.float32)
        depth[2, 3] = np.nan if name == "scene_0001" else depth[2, 3]
        os.remove(root / "depth" / f"{name}.npy")
        write_exr(str(root / "depth" / f"{name}.exr"), depth)
        truth[name] = depth
    s = RGBDSet("folder", str(root))
    for i, name in enumerate(("scene_0000", "scene_0001")):
        got = s.read(i)
        np.testing.assert_array_equal(got.depth[got.valid], truth[name][got.valid])
        assert got.valid.sum() == truth[name].size - (i == 1)
    assert not s.read(1).valid[2, 3]
    np.testing.assert_array_equal(read_depth(str(root / "depth" / "scene_0000.exr")), truth["scene_0000"])


def test_nyu_layout_units_range_and_eigen_mask(tmp_path):
    mm = np.full((480, 640), 2500, np.uint16)
    mm[0, 0] = 12000  # 12 m: outside NYU's 1e-3..10 m
    save_png16(str(tmp_path / "test/kitchen/depth_0001.png"), mm)
    save_png16(str(tmp_path / "test/kitchen/filled_0001.png"), mm)
    save_rgb(str(tmp_path / "test/kitchen/rgb_0001.png"), 480, 640)
    split = tmp_path / "split.txt"
    split.write_text("test/kitchen/rgb_0001.png test/kitchen/depth_0001.png test/kitchen/filled_0001.png\n")
    s = RGBDSet("nyu", str(tmp_path), str(split)).read(0)
    assert s.depth[100, 100] == pytest.approx(2.5)
    eigen = np.zeros((480, 640), bool)
    eigen[45:471, 41:601] = True
    np.testing.assert_array_equal(s.valid, eigen)  # the eigen crop only (the 12 m pixel is outside it anyway)
    assert LAYOUTS["nyu"].valid_mask(np.full((480, 640), 12.0, np.float32)).sum() == 0


def test_kitti_layout_benchmark_crop_eigen_mask_and_none_lines(tmp_path):
    h, w = 375, 1242
    gt = np.zeros((h, w), np.uint16)
    gt[200:, 100:1100] = 256 * 20  # 20 m where the LiDAR hit
    save_png16(str(tmp_path / "gt/0001.png"), gt)
    save_rgb(str(tmp_path / "img/0001.png"), h, w)
    split = tmp_path / "eigen.txt"
    split.write_text("img/0001.png gt/0001.png 721.5\nimg/0002.png None 721.5\n")
    ds = RGBDSet("kitti", str(tmp_path), str(split))
    assert len(ds) == 1  # the 'None' line is dropped, as the dataset class does
    s = ds.read(0)
    assert s.rgb.shape == (352, 1216, 3) and s.depth.shape == (352, 1216)
    np.testing.assert_array_equal(s.depth, kb_crop(gt.astype(np.float32) / 256.0))
    expect = (kb_crop(gt) > 0) & eval_crop_mask("kitti_eigen", (352, 1216))
    np.testing.assert_array_equal(s.valid, expect)
    assert eval_crop_mask("kitti_eigen", (352, 1216))[int(0.3324324 * 352) : int(0.91351351 * 352)].any()


def test_diode_mask_file_scannet_units_and_tar_root(tmp_path):
    base = tmp_path / "diode"
    os.makedirs(base / "indoors")
    save_rgb(str(base / "indoors/a.png"), 8, 8)
    np.save(base / "indoors/a_depth.npy", np.full((8, 8, 1), 100.0, np.float32))
    mask = np.ones((8, 8), np.float32)
    mask[0] = 0
    np.save(base / "indoors/a_depth_mask.npy", mask)
    split = tmp_path / "diode.txt"
    split.write_text("indoors/a.png indoors/a_depth.npy indoors/a_depth_mask.npy\n")
    s = RGBDSet("diode", str(base), str(split)).read(0)
    assert s.depth.shape == (8, 8) and not s.valid[0].any() and s.valid[1:].all()
    # the same folder as a tar archive (Marigold ships some sets so)
    tar_path = tmp_path / "diode.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(base, arcname=".")
    t = RGBDSet("diode", str(tar_path), str(split)).read(0)
    np.testing.assert_array_equal(t.depth, s.depth)
    np.testing.assert_array_equal(t.valid, s.valid)
    # ScanNet: JPEG colour, depth in millimetres
    sc = tmp_path / "scannet"
    save_png16(str(sc / "scene0/depth/000100.png"), np.full((6, 8), 1500, np.uint16))
    os.makedirs(sc / "scene0/color")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(sc / "scene0/color/000100.jpg")
    (tmp_path / "sc.txt").write_text("scene0/color/000100.jpg scene0/depth/000100.png\n")
    assert RGBDSet("scannet", str(sc), str(tmp_path / "sc.txt")).read(0).depth[0, 0] == pytest.approx(1.5)


def test_eth3d_raw_float_and_vkitti_hypersim_units(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    arr[0, 1] = np.inf  # ETH3D marks no data with +inf
    got = read_eth3d_depth(arr.tobytes(), 3, 4)
    assert got[0, 1] == 0 and got[2, 3] == 11
    assert LAYOUTS["eth3d"].align_max_res == 1024 and LAYOUTS["eth3d"].max_depth == float("inf")
    assert LAYOUTS["vkitti"].decode == "png/100" and LAYOUTS["vkitti"].kb_crop
    assert LAYOUTS["hypersim"].decode == "png/1000" and LAYOUTS["hypersim"].resize_to == (480, 640)


def test_depth_file_writers_round_trip(tmp_path):
    d = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(read_depth(write_depth_npy(str(tmp_path / "a.npy"), d)), d)
    p = write_depth_png16(str(tmp_path / "a.png"), d, scale=8.0)
    with Image.open(p) as img:
        assert img.info["unidense:scale"] == "8.0"
        codes = np.asarray(img)
    np.testing.assert_array_equal(codes, np.round(d * 65535).astype(np.uint16))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary file left behind
