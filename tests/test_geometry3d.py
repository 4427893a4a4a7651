"""RGB-D -> 3D: projections, mesh topology, depth conversion, and the PLY/GLB files (read back with trimesh)."""

import json
import math
import struct
import sys

import pytest
import torch

from unidense_core.dense.geometry3d import (
    FORMATS,
    check_projection,
    depth_from_map,
    drop_stretched,
    grid_faces,
    require_trimesh,
    rgbd_to_geometry,
    save_geometry,
    unproject,
)


def test_equirect_constant_depth_is_a_sphere_facing_forward():
    pts = unproject(torch.full((8, 16), 2.5), "equirectangular")
    assert torch.allclose(pts.norm(dim=-1), torch.full((8, 16), 2.5, dtype=torch.float64))
    centre = pts[3:5, 7:9].mean(dim=(0, 1))  # image centre -> forward (−Z)
    assert centre[2] < -2.3 and abs(centre[0]) < 1e-9
    assert pts[0, :, 1].min() > 0 > pts[-1, :, 1].max()  # top row up, bottom row down
    assert pts[4, 12, 0] > 0 > pts[4, 3, 0]  # right half of the image -> +X (viewer's right)


def test_cylindrical_matches_pano2mesh_geometry():
    depth = torch.rand(6, 24, generator=torch.Generator().manual_seed(0)) + 0.5
    pts = unproject(depth, "cylindrical", span=360.0)
    assert torch.allclose(pts[..., [0, 2]].norm(dim=-1), depth.double())  # horizontal radius = depth
    # square pixels in angle: latitude step = longitude step; height = tan(−lat)·depth (pano2mesh.py)
    step = 2 * math.pi / 24
    lat = (torch.arange(6, dtype=torch.float64) + 0.5) * step - 6 * step / 2
    assert torch.allclose(pts[..., 1], -torch.tan(lat)[:, None] * depth.double())
    half = unproject(depth, "cylindrical", span=180.0)
    angles = torch.atan2(half[0, :, 0], -half[0, :, 2])
    assert angles.min() > -math.pi / 2 and angles.max() < math.pi / 2  # 180° in front of the viewer


def test_perspective_rays():
    pts = unproject(torch.full((4, 6), 3.0), "perspective", fov=90.0)
    assert torch.allclose(pts[..., 2], torch.full((4, 6), -3.0, dtype=torch.float64))
    # 90° horizontal fov: the right edge (x = W) is at 45°, the first pixel centre just inside
    assert math.isclose(pts[0, -1, 0].item() / 3.0, (5.5 - 3) / 3, rel_tol=1e-12)
    assert pts[0, 0, 1] > 0 > pts[-1, 0, 1]


@pytest.mark.parametrize("wrap", [False, True])
def test_grid_faces_topology(wrap):
    h, w = 3, 5
    faces = grid_faces(h, w, wrap)
    assert faces.shape == ((h - 1) * (w if wrap else w - 1) * 2, 3)
    assert faces.min() >= 0 and faces.max() < h * w
    assert all(len(set(f.tolist())) == 3 for f in faces)
    seam = [f for f in faces.tolist() if {c % w for c in f} == {0, w - 1}]
    assert bool(seam) == wrap  # only 360° meshes join the last column to the first
    # front faces look at a viewer in front of a perspective grid (normals towards the origin)
    pts = unproject(torch.full((h, w), 2.0), "perspective").reshape(-1, 3)
    tri = pts[grid_faces(h, w)]
    normals = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert (normals * -tri.mean(dim=1)).sum(-1).min() > 0


def test_drop_stretched():
    depth = torch.tensor([[1.0, 1.0, 5.0], [1.0, 1.0, 5.0]])
    faces = grid_faces(2, 3)
    kept = drop_stretched(faces, depth, 1.5)
    assert len(kept) == 2 and len(drop_stretched(faces, depth, 0)) == 4
    with pytest.raises(ValueError, match="max_ratio"):
        drop_stretched(faces, depth, 0.5)


