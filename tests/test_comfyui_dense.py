"""The DENSE nodes in a real ComfyUI: the decode keeps what VAEDecode clamps, conversions, alignment, files named as
ComfyUI's save nodes name them, and point clouds from a DENSE map with the camera model in the file.

Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import json
import os
import struct
import sys

import numpy as np
import pytest
import torch
from comfy_tiny import comfy_vae

from unidense_core.dense.files import read_exr_dense, read_png16, save_exr


@pytest.fixture(scope="module")
def vae(comfy):
    """The tiny VAE with its output layer scaled up, so its decodes overshoot [−1, 1] as trained decoders do."""
    v = comfy_vae(comfy)
    with torch.no_grad():
        v.first_stage_model.decoder.conv_out.weight.mul_(25.0)
    return v


@pytest.fixture(scope="module")
def DenseMap(comfy):
    """The pack's own DenseMap class (ComfyUI imports the pack as a package of its own: another module copy)."""
    return sys.modules[comfy.node("UniDense_DenseToImage").__module__].DenseMap


@pytest.fixture
def output_dir(comfy, tmp_path):
    old = comfy.folder_paths.get_output_directory()
    comfy.folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    comfy.folder_paths.set_output_directory(old)


def _latent(seed=0, b=2, c=4):
    return {"samples": torch.randn(b, c, 4, 6, generator=torch.Generator().manual_seed(seed)) * 4}


def test_decode_keeps_values_that_vae_decode_clamps(comfy, vae):
    latent = _latent()
    with torch.no_grad():  # as ComfyUI runs nodes (inference mode)
        stock = comfy.nodes.NODE_CLASS_MAPPINGS["VAEDecode"]().decode(vae, latent)[0]  # [B,H,W,3] clamped
        raw = vae.first_stage_model.decode(latent["samples"]).float().movedim(1, -1) / 2 + 0.5
    assert float(raw.max()) > 1.0 and float(raw.min()) < 0.0  # the decoder overshoots: something to keep
    assert float(stock.max()) <= 1.0 and float(stock.min()) >= 0.0  # ComfyUI's VAEDecode clamps it away
    dense = comfy.node("UniDense_DenseDecode").execute(vae, latent, "merge-b").args[0]
    assert (dense.kind, dense.scale, dense.source) == ("depth", "affine", "merge-b")
    torch.testing.assert_close(dense.values, raw.mean(-1), rtol=0, atol=1e-6)
    assert float(dense.values.max()) > float(stock.mean(-1).max())
    inside = ((raw >= 0) & (raw <= 1)).all(-1)  # where nothing was clamped, the two agree
    torch.testing.assert_close(dense.values[inside], stock.mean(-1)[inside], rtol=0, atol=1e-6)
    # DMP metric depth goes above target_scale; JointNet reads channel 0 of the depth half of an RGB-D latent
    dmp = comfy.node("UniDense_DenseDecode").execute(vae, latent, "dmp-depth", 8.0).args[0]
    assert dmp.units == "m" and float(dmp.values.max()) > 8.0
    rgbd = {"samples": torch.cat([torch.zeros_like(latent["samples"]), latent["samples"]], dim=1)}
    joint = comfy.node("UniDense_DenseDecode").execute(vae, rgbd, "jointnet").args[0]
    torch.testing.assert_close(joint.values, raw[..., 0], rtol=0, atol=1e-6)
    assert not hasattr(vae, "_unidense") and vae.process_output(torch.tensor([3.0])).item() == 1.0  # input intact


