"""Dense outputs to files: 16-bit depth PNGs, and RGB-D images and panoramas -> PLY point clouds / GLB meshes that
ComfyUI's Preview3D opens."""

from __future__ import annotations

import math
import os

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..unidense_core.dense.geometry3d import (
    DEPTH_KINDS,
    FORMATS,
    check_geometry,
    depth_from_map,
    require_trimesh,
    rgbd_to_geometry,
    save_geometry,
)
from ..unidense_core.dense.readout import quantile_normalize as quantile_norm
from ..unidense_core.dense.readout import resize_depth, save_depth_png16
from ..unidense_core.io.checks import check_choice, check_image, check_mask

PROJECTIONS = {  # node choice -> (projection, span)
    "perspective": ("perspective", 360.0),
    "cylindrical_360": ("cylindrical", 360.0),
    "cylindrical_180": ("cylindrical", 180.0),
    "equirectangular": ("equirectangular", 360.0),
}


def _save_path(filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """ComfyUI's (folder, name, counter, subfolder) for a prefix; its refusal (a path outside the output folder)
    becomes an error that names the input."""
    try:
        full_dir, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height
        )
    except Exception as exc:  # ComfyUI raises a bare Exception for prefixes outside the output folder
        raise ValueError(
            f"filename_prefix {filename_prefix!r} cannot be used ({exc}). Use a name or a subfolder/name inside the "
            "output folder."
        ) from exc
    os.makedirs(full_dir, exist_ok=True)
    return full_dir, name, counter, subfolder