def test_depth_from_map_official_disparity():
    v = torch.tensor([0.0, 0.25, 1.0])
    d = depth_from_map(v, "disparity", scale=2.0, shift=0.5, near=1e-5, far=1e5)
    assert torch.allclose(d, 1 / (v.double() * 2 + 0.5))
    assert depth_from_map(torch.tensor([0.0]), "disparity", far=50.0).item() == 50.0  # clipped, never inf
    assert torch.allclose(depth_from_map(v, "depth", scale=4.0, shift=1.0), v.double() * 4 + 1)
    with pytest.raises(ValueError, match="depth kind"):
        depth_from_map(v, "metres")


def test_rgbd_to_geometry_shapes_colours_and_step():
    rgb = torch.rand(8, 16, 3, generator=torch.Generator().manual_seed(1))
    depth = torch.rand(8, 16, generator=torch.Generator().manual_seed(2)) + 1
    v, c, f = rgbd_to_geometry(rgb, depth, "equirectangular")
    assert v.shape == (128, 3) and c.dtype == torch.uint8 and f.shape == (7 * 16 * 2, 3)
    assert torch.equal(c[17], (rgb[1, 1] * 255).round().to(torch.uint8))
    v2, c2, f2 = rgbd_to_geometry(rgb, depth, "equirectangular", step=2)
    assert v2.shape == (32, 3) and f2.shape == (3 * 8 * 2, 3)
    assert torch.allclose(v2.norm(dim=-1)[0], depth[:2, :2].mean(), atol=1e-6)


BAD = {
    "equirect_not_2_to_1": (lambda: check_projection(64, 256, "equirectangular", 360), "must be 2:1"),
    "unknown_projection": (lambda: check_projection(8, 8, "fisheye", 360), "projection must be"),
    "span_over_360": (lambda: check_projection(8, 8, "cylindrical", 400), "span"),
    "size_mismatch": (lambda: rgbd_to_geometry(torch.rand(4, 4, 3), torch.rand(4, 5)), "same size"),
    "step_not_dividing": (lambda: rgbd_to_geometry(torch.rand(4, 6, 3), torch.rand(4, 6), step=4), "divide"),
    "fov": (lambda: unproject(torch.ones(2, 2), "perspective", fov=180), "field of view"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    fn, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        fn()


def test_missing_trimesh_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "trimesh", None)
    with pytest.raises(ImportError, match=r"pip install trimesh.*UniDense folder, `pip install -e \"\.\[3d\]\"`"):
        require_trimesh()


@pytest.mark.parametrize("file_format", FORMATS)
def test_files_read_back(tmp_path, file_format):
    trimesh = pytest.importorskip("trimesh")
    rgb = torch.rand(6, 12, 3, generator=torch.Generator().manual_seed(3))
    depth = torch.rand(6, 12, generator=torch.Generator().manual_seed(4)) + 1
    v, c, f = rgbd_to_geometry(rgb, depth, "cylindrical", span=360.0)
    ext = file_format.split("_")[0]
    path = save_geometry(str(tmp_path / f"out.{ext}"), v, c, f, file_format)
    raw = open(path, "rb").read()
    loaded = trimesh.load(path, process=False)
    geom = next(iter(loaded.geometry.values())) if isinstance(loaded, trimesh.Scene) else loaded
    assert torch.allclose(torch.as_tensor(geom.vertices).float(), v, atol=1e-6)
    if file_format.endswith("mesh"):
        assert torch.equal(torch.as_tensor(geom.faces).long(), f)
        visual = geom.visual  # GLB with a material loads COLOR_0 as a vertex attribute
        colours = visual.vertex_colors if ext == "ply" else visual.vertex_attributes["color"]
    else:
        colours = geom.colors
    assert torch.equal(torch.as_tensor(colours)[:, :3], c)
    if ext == "ply":
        assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n") and b"element vertex 72\n" in raw
    else:  # GLB: magic, version 2, JSON chunk with our unlit double-sided material
        assert raw[:4] == b"glTF" and struct.unpack("<I", raw[4:8])[0] == 2
        n = struct.unpack("<I", raw[12:16])[0]
        tree = json.loads(raw[20 : 20 + n])
        mat = tree["materials"][0]
        assert mat["doubleSided"] and "KHR_materials_unlit" in mat["extensions"]
        mode = tree["meshes"][0]["primitives"][0]["mode"]
        assert mode == (4 if file_format == "glb_mesh" else 0)  # triangles / points
