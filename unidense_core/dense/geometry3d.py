"""RGB-D images and panoramas -> 3D point clouds and meshes, and their PLY / GLB files.

Projections (viewer at the origin; glTF axes: +X right, +Y up, −Z forward; the image centre looks forward):

* ``perspective``: a pinhole camera with a horizontal field of view; depth is the distance along −Z.
* ``cylindrical``: a panorama spanning ``span`` degrees horizontally (360 or 180), square pixels in angle, depth the
  horizontal distance from the axis — the convention of JointNet's ``pano2mesh.py`` (height = tan(latitude)·depth).
* ``equirectangular``: 360° × 180° (2:1), depth the distance along the ray.

JointNet's depth output is disparity-like (near = bright); ``depth_from_map`` turns it into depth with the
official ``1 / (v·scale + shift)``, clipped to [near, far].

Files are written with ``trimesh`` (optional: ``pip install trimesh`` or the pack's ``[3d]`` extra). It handles the
GLB binary layout (4-byte chunk alignment, accessor min/max, normalised colour types) and binary PLY headers that
glTF validators, three.js (ComfyUI's 3D viewer), Blender and MeshLab expect — details a hand-written writer gets
wrong silently — and reads them back for the tests.
"""

from __future__ import annotations

import math
import os

import torch

from ..io.checks import check_finite

PROJECTIONS = ("perspective", "cylindrical", "equirectangular")
DEPTH_KINDS = ("disparity", "depth")
FORMATS = ("glb_mesh", "glb_points", "ply_points", "ply_mesh")
EQUIRECT_TOLERANCE = 0.02


def require_trimesh():
    """Import trimesh, or say how to get it."""
    try:
        import trimesh
    except ImportError as exc:
        raise ImportError(
            "Writing PLY/GLB files needs the 'trimesh' package, an optional dependency of UniDense. Install it into "
            'ComfyUI\'s Python with `pip install trimesh` (or, in the UniDense folder, `pip install -e ".[3d]"`), '
            "then restart ComfyUI."
        ) from exc
    return trimesh


def depth_from_map(
    values: torch.Tensor,
    kind: str = "disparity",
    scale: float = 1.0,
    shift: float = 0.0,
    near: float = 1e-3,
    far: float = 1e5,
) -> torch.Tensor:
    """A depth/disparity map in [0, 1] -> positive depth. ``disparity``: 1 / (v·scale + shift) (pano2mesh.py);
    ``depth``: v·scale + shift. Clipped to [near, far]."""
    if kind not in DEPTH_KINDS:
        raise ValueError(f"depth kind must be one of {DEPTH_KINDS}, got {kind!r}.")
    for name, value in (("scale", scale), ("shift", shift)):
        if not math.isfinite(value):
            raise ValueError(f"The depth {name} must be a finite number, got {value!r}.")
    check_finite(values, "depth", "HW" if values.ndim == 2 else None)
    if not 0 < near < far:
        raise ValueError(f"Need 0 < near < far, got near={near}, far={far}.")
    v = values.double() * scale + shift
    depth = 1.0 / v.clamp_min(1.0 / far) if kind == "disparity" else v
    return depth.clamp(near, far)


