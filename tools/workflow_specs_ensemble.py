"""Example workflows for the dense outputs: ensembles with uncertainty, video depth; merged into
``workflow_specs.SPECS`` (same compact format)."""

from __future__ import annotations

from workflow_specs import (
    DMP_DEPTH,
    DMP_NOTE,
    EMPTY_PROMPT,
    FILES_NOTE,
    PIXART,
    VAE,
    dmp_nodes,
    merge_depth_nodes,
)

CONVERTER = "depth_converters/diffusion_pytorch_model.safetensors"
ENSEMBLE = dict(ensemble_size=4, augmentation="noise")
COMBINE = dict(reduction="median", align="auto")
SAVE_EXR = dict(format="exr", normals_convention="opengl", png_range="per_image", low=0.0, high=10.0)

ENSEMBLE_NOTE = (
    FILES_NOTE
    + """

## Ensemble with uncertainty
'UniDense Ensemble Batch' repeats the image N times; the MERGE chain estimates all N·B as one batch (the KSampler's
seed gives each its own noise); 'UniDense Ensemble' aligns the members (least-squares scale and shift) and takes the
median. The uncertainty is their spread (MAD, in depth units) as a MASK, and as an image scaled to its maximum for
Save Image; 'UniDense Save Dense' writes the combined depth and the uncertainty as 32-bit EXR (values unchanged).
Marigold uses 10 members; 4 already show where the estimate is unsure (edges, sky, reflections)."""
)
DMP_ENSEMBLE_NOTE = (
    DMP_NOTE
    + """

## Ensemble by test-time augmentation
DMP is deterministic (no noise), so its members are the image and its mirror (augmentation hflip): 'UniDense
Ensemble' mirrors the odd members back and combines them. With target_scale 0 the read-out is min-max per image, so
the members are aligned by scale and shift; with a metric target_scale set align to none."""
)
VIDEO_NOTE = (
    FILES_NOTE
    + """

## Video depth
Load Video -> Get Video Components -> 'UniDense Video Depth' (chunk_size frames per batch; memory does not grow
with the video's length) -> Create Video (the source frame rate) -> Save Video. Against flicker: shared noise, the
previous frame's latent blended into the start (0.1, as diffusers' Marigold video example) and one scale for the
whole video. The depth video is min-max over the whole sequence (near = white)."""
)


def merge_model_nodes():
    return [
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_PROMPT), {}),
    ]


def ensemble_outputs(members_src, prefix):
    return [
        ("ensemble", "UniDense_Ensemble", dict(ENSEMBLE | COMBINE), dict(members=members_src)),
        ("preview", "PreviewImage", {}, dict(images=("ensemble", 3))),
        ("save_unc", "SaveImage", dict(filename_prefix=prefix), dict(images=("ensemble", 2))),
        # the float maps as 32-bit EXR: the combined depth, and the uncertainty in the same (affine) depth units
        (
            "save_depth_exr",
            "UniDense_SaveDense",
            dict(SAVE_EXR, filename_prefix=prefix + "_depth"),
            dict(dense=("ensemble", 0)),
        ),
        (
            "unc_dense",
            "UniDense_DenseFromMask",
            dict(
                kind="depth",
                scale="affine",
                units="",
                multiply=1.0,
                source="ensemble uncertainty (MAD of the aligned members)",
            ),
            dict(values=("ensemble", 1)),
        ),
        ("save_unc_exr", "UniDense_SaveDense", dict(SAVE_EXR, filename_prefix=prefix), dict(dense=("unc_dense", 0))),
    ]


DENSE_SPECS = {
    "dense_ensemble_uncertainty": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        *merge_model_nodes(),
        ("members", "UniDense_EnsembleBatch", dict(ENSEMBLE), dict(image=("image", 0))),
        *merge_depth_nodes(("members", 0), ("empty", 0), ("vae", 0)),
        *ensemble_outputs(("readout", 1), "unidense/ensemble_uncertainty"),
    ],
    "dense_dmp_ensemble_hflip": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        ("members", "UniDense_EnsembleBatch", dict(ensemble_size=2, augmentation="hflip"), dict(image=("image", 0))),
        *dmp_nodes(DMP_DEPTH, image_src=("members", 0)),
        (
            "readout",
            "UniDense_DMPDepthReadout",
            dict(target_scale=0.0, near_white=True, normalize="per_image"),
            dict(decoded=("decode", 0), reference_image=("members", 0)),
        ),
        (
            "ensemble",
            "UniDense_Ensemble",
            dict(ensemble_size=2, augmentation="hflip", reduction="median", align="auto"),
            dict(members=("readout", 1)),
        ),
        ("preview", "PreviewImage", {}, dict(images=("ensemble", 3))),
        (
            "save_unc",
            "SaveImage",
            dict(filename_prefix="unidense/dmp_ensemble_uncertainty"),
            dict(images=("ensemble", 2)),
        ),
    ],
    "dense_video_depth": [
        ("video", "LoadVideo", dict(file="moving_sphere.mp4", upload="video"), {}),
        ("parts", "GetVideoComponents", {}, dict(video=("video", 0))),
        *merge_model_nodes(),
        ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER, weight_dtype="auto"), {}),
        (
            "depth_model",
            "UniDense_ModeSwitch",
            dict(mode="depth", latent_format="pixart_alpha"),
            dict(model=("unet", 0), converters=("conv", 0)),
        ),
        (
            "video_depth",
            "UniDense_VideoDepth",
            dict(
                method="merge-b",
                chunk_size=8,
                steps=0,
                seed=0,
                control_after_generate="fixed",
                shared_noise=True,
                latent_blend=0.1,
                align="previous",
                resolution="official",
            ),
            dict(frames=("parts", 0), model=("depth_model", 0), vae=("vae", 0), positive=("empty", 0)),
        ),
        ("to_video", "CreateVideo", dict(fps=24.0), dict(images=("video_depth", 2), fps=("parts", 2))),
        (
            "save",
            "SaveVideo",
            dict(filename_prefix="unidense/video_depth", format="auto", codec="auto"),
            dict(video=("to_video", 0)),
        ),
    ],
}
DENSE_NOTES = {
    "dense_ensemble_uncertainty": ENSEMBLE_NOTE,
    "dense_dmp_ensemble_hflip": DMP_ENSEMBLE_NOTE,
    "dense_video_depth": VIDEO_NOTE,
}