def test_merge_l_decodes_a_flux_latent_unclamped(comfy):
    from comfy_tiny import comfy_flux_vae

    flux_vae = comfy_flux_vae(comfy)
    with torch.no_grad():
        flux_vae.first_stage_model.decoder.conv_out.weight.mul_(25.0)
    latent = _latent(2, b=1, c=16)
    dense = comfy.node("UniDense_DenseDecode").execute(flux_vae, latent, "merge-l").args[0]
    with torch.no_grad():
        raw = flux_vae.first_stage_model.decode(latent["samples"]).float().movedim(1, -1) / 2 + 0.5
    assert float(raw.max()) > 1.0 and dense.source == "merge-l"
    torch.testing.assert_close(dense.values, raw.mean(-1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="latent has 4 channels but the vae decodes 16"):
        comfy.node("UniDense_DenseDecode").execute(flux_vae, _latent(), "merge-l")


def test_decode_resizes_back_to_the_reference(comfy, vae):
    dense = comfy.node("UniDense_DenseDecode").execute(vae, _latent(1), "dmp-normals", 0.0, "directx",
                                                       torch.rand(1, 40, 50, 3)).args[0]  # fmt: skip
    assert dense.size == (40, 50) and dense.convention == "directx"


def test_to_image_colour_and_mask(comfy, DenseMap):
    d = DenseMap(torch.tensor([[[1.0, 2.0], [3.0, 5.0]]]), "depth", "metric", "m")
    image, values, valid = comfy.node("UniDense_DenseToImage").execute(d, "fixed", 1.0, 5.0).args
    assert image[0, 0, 0].tolist() == [1.0, 1.0, 1.0] and image[0, 1, 1].tolist() == [0.0, 0.0, 0.0]  # near white
    assert torch.equal(values, d.values) and valid.tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    rgb = comfy.node("UniDense_DenseColorize").execute(d, "grey", "per_image", 0.0, 1.0).args[0]
    assert torch.equal(rgb, image)


def test_from_mask_and_align_to_sparse_points(comfy, DenseMap):
    pred = torch.rand(2, 8, 10, generator=torch.Generator().manual_seed(5)) + 0.2
    metric = pred * 3.0 + 0.5
    points = torch.zeros(1, 8, 10)
    points[0, ::3, ::4] = 1.0
    affine = DenseMap(pred, "depth", source="merge-b")
    ref = comfy.node("UniDense_DenseFromMask").execute(metric * points, "depth", "metric", "m", 1.0, "lidar",
                                                       points).args[0]  # fmt: skip
    assert ref.valid is not None and int(ref.valid.sum()) == 2 * 9
    out = comfy.node("UniDense_DenseAlign").execute(affine, ref, False, 0)
    aligned, report = out.args
    assert (aligned.kind, aligned.scale, aligned.units, aligned.source) == ("depth", "metric", "m", "merge-b")
    torch.testing.assert_close(aligned.values, metric, rtol=0, atol=1e-5)
    assert "image 1: scale 3, shift 0.5" in report and out.ui.as_dict()["text"] == (report,)


def test_save_dense_names_files_as_comfyui_does(comfy, DenseMap, output_dir):
    d = DenseMap(torch.rand(2, 5, 7) * 20, "depth", "metric", "m", source="dmp")
    node = comfy.node("UniDense_SaveDense")
    first = node.execute(d, "exr", "opengl", "per_image", 0.0, 1.0, "dense/run").args[0]
    assert first == "dense/run_00001_.exr"
    for i in range(2):
        values, meta = read_exr_dense(os.path.join(output_dir, f"dense/run_{i + 1:05}_.exr"))
        assert np.array_equal(values.view(np.uint32), d.values[i].numpy().view(np.uint32)) and meta["units"] == "m"
    out = node.execute(d, "png16", "opengl", "per_batch", 0.0, 1.0, "dense/run")
    assert out.args[0] == "dense/run_00003_.png"  # the counter continues, as SaveImage's
    values, meta = read_png16(os.path.join(output_dir, "dense/run_00004_.png"))
    span = float(d.values.max() - d.values.min())
    assert np.abs(values - d.values[1].numpy()).max() <= span / 65535
    assert [r["filename"] for r in out.ui["images"]] == ["run_00003_.png", "run_00004_.png"]
    npy = node.execute(d, "npy", "opengl", "per_image", 0.0, 1.0, "dense/run").args[0]
    assert np.array_equal(np.load(os.path.join(output_dir, npy)), d.values[0].numpy())


def test_load_dense_reads_what_save_dense_wrote(comfy, DenseMap, output_dir, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("input")
    old = comfy.folder_paths.get_input_directory()
    comfy.folder_paths.set_input_directory(str(inputs))
    try:
        valid = torch.ones(1, 4, 6, dtype=torch.bool)
        valid[0, 2, 3] = False
        d = DenseMap(torch.rand(1, 4, 6) + 0.5, "depth", "metric", "mm", valid=valid, source="scanner")
        save_exr(d, 0, str(inputs / "ref.exr"))
        loaded = comfy.node("UniDense_LoadDense").execute("ref.exr", "disparity", "affine", "", False).args[0]
        assert (loaded.kind, loaded.scale, loaded.units, loaded.source) == ("depth", "metric", "mm", "scanner")
        assert torch.equal(loaded.values, d.values) and torch.equal(loaded.valid, valid)
        with pytest.raises(ValueError, match="outside ComfyUI's input folder"):
            comfy.node("UniDense_LoadDense").execute("../x.exr")
    finally:
        comfy.folder_paths.set_input_directory(old)


def _glb_json(path):
    with open(path, "rb") as f:
        data = f.read()
    length = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20 : 20 + length])