class SaveRGBD3D(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_SaveRGBD3D",
            display_name="UniDense Save RGB-D as 3D (PLY/GLB)",
            category="UniDense/3D",
            description="Turn an image and its depth (e.g. a JointNet RGB-D panorama) into a coloured point cloud "
            "(PLY/GLB) or mesh (GLB/PLY) in the output folder. Connect model_file to core 'Preview 3D' to look at "
            "it (the viewer opens GLB). Needs the 'trimesh' package.",
            inputs=[
                io.Image.Input("image", tooltip="The colours [B,H,W,3]."),
                io.Image.Input(
                    "depth",
                    tooltip="Depth or disparity as an image; channel 0 is used (the JointNet read-out). Resized to "
                    "the image if needed.",
                ),
                io.Combo.Input(
                    "projection",
                    options=list(PROJECTIONS),
                    default="cylindrical_360",
                    tooltip="perspective: one camera view (set fov). cylindrical_360/180: a panorama spanning 360°/"
                    "180° horizontally (JointNet pano2mesh). equirectangular: a 2:1 360°×180° image.",
                ),
                io.Combo.Input(
                    "depth_kind",
                    options=list(DEPTH_KINDS),
                    default="disparity",
                    tooltip="disparity: near = bright, depth = 1/(v·scale + shift) (JointNet, MiDaS, ControlNet "
                    "maps). depth: near = dark, depth = v·scale + shift (MERGE, DMP).",
                ),
                io.Combo.Input(
                    "format",
                    options=list(FORMATS),
                    default="glb_mesh",
                    tooltip="glb_mesh / glb_points open in Preview 3D; PLY is for MeshLab, CloudCompare, Blender.",
                ),
                io.Float.Input(
                    "scale", default=1.0, min=1e-4, max=1e4, step=0.01, tooltip="Depth map value scale (see kind)."
                ),
                io.Float.Input(
                    "shift",
                    default=0.05,
                    min=-1e4,
                    max=1e4,
                    step=0.01,
                    tooltip="Depth map value shift; for disparity keep it > 0 so the farthest pixels stay finite.",
                ),
                io.Float.Input(
                    "fov",
                    default=60.0,
                    min=1.0,
                    max=179.0,
                    step=0.5,
                    tooltip="Horizontal field of view in degrees (perspective only).",
                ),
                io.Int.Input(
                    "step",
                    default=1,
                    min=1,
                    max=16,
                    tooltip="Average step×step pixel blocks first (smaller files); must divide the image size.",
                ),
                io.Float.Input(
                    "max_depth_ratio",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=0.05,
                    tooltip="Meshes: drop triangles whose far/near depth ratio exceeds this (no 'rubber sheets' at "
                    "object edges); 0 = keep all (official pano2mesh).",
                ),
                io.String.Input("filename_prefix", default="unidense/rgbd", tooltip="Output subfolder/name prefix."),
            ],
            outputs=[
                io.String.Output(
                    display_name="model_file",
                    tooltip="Path of the first file, relative to the output folder: connect to Preview 3D.",
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        image: torch.Tensor,
        depth: torch.Tensor,
        projection: str,
        depth_kind: str,
        format: str,  # noqa: A002  (the input's name)
        scale: float,
        shift: float,
        fov: float,
        step: int,
        max_depth_ratio: float,
        filename_prefix: str,
    ) -> io.NodeOutput:
        require_trimesh()  # fail before any work when the optional dependency is missing
        check_choice(projection, "projection", list(PROJECTIONS))
        check_choice(depth_kind, "depth_kind", list(DEPTH_KINDS))
        check_choice(format, "format", list(FORMATS))
        check_image(image, "image", channels=(3, 4))
        check_image(depth, "depth")
        for name, value in (("scale", scale), ("shift", shift), ("fov", fov), ("max_depth_ratio", max_depth_ratio)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if depth.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"depth has {depth.shape[0]} images for {image.shape[0]} colour images.")
        proj, span = PROJECTIONS[projection]
        values = resize_depth(depth[..., 0].float(), tuple(image.shape[1:3]))  # [B,H,W]
        # 1. All geometry first, checked as the viewer needs it: a bad input writes no file at all.
        geometries = []
        for i in range(image.shape[0]):
            d = depth_from_map(values[min(i, values.shape[0] - 1)], depth_kind, scale, shift)
            geometry = rgbd_to_geometry(image[i], d, proj, fov, span, step, max_depth_ratio)
            check_geometry(*geometry, format)
            geometries.append(geometry)
        # 2. The files.
        full_dir, name, counter, subfolder = _save_path(filename_prefix)
        ext = "glb" if format.startswith("glb") else "ply"
        results, files = [], []
        for vertices, colors, faces in geometries:
            filename = f"{name}_{counter:05}_.{ext}"
            save_geometry(os.path.join(full_dir, filename), vertices, colors, faces, format)
            results.append(ui.SavedResult(filename, subfolder, io.FolderType.output))
            files.append(f"{subfolder}/{filename}" if subfolder else filename)
            counter += 1
        return io.NodeOutput(files[0], ui={"result": [files[0], None], "3d": results})


class SaveDepth16(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_SaveDepth16",
            display_name="UniDense Save Depth (16-bit PNG)",
            category="UniDense/Depth",
            description="Save depth maps in [0, 1] as 16-bit greyscale PNGs (round(d·65535)), the official JointNet "
            "export, into the output folder.",
            inputs=[
                io.Mask.Input("depth", tooltip="Depth [B,H,W] in [0, 1], e.g. depth_raw of the depth decode."),
                io.String.Input("filename_prefix", default="unidense/jointnet_depth", tooltip="Subfolder/name prefix."),
                io.Boolean.Input(
                    "quantile_normalize",
                    default=False,
                    tooltip="Apply the official --normalize (1%/99% quantiles -> 0/1) before saving.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="first_file", tooltip="Path of the first file, relative to output.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, depth: torch.Tensor, filename_prefix: str, quantile_normalize: bool = False) -> io.NodeOutput:
        d = check_mask(depth, "depth").float()
        d = d[None] if d.ndim == 2 else d  # [B,H,W]
        if quantile_normalize:
            d = quantile_norm(d)
        elif d.min() < 0 or d.max() > 1:
            raise ValueError(
                f"depth holds values in [{float(d.min()):.4g}, {float(d.max()):.4g}], but a 16-bit PNG stores [0, 1] "
                "as 0..65535 and would clip the rest. Turn quantile_normalize on, or normalise the depth first."
            )
        full_dir, name, counter, subfolder = _save_path(filename_prefix, d.shape[-1], d.shape[-2])
        files, saved = [], []
        for i in range(d.shape[0]):
            filename = f"{name}_{counter + i:05}_.png"
            save_depth_png16(d[i], os.path.join(full_dir, filename))
            files.append(f"{subfolder}/{filename}" if subfolder else filename)
            saved.append(ui.SavedResult(filename, subfolder, io.FolderType.output))
        return io.NodeOutput(files[0], ui=ui.SavedImages(saved))