def check_projection(height: int, width: int, projection: str, span: float) -> None:
    """Bad projections raise with what to do (equirectangular needs 2:1; spans are in (0, 360])."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}.")
    if height < 1 or width < 1:
        raise ValueError(f"The image is {width}×{height} pixels; a 3D export needs at least one pixel.")
    if projection == "equirectangular" and abs(width / height / 2 - 1) > EQUIRECT_TOLERANCE:
        raise ValueError(
            f"An equirectangular panorama covers 360°×180° and must be 2:1; this image is {width}×{height} "
            f"({width / height:.2f}:1). Use the 'cylindrical' projection for other aspects (e.g. 4:1 panoramas), "
            f"or resize to {2 * height}×{height}."
        )
    if projection == "cylindrical" and not 0 < span <= 360:
        raise ValueError(f"The cylindrical span must be in (0, 360] degrees, got {span}.")
    reach = span * (height - 1) / width / 2  # degrees above/below the horizon at the outermost pixel centres
    if projection == "cylindrical" and reach >= 90:
        raise ValueError(
            f"A cylindrical panorama of {width}×{height} spanning {span:g}° reaches {reach:g}° above and below the "
            "horizon (square pixels in angle), but a cylinder stays under 90°. Use a wider image, the "
            "'equirectangular' projection for 2:1 360° images, or 'perspective'."
        )


def unproject(depth: torch.Tensor, projection: str, fov: float = 60.0, span: float = 360.0) -> torch.Tensor:
    """[H, W] depth -> [H, W, 3] points at pixel centres (float64). ``fov``: horizontal degrees of a perspective
    image; ``span``: horizontal degrees of a cylindrical panorama."""
    height, width = depth.shape
    check_projection(height, width, projection, span)
    d = depth.double()
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5, torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij"
    )  # [H,W] pixel centres
    if projection == "perspective":
        if not 0 < fov < 180:
            raise ValueError(f"The perspective field of view must be in (0, 180) degrees, got {fov}.")
        f = width / 2 / math.tan(math.radians(fov) / 2)  # square pixels
        return torch.stack([(u - width / 2) / f * d, -(v - height / 2) / f * d, -d], dim=-1)
    if projection == "cylindrical":
        span_rad = math.radians(span)
        theta = u / width * span_rad - span_rad / 2  # 0 = forward, + = right
        lat = (v / height - 0.5) * span_rad / width * height  # square pixels in angle; + = down
        return torch.stack([d * torch.sin(theta), -torch.tan(lat) * d, -d * torch.cos(theta)], dim=-1)
    lon = u / width * 2 * math.pi - math.pi
    lat = math.pi / 2 - v / height * math.pi  # + = up
    return torch.stack(
        [d * torch.cos(lat) * torch.sin(lon), d * torch.sin(lat), -d * torch.cos(lat) * torch.cos(lon)], dim=-1
    )


def grid_faces(height: int, width: int, wrap: bool = False) -> torch.Tensor:
    """Two triangles per pixel quad of an H×W vertex grid, [F, 3] int64, front faces towards the viewer at the
    origin; ``wrap`` also joins the last column to the first (360° panoramas)."""
    idx = torch.arange(height * width).reshape(height, width)  # [H,W]
    right = torch.roll(idx, -1, dims=1) if wrap else idx[:, 1:]
    left = idx if wrap else idx[:, :-1]
    v00, v01 = left[:-1], right[:-1]
    v10, v11 = left[1:], right[1:]
    tri0 = torch.stack([v00, v10, v11], dim=-1)
    tri1 = torch.stack([v00, v11, v01], dim=-1)
    return torch.stack([tri0, tri1], dim=-2).reshape(-1, 3)  # [F,3]


def drop_stretched(faces: torch.Tensor, depth: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Remove triangles across depth discontinuities (far/near depth ratio above ``max_ratio``; 0 = keep all)."""
    if max_ratio <= 0:
        return faces
    if not max_ratio > 1:
        raise ValueError(f"max_ratio (the node's max_depth_ratio) must be 0 (off) or > 1, got {max_ratio}.")
    d = depth.flatten()[faces]  # [F,3]
    return faces[d.amax(dim=1) / d.amin(dim=1) <= max_ratio]