def test_point_cloud_from_dense_states_its_camera(comfy, DenseMap, output_dir):
    trimesh = pytest.importorskip("trimesh")
    h, w, fov = 6, 8, 90.0
    depth = torch.full((1, h, w), 2.0)
    valid = torch.ones(1, h, w, dtype=torch.bool)
    valid[0, 0, 0] = False  # no point there
    d = DenseMap(depth, "depth", "metric", "m", valid=valid, source="merge-b")
    node = comfy.node("UniDense_SaveRGBD3D")
    image = torch.rand(1, h, w, 3)
    args = dict(projection="perspective", format="ply_points", fov=fov, filename_prefix="pc/x", dense=d)
    out = node.execute(image, None, **args)
    cloud = trimesh.load(os.path.join(output_dir, out.args[0]), process=False)
    assert len(cloud.vertices) == h * w - 1
    assert np.allclose(cloud.vertices[:, 2], -2.0)  # z-depth 2 m in front (−Z)
    f = w / 2  # fov 90°: fx = (W/2) / tan(45°)
    assert np.isclose(cloud.vertices[:, 0].max(), (w - 0.5 - w / 2) / f * 2.0)
    with open(os.path.join(output_dir, out.args[0]), "rb") as fh:
        header = fh.read(2000).split(b"end_header")[0].decode()
    assert '"model": "pinhole"' in header and '"fx": 4.0' in header and "metric in m" in header
    glb = node.execute(image, None, **dict(args, format="glb_points")).args[0]
    extras = _glb_json(os.path.join(output_dir, glb))["asset"]["extras"]
    assert extras["camera"]["model"] == "pinhole" and extras["camera"]["fov_x_deg"] == 90.0
    with pytest.raises(ValueError, match="exactly one"):
        node.execute(image, torch.rand(1, h, w, 3), **args)
    with pytest.raises(ValueError, match="needs depth"):
        node.execute(image, None, **dict(args, dense=d.replace(kind="disparity", scale="affine", units="")))


def test_valid_edges_give_finite_outputs(comfy, DenseMap, output_dir):
    """A 1×1 map, a constant map and a map with one valid pixel go through every conversion and file finitely."""
    maps = [
        DenseMap(torch.full((1, 1, 1), 2.0), "depth", "metric", "m"),
        DenseMap(torch.full((2, 3, 4), 0.5), "disparity"),
        DenseMap(torch.rand(1, 3, 4), "depth", valid=torch.zeros(1, 3, 4, dtype=torch.bool).index_fill_(1,
                 torch.tensor([1]), True)),
    ]  # fmt: skip
    for i, d in enumerate(maps):
        for rng in ("per_image", "per_batch"):
            image, values, valid = comfy.node("UniDense_DenseToImage").execute(d, rng, 0.0, 1.0).args
            colour = comfy.node("UniDense_DenseColorize").execute(d, "turbo", rng, 0.0, 1.0).args[0]
            assert all(torch.isfinite(t).all() for t in (image, values, valid, colour))
            assert float(image.min()) >= 0 and float(image.max()) <= 1
        for fmt in ("exr", "npy", "png16"):
            comfy.node("UniDense_SaveDense").execute(d, fmt, "opengl", "per_image", 0.0, 1.0, f"edge/{i}")
    values, _ = read_png16(os.path.join(output_dir, "edge/1_00005_.png"))  # a constant map keeps its value
    assert (values == 0.5).all()
