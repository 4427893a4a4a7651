"""Example workflows for the DENSE nodes (issue 11), merged into ``workflow_specs.SPECS`` (same compact format)."""

from __future__ import annotations

REFERENCE = "room_depth_points.exr"  # tools/example_images.py: sparse metric depth of room.png

DENSE_ALIGN_NOTE = f"""## Depth -> metric depth -> point cloud (UniDense)
Files as the DMP workflows: `models/checkpoints/sd-v1-4.ckpt` and `models/loras/dmp/depth-hypersim-notext/`
(the DMP checkpoint folder from the Google Drive folder linked in github.com/shinying/dmp).

Copy `room.png` and `{REFERENCE}` from the pack's `workflows/input/` into `ComfyUI/input/`. The EXR is the room's
metric z-depth at every 32nd pixel (0 = no measurement), as a depth sensor would give it; any float32 EXR (Y channel)
or [H,W] .npy of the image's size works (Load Dense). DMP's hypersim depth is known up to a scale; *Dense Decode*
keeps its float values (no clamp), *Align Depth* fits scale and shift to the points (robust: wrong points are
ignored) and reports them, and the metric depth becomes a coloured point cloud (pinhole camera, 60° horizontal field
of view, as the room was rendered; the camera model is written into the file) and a float32 EXR."""


def _dmp_to_metric_cloud(dmp_nodes, dmp_depth_lora):
    return [
        ("image", "LoadImage", dict(image="room.png", upload="image"), {}),
        *dmp_nodes(dmp_depth_lora),
        (
            "dense",
            "UniDense_DenseDecode",
            dict(method="dmp-depth", target_scale=0.0, normals_convention="opengl"),
            dict(vae=("ckpt", 2), latent=("dmp", 0), reference_image=("image", 0)),
        ),
        (
            "points",
            "UniDense_LoadDense",
            dict(file=REFERENCE, kind="depth", scale="metric", units="m", zero_is_invalid=True),
            {},
        ),
        (
            "align",
            "UniDense_DenseAlign",
            dict(robust=True, seed=0, control_after_generate="fixed"),
            dict(dense=("dense", 0), reference=("points", 0)),
        ),
        (
            "to3d",
            "UniDense_SaveRGBD3D",
            dict(
                projection="perspective",
                depth_kind="depth",
                format="glb_points",
                scale=1.0,
                shift=0.0,
                fov=60.0,
                step=1,
                max_depth_ratio=0.0,
                filename_prefix="unidense/room_metric",
            ),
            dict(image=("image", 0), dense=("align", 0)),
        ),
        ("preview3d", "Preview3D", dict(model_file=""), dict(model_file=("to3d", 0))),
        (
            "save_exr",
            "UniDense_SaveDense",
            dict(
                format="exr",
                normals_convention="opengl",
                png_range="per_image",
                low=0.0,
                high=10.0,
                filename_prefix="unidense/room_metric_depth",
            ),
            dict(dense=("align", 0)),
        ),
        (
            "colour",
            "UniDense_DenseColorize",
            dict(colormap="spectral", range="fixed", low=0.0, high=7.0),
            dict(dense=("align", 0)),
        ),
        ("preview", "PreviewImage", {}, dict(images=("colour", 0))),
    ]


def dense_specs(dmp_nodes, dmp_depth_lora) -> tuple[dict, dict]:
    """(specs, notes) of the DENSE workflows; the DMP chain comes from workflow_specs (no import cycle)."""
    specs = {"dense_depth_align_point_cloud": _dmp_to_metric_cloud(dmp_nodes, dmp_depth_lora)}
    return specs, {name: DENSE_ALIGN_NOTE for name in specs}
