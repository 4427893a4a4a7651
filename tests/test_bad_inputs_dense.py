"""Bad inputs of the DENSE nodes (decode, conversions, align, files, 3D from DENSE): one table row per (node, input).

Every row calls the node's ``execute`` in a real ComfyUI (the tiny VAE of tests/comfy_tiny.py) or the core function
behind it, and must raise a clear error naming the input and what to do (tests/bad_inputs.py).
"""

import sys

import numpy as np
import pytest
import torch
from bad_inputs import Case, run_case

from unidense_core.dense.files import save_dense
from unidense_core.io.exr import read_exr

E: dict = {}  # filled by the env fixture; the table's calls read it when they run
NAN, INF = float("nan"), float("inf")


def node(node_id):
    return E["comfy"].node(f"UniDense_{node_id}")


def dense(kind="depth", b=1, h=6, w=8, value=None, **kw):
    values = torch.rand(b, h, w, 3) if kind == "normals" else torch.rand(b, h, w) + 0.1
    if value is not None:
        values[0, 2, 3] = value
    if kind == "normals":
        values = torch.nn.functional.normalize(values, dim=-1)
        kw.setdefault("convention", "opengl")
    return E["DenseMap"](values, kind, **kw)


def metric(**kw):
    return dense(scale="metric", units="m", **kw)


def decode(latent=None, method="merge-b", scale=8.0, convention="opengl", reference=None, vae=None):
    latent = {"samples": torch.randn(1, 4, 4, 6)} if latent is None else latent
    return lambda: node("DenseDecode").execute(vae or E["vae"], latent, method, scale, convention, reference)


def nan_latent():
    z = torch.randn(1, 4, 4, 6)
    z[0, 1, 2, 3] = NAN
    return {"samples": z}


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory, one_thread):
    from comfy_tiny import comfy_vae

    root = tmp_path_factory.mktemp("bad_dense")
    E.update(comfy=comfy, vae=comfy_vae(comfy), root=root)
    E["DenseMap"] = sys.modules[comfy.node("UniDense_DenseToImage").__module__].DenseMap
    old_in, old_out = comfy.folder_paths.get_input_directory(), comfy.folder_paths.get_output_directory()
    comfy.folder_paths.set_input_directory(str(root))
    comfy.folder_paths.set_output_directory(str(root / "out"))
    np.save(root / "int.npy", np.zeros((4, 4), dtype=np.int32))
    np.save(root / "rgb.npy", np.zeros((4, 4, 3), dtype=np.float32))
    nan = np.ones((4, 4), dtype=np.float32)
    nan[1, 2] = np.nan
    np.save(root / "nan.npy", nan)
    (root / "depth.txt").write_text("1 2 3")
    yield E
    comfy.folder_paths.set_input_directory(old_in)
    comfy.folder_paths.set_output_directory(old_out)
    E.clear()  # free the VAE's ModelPatcher while ComfyUI is alive (no ON_DETACH traceback at exit)


def save(d, fmt="exr", conv="opengl", rng="per_image", low=0.0, high=1.0, prefix="x"):
    """``d``: a function giving the DENSE map (built when the row runs, inside ComfyUI)."""
    return lambda: node("SaveDense").execute(d(), fmt, conv, rng, low, high, prefix)


def rgbd3d(d=None, depth=None, fmt="ply_points"):
    """``d``: a function giving the DENSE map, or None."""
    return lambda: node("SaveRGBD3D").execute(torch.rand(1, 6, 8, 3), depth, "perspective", "depth", fmt, 1.0, 0.0,
                                              60.0, 1, 0.0, "x", None if d is None else d())  # fmt: skip


