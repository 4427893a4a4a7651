"""DENSE nodes in a real ComfyUI server (prompts over HTTP, ComfyUI's own execution and caching): a value above 1
reaches the EXR unchanged, and a point cloud from a DENSE map is written and reported."""

import os

import numpy as np
import pytest


def test_metric_depth_above_one_reaches_the_exr_and_the_point_cloud(comfyui_server):
    pytest.importorskip("trimesh")
    from unidense_core.dense.files import read_exr_dense

    prompt = {
        "1": {"class_type": "SolidMask", "inputs": {"value": 0.25, "width": 40, "height": 24}},
        "2": {
            "class_type": "UniDense_DenseFromMask",
            "inputs": {
                "values": ["1", 0],
                "kind": "depth",
                "scale": "metric",
                "units": "m",
                "multiply": 12.0,
                "source": "test",
            },
        },  # fmt: skip
        "3": {
            "class_type": "UniDense_SaveDense",
            "inputs": {
                "dense": ["2", 0],
                "format": "exr",
                "normals_convention": "opengl",
                "png_range": "per_image",
                "low": 0.0,
                "high": 1.0,
                "filename_prefix": "tests/dense",
            },
        },  # fmt: skip
        "4": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": 0}},
        "5": {
            "class_type": "UniDense_SaveRGBD3D",
            "inputs": {
                "image": ["4", 0],
                "dense": ["2", 0],
                "projection": "perspective",
                "depth_kind": "depth",
                "format": "ply_points",
                "scale": 1.0,
                "shift": 0.0,
                "fov": 60.0,
                "step": 1,
                "max_depth_ratio": 0.0,
                "filename_prefix": "tests/cloud",
            },
        },  # fmt: skip
    }
    hist = comfyui_server.run(prompt)
    assert hist["status"]["status_str"] == "success", hist["status"]
    values, meta = read_exr_dense(os.path.join(comfyui_server.base, "output", "tests", "dense_00001_.exr"))
    assert values.shape == (24, 40) and (values == np.float32(0.25) * np.float32(12.0)).all()  # 3 m, not 1
    assert meta["units"] == "m" and meta["source"] == "test"
    saved = hist["outputs"]["5"]["3d"]
    assert saved[0]["filename"] == "cloud_00001_.ply" and saved[0]["subfolder"] == "tests"
    with open(os.path.join(comfyui_server.base, "output", "tests", "cloud_00001_.ply"), "rb") as f:
        header = f.read(1500).split(b"end_header")[0].decode()
    assert "element vertex 960" in header and '"model": "pinhole"' in header