def rgbd_to_geometry(
    rgb: torch.Tensor,
    depth: torch.Tensor,
    projection: str = "perspective",
    fov: float = 60.0,
    span: float = 360.0,
    step: int = 1,
    max_ratio: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[H, W, 3] colours in [0, 1] and [H, W] depth -> (vertices [N, 3] float32, colours [N, 3] uint8,
    faces [F, 3] int64). ``step`` > 1 averages step×step pixel blocks first (smaller files)."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"rgb must be [H, W, 3], got {tuple(rgb.shape)}.")
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"depth {tuple(depth.shape)} and rgb {tuple(rgb.shape[:2])} must have the same size.")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}.")
    check_finite(rgb, "rgb", "HWC")
    check_finite(depth, "depth", "HW")
    height, width = depth.shape
    check_projection(height, width, projection, span)
    if step > 1:
        if height % step or width % step:
            raise ValueError(f"step {step} must divide the image size {width}×{height}.")
        pool = torch.nn.functional.avg_pool2d
        rgb = pool(rgb[..., :3].permute(2, 0, 1)[None].double(), step)[0].permute(1, 2, 0)
        depth = pool(depth[None, None].double(), step)[0, 0]
    points = unproject(depth, projection, fov, span)  # [h,w,3]
    wrap = projection == "equirectangular" or (projection == "cylindrical" and span >= 360)
    faces = drop_stretched(grid_faces(*depth.shape, wrap=wrap), depth, max_ratio)
    colors = (rgb[..., :3].double().clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, 3)
    return points.reshape(-1, 3).float(), colors, faces


def check_geometry(vertices: torch.Tensor, colors: torch.Tensor, faces: torch.Tensor | None, file_format: str) -> None:
    """What a viewer needs to open the file: finite vertices, a colour per vertex, at least one point, and for a
    mesh at least one triangle with valid indices (an empty or NaN GLB does not open in Preview 3D)."""
    if file_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {file_format!r}.")
    if vertices.ndim != 2 or vertices.shape[-1] != 3 or vertices.shape[0] == 0:
        raise ValueError(f"Nothing to write: {tuple(vertices.shape)} vertices; the image needs at least one pixel.")
    check_finite(vertices, "The 3D vertices (from depth, scale, shift and the projection)")
    if colors.shape != vertices.shape:
        raise ValueError(f"{colors.shape[0]} colours for {vertices.shape[0]} vertices.")
    if file_format.endswith("mesh"):
        if faces is None or faces.ndim != 2 or faces.shape[0] == 0:
            raise ValueError(
                "The mesh has no triangle: it needs an image of at least 2×2 pixels after 'step', and "
                "max_depth_ratio (if set) must keep some triangles. Use a larger image, a smaller step or "
                "max_depth_ratio = 0, or a points format."
            )
        if int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]:
            raise ValueError(f"Face indices run outside the {vertices.shape[0]} vertices.")


def _unlit_double_sided(tree: dict) -> None:
    """glTF post-processing: one unlit, double-sided material on every primitive, so vertex colours show as they
    are and a panorama is visible from inside and outside."""
    tree["materials"] = [
        {
            "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 1.0},
            "doubleSided": True,
            "extensions": {"KHR_materials_unlit": {}},
        }
    ]
    tree.setdefault("extensionsUsed", [])
    if "KHR_materials_unlit" not in tree["extensionsUsed"]:
        tree["extensionsUsed"].append("KHR_materials_unlit")
    for mesh in tree.get("meshes", []):
        for prim in mesh["primitives"]:
            prim["material"] = 0


def save_geometry(
    path: str, vertices: torch.Tensor, colors: torch.Tensor, faces: torch.Tensor | None, file_format: str
) -> str:
    """Write a point cloud or mesh as ``glb_mesh``, ``glb_points``, ``ply_points`` or ``ply_mesh``; returns path."""
    check_geometry(vertices, colors, faces, file_format)
    trimesh = require_trimesh()
    v, c = vertices.detach().cpu().numpy(), colors.detach().cpu().numpy()
    if file_format.endswith("points"):
        geom = trimesh.PointCloud(v, colors=c)
    else:
        geom = trimesh.Trimesh(v, faces.detach().cpu().numpy(), vertex_colors=c, process=False)
    if file_format.startswith("glb"):
        from trimesh.exchange.gltf import export_glb

        data = export_glb(trimesh.Scene(geom), tree_postprocessor=_unlit_double_sided)
    else:
        data = geom.export(file_type="ply")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path