# fmt: off
CASES = [
    Case("DenseDecode", "empty batch", decode({"samples": torch.rand(0, 4, 4, 6)}), r"latent is empty"),
    Case("DenseDecode", "NaN latent", decode(nan_latent()), r"latent has 1 non-finite.*B=0, C=1, h=2, w=3"),
    Case("DenseDecode", "method bad", decode(method="marigold"), r"method must be one of"),
    Case("DenseDecode", "target_scale NaN", decode(scale=NAN), r"target_scale must be a finite number"),
    Case("DenseDecode", "target_scale -1", decode(scale=-1.0), r"target_scale must be at least 0"),
    Case("DenseDecode", "convention bad", decode(convention="vulkan"), r"normals_convention must be one of"),
    Case("DenseDecode", "16-ch latent, SD vae", decode({"samples": torch.randn(1, 16, 4, 6)}),
         r"latent has 16 channels but the vae decodes 4.*FLUX VAE"),
    Case("DenseDecode", "empty reference", decode(reference=torch.rand(1, 0, 4, 3)), r"reference_image is 4×0"),
    Case("DenseFromMask", "NaN values", lambda: node("DenseFromMask").execute(
        torch.tensor([[[1.0, NAN]]])), r"values has 1 non-finite.*B=0, H=0, W=1"),
    Case("DenseFromMask", "empty values", lambda: node("DenseFromMask").execute(torch.rand(0, 4, 4)),
         r"values is empty"),
    Case("DenseFromMask", "valid another size", lambda: node("DenseFromMask").execute(
        torch.rand(1, 4, 4), valid=torch.ones(1, 4, 5)), r"valid is \(1, 4, 5\) but values is \(1, 4, 4\)"),
    Case("DenseFromMask", "kind normals", lambda: node("DenseFromMask").execute(torch.rand(1, 4, 4), "normals"),
         r"kind must be one of"),
    Case("DenseFromMask", "multiply -1", lambda: node("DenseFromMask").execute(torch.rand(1, 4, 4), multiply=-1.0),
         r"multiply must be > 0"),
    Case("DenseFromMask", "metric without units", lambda: node("DenseFromMask").execute(torch.rand(1, 4, 4),
         units=" "), r"units is empty"),
    Case("DenseToImage", "not a DENSE", lambda: node("DenseToImage").execute(torch.rand(1, 4, 4)),
         r"dense must be a DENSE map"),
    Case("DenseToImage", "fixed range reversed", lambda: node("DenseToImage").execute(dense(), "fixed", 2.0, 1.0),
         r"needs high > low"),
    Case("DenseToImage", "range bad", lambda: node("DenseToImage").execute(dense(), "global"), r"range must be one of"),
    Case("DenseToImage", "no valid pixel", lambda: node("DenseToImage").execute(
        dense(valid=torch.zeros(1, 6, 8, dtype=torch.bool))), r"no valid value .* use range 'fixed'"),
    Case("DenseColorize", "colormap bad", lambda: node("DenseColorize").execute(dense(), "jet"),
         r"colormap must be one of"),
    Case("DenseColorize", "normals", lambda: node("DenseColorize").execute(dense("normals")), r"for normals use"),
    Case("DenseColorize", "low NaN", lambda: node("DenseColorize").execute(dense(), "grey", "fixed", NAN, 1.0),
         r"low must be a finite number"),
    Case("DenseAlign", "reference another size", lambda: node("DenseAlign").execute(dense(), metric(h=6, w=9)),
         r"reference is 9×6 but the prediction 8×6"),
    Case("DenseAlign", "points another size", lambda: node("DenseAlign").execute(dense(), metric(),
         points=torch.ones(1, 5, 8)), r"points mask is \(1, 5, 8\)"),
    Case("DenseAlign", "too few points", lambda: node("DenseAlign").execute(dense(), metric(),
         points=torch.zeros(1, 6, 8).index_put_((torch.tensor([0]), torch.tensor([1]), torch.tensor([1])),
                                                torch.tensor(1.0))),
         r"Image 0 has 1 valid point.*at least 2 points"),
    Case("DenseAlign", "NaN points", lambda: node("DenseAlign").execute(dense(), metric(),
         points=torch.full((1, 6, 8), NAN)), r"points has 48 non-finite"),
    Case("DenseAlign", "reference batch 3 for 2", lambda: node("DenseAlign").execute(dense(b=2), metric(b=3)),
         r"reference has 3 maps for 2"),
    Case("DenseAlign", "normals", lambda: node("DenseAlign").execute(dense("normals"), metric()), r"Normals have no"),
    Case("DenseAlign", "reference not DENSE", lambda: node("DenseAlign").execute(dense(), torch.rand(1, 6, 8)),
         r"reference must be a DENSE map"),
    Case("DenseAlign", "NaN in the prediction", lambda: node("DenseAlign").execute(dense(value=NAN), metric()),
         r"depth values has 1 non-finite"),
    Case("SaveDense", "format bad", save(dense, "tiff"), r"format must be one of"),
    Case("SaveDense", "normals as png16", save(lambda: dense("normals"), "png16"), r"save normals as exr or npy"),
    Case("SaveDense", "png16 fixed range clips", save(metric, "png16", rng="fixed", low=0.0, high=0.5),
         r"outside the PNG range .* would clip"),
    Case("SaveDense", "prefix outside output", save(dense, prefix="../../x"), r"filename_prefix .* cannot be used"),
    Case("SaveDense", "convention bad", save(lambda: dense("normals"), conv="vulkan"),
         r"normals_convention must be one of"),
    Case("LoadDense", "missing file", lambda: node("LoadDense").execute("none.exr"), r"not in ComfyUI's input folder"),
    Case("LoadDense", "outside input", lambda: node("LoadDense").execute("../../etc/x.npy"), r"outside .*input folder"),
    Case("LoadDense", "txt file", lambda: node("LoadDense").execute("depth.txt"), r"must be a \.exr or \.npy"),
    Case("LoadDense", "int npy", lambda: node("LoadDense").execute("int.npy"), r"holds int32 .* expected a float"),
    Case("LoadDense", "rgb npy", lambda: node("LoadDense").execute("rgb.npy"), r"expected a float \[H,W\] map"),
    Case("LoadDense", "NaN npy, zeros valid", lambda: node("LoadDense").execute("nan.npy", zero_is_invalid=False),
         r"file 'nan.npy' has 1 non-finite.*B=0, H=1, W=2"),
    Case("SaveRGBD3D", "dense and depth", rgbd3d(d=lambda: metric(), depth=torch.rand(1, 6, 8, 3)), r"exactly one"),
    Case("SaveRGBD3D", "neither", rgbd3d(), r"exactly one"),
    Case("SaveRGBD3D", "dense disparity", rgbd3d(d=lambda: dense("disparity")), r"needs depth.*Align"),
    Case("SaveRGBD3D", "dense another size", rgbd3d(d=lambda: metric(h=7)), r"dense is 8×7 but image 8×6"),
    Case("SaveRGBD3D", "dense all invalid", rgbd3d(d=lambda: metric(valid=torch.zeros(1, 6, 8, dtype=torch.bool))),
         r"no valid positive depth"),
    Case("core", "exr of a 4-channel map", lambda: __import__("unidense_core.io.exr", fromlist=["x"]).write_exr(
        str(E["root"] / "x.exr"), np.zeros((2, 2, 4), np.float32)), r"\[H,W\] or \[H,W,3\]"),
    Case("core", "read a missing exr", lambda: read_exr(str(E["root"] / "missing.exr")), r"does not exist"),
    Case("core", "save index 3 of 1", lambda: save_dense(dense(), 3, str(E["root"] / "y.npy"), "npy"),
         r"index 3 is outside the batch of 1"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_error(env, case):
    run_case(case)


def test_table_covers_every_dense_node():
    nodes = {c.node for c in CASES}
    assert nodes >= {
        "DenseDecode", "DenseFromMask", "DenseToImage", "DenseColorize", "DenseAlign", "SaveDense", "LoadDense",
        "SaveRGBD3D",
    }  # fmt: skip
