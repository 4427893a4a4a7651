"""DENSE nodes: each estimator's latent -> a DenseMap without clamping, DenseMap -> IMAGE / MASK, colour maps, and
alignment to a metric reference."""

from __future__ import annotations

import copy

import torch
from comfy_api.latest import io, ui

from ..unidense_core.dense.align import align_dense
from ..unidense_core.dense.convert import (
    COLORMAPS,
    METHODS,
    RANGES,
    colorize,
    control_image,
    decoded_unit,
    dense_from_decoded,
)
from ..unidense_core.dense.maps import KINDS, NORMAL_CONVENTIONS, SCALES, DenseMap
from ..unidense_core.io.checks import (
    check_choice,
    check_latent,
    check_mask,
    check_number,
    check_reference,
)
from .types import Dense

CATEGORY = "UniDense/Dense"
JOINTNET_CHANNELS = 4


def _check_dense(dense: object, name: str = "dense") -> DenseMap:
    if not isinstance(dense, DenseMap):
        raise ValueError(f"{name} must be a DENSE map (from a UniDense dense node), got {type(dense).__name__}.")
    return dense


def unclamped_decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """VAEDecode without its [0, 1] clamp: a shallow copy of the VAE whose output step is ``x/2 + 0.5`` alone (the
    input VAE and ComfyUI's modules stay untouched; the copy shares the weights and model management)."""
    if not hasattr(vae, "process_output"):
        raise RuntimeError(
            "This ComfyUI's VAE has no 'process_output' step, so Dense Decode cannot skip its clamp. Use VAEDecode "
            "with a read-out node and Dense from MASK, and report the ComfyUI version to UniDense."
        )
    raw = copy.copy(vae)
    raw.process_output = decoded_unit
    with torch.no_grad():  # ComfyUI runs nodes in inference mode; a script calling the node gets no graph either
        return raw.decode(samples)


def _range_inputs() -> list:
    return [
        io.Combo.Input(
            "range",
            options=list(RANGES),
            default="per_image",
            tooltip="Which values map to black and white: each image's valid min..max, the whole batch's (steady "
            "for video), or fixed low..high (values outside it show as the ends).",
        ),
        io.Float.Input("low", default=0.0, min=-1e6, max=1e6, step=0.01, tooltip="Fixed range: the low value."),
        io.Float.Input("high", default=10.0, min=-1e6, max=1e6, step=0.01, tooltip="Fixed range: the high value."),
    ]


def _check_range(mode: str, low: float, high: float) -> None:
    check_choice(mode, "range", RANGES)
    check_number(low, "low")
    check_number(high, "high")
    if mode == "fixed" and not high > low:
        raise ValueError(f"range 'fixed' needs high > low, got low={low}, high={high}.")


class DenseDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DenseDecode",
            display_name="UniDense Dense Decode (no clamp)",
            category=CATEGORY,
            description="Decode a prediction latent with the VAE **without** VAEDecode's [0, 1] clamp and apply the "
            "method's official read-out, giving a DENSE map that says what it holds: MERGE-B/L affine-invariant "
            "depth, DMP metric depth (× target_scale, not capped at it) or normals, JointNet rgb2j disparity.",
            inputs=[
                io.Vae.Input("vae", tooltip="The method's VAE (SD for MERGE-B, DMP, JointNet; FLUX for MERGE-L)."),
                io.Latent.Input(
                    "latent",
                    tooltip="The sampled prediction latent (JointNet: the 8-channel RGB-D latent or its depth half).",
                ),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default="merge-b",
                    tooltip="Which read-out: " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()) + ".",
                ),
                io.Float.Input(
                    "target_scale",
                    default=8.0,
                    min=0.0,
                    max=1000.0,
                    step=0.1,
                    tooltip="dmp-depth only: the checkpoint's training scale (8 for the paper's bedroom depth model: "
                    "metres). 0 = unknown (e.g. depth-hypersim-notext): depth known up to a scale.",
                ),
                io.Combo.Input(
                    "normals_convention",
                    options=list(NORMAL_CONVENTIONS),
                    default="opengl",
                    tooltip="dmp-normals only: the axis convention of the checkpoint's training normals. Check on a "
                    "sphere: surfaces facing up must come out green-ish in OpenGL (y up).",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="The original input image: the map is resized back to its size (MERGE bilinear, DMP "
                    "bicubic, as the official pipelines).",
                ),
            ],
            outputs=[Dense.Output(display_name="dense", tooltip="Float map with its meaning (never clamped).")],
        )

    @classmethod
    def execute(
        cls,
        vae,
        latent: dict,
        method: str = "merge-b",
        target_scale: float = 8.0,
        normals_convention: str = "opengl",
        reference_image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        check_choice(method, "method", list(METHODS))
        check_choice(normals_convention, "normals_convention", list(NORMAL_CONVENTIONS))
        check_number(target_scale, "target_scale", 0.0)
        z = check_latent(latent, "latent")
        size = None if reference_image is None else check_reference(reference_image)
        if method == "jointnet" and z.shape[1] == 2 * JOINTNET_CHANNELS:
            z = z[:, JOINTNET_CHANNELS:]  # the depth half of an RGB-D latent
        vae_channels = getattr(vae, "latent_channels", z.shape[1])
        if z.shape[1] != vae_channels:
            raise ValueError(
                f"latent has {z.shape[1]} channels but the vae decodes {vae_channels}-channel latents. Connect the "
                "VAE of the method's checkpoint (MERGE-L: the FLUX VAE; the others: the SD VAE)."
            )
        unit = unclamped_decode(vae, z)
        return io.NodeOutput(dense_from_decoded(unit, method, target_scale, normals_convention, size))


class DenseFromMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DenseFromMask",
            display_name="UniDense Dense from MASK",
            category=CATEGORY,
            description="Say what a float MASK holds and make it a DENSE map: the depth_raw of a read-out node, "
            "a metric depth or sparse metric points (mark them with valid) from elsewhere.",
            inputs=[
                io.Mask.Input("values", tooltip="Float values [B,H,W], used as they are (not clamped)."),
                io.Combo.Input(
                    "kind",
                    options=[k for k in KINDS if k != "normals"],
                    default="depth",
                    tooltip="depth: near = low values. disparity: near = high values.",
                ),  # fmt: skip
                io.Combo.Input(
                    "scale",
                    options=list(SCALES),
                    default="metric",
                    tooltip="; ".join(f"{k}: {v}" for k, v in SCALES.items()) + ".",
                ),
                io.String.Input("units", default="m", tooltip="Units of metric values (e.g. m, mm)."),
                io.Float.Input(
                    "multiply",
                    default=1.0,
                    min=1e-9,
                    max=1e9,
                    step=0.001,
                    tooltip="Multiply the values first (e.g. 8 for a DMP depth_raw normalised by its scale, 0.001 "
                    "for millimetres to metres).",
                ),
                io.String.Input("source", default="", tooltip="Where the values come from (kept as metadata)."),
                io.Mask.Input(
                    "valid",
                    optional=True,
                    tooltip="Which pixels hold a value (> 0.5): e.g. the sparse metric points. Default: all.",
                ),
            ],
            outputs=[Dense.Output(display_name="dense", tooltip="The values with their meaning.")],
        )

    @classmethod
    def execute(
        cls,
        values: torch.Tensor,
        kind: str = "depth",
        scale: str = "metric",
        units: str = "m",
        multiply: float = 1.0,
        source: str = "",
        valid: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        check_choice(kind, "kind", ["depth", "disparity"])
        check_choice(scale, "scale", list(SCALES))
        check_number(multiply, "multiply")
        if multiply <= 0:
            raise ValueError(f"multiply must be > 0 (a negative factor flips near and far), got {multiply}.")
        v = check_mask(values, "values").float()
        v = v[None] if v.ndim == 2 else v
        keep = None
        if valid is not None:
            m = check_mask(valid, "valid")
            m = m[None] if m.ndim == 2 else m
            if tuple(m.shape[1:]) != tuple(v.shape[1:]) or m.shape[0] not in (1, v.shape[0]):
                raise ValueError(
                    f"valid is {tuple(m.shape)} but values is {tuple(v.shape)} [B,H,W]; give a mask of the same "
                    "size (batch 1 or B)."
                )
            keep = (m > 0.5).expand_as(v).clone()
        if scale != "metric":
            units = ""
        elif not units.strip():
            raise ValueError("units is empty: metric values need their units (e.g. m).")
        return io.NodeOutput(DenseMap(v * multiply, kind, scale, units.strip(), keep, source))


class DenseToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DenseToImage",
            display_name="UniDense Dense to IMAGE / MASK",
            category=CATEGORY,
            description="A DENSE map for stock nodes: a ControlNet-ready grey IMAGE (near = white, as MiDaS-trained "
            "depth ControlNets expect; normals as (n + 1)/2), the raw float values as a MASK and the valid pixels as "
            "a MASK.",
            inputs=[Dense.Input("dense", tooltip="A DENSE map."), *_range_inputs()],
            outputs=[
                io.Image.Output(display_name="image", tooltip="Grey [B,H,W,3], near = white; normals (n + 1)/2."),
                io.Mask.Output(display_name="values", tooltip="The raw float values [B,H,W] (normals: x component)."),
                io.Mask.Output(display_name="valid", tooltip="1 where the value means something, else 0."),
            ],
        )

    @classmethod
    def execute(cls, dense, range: str = "per_image", low: float = 0.0, high: float = 10.0) -> io.NodeOutput:  # noqa: A002
        dense = _check_dense(dense)
        _check_range(range, low, high)
        image = control_image(dense, range, low, high)
        raw = dense.values[..., 0] if dense.kind == "normals" else dense.values
        return io.NodeOutput(image, raw.float().clone(), dense.valid_mask().float())


class DenseColorize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DenseColorize",
            display_name="UniDense Dense Colour Map",
            category=CATEGORY,
            description="Show depth or disparity in colour; near is the warm/bright end of every map (spectral: "
            "red near, violet far, as Marigold; inferno: yellow near; turbo: red near; grey: white near). Invalid "
            "pixels are black.",
            inputs=[
                Dense.Input("dense", tooltip="A DENSE depth or disparity map."),
                io.Combo.Input("colormap", options=list(COLORMAPS), default="spectral", tooltip="The colour map."),
                *_range_inputs(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Colour IMAGE [B,H,W,3] for preview/save.")],
        )

    @classmethod
    def execute(
        cls,
        dense,
        colormap: str = "spectral",
        range: str = "per_image",  # noqa: A002
        low: float = 0.0,
        high: float = 10.0,
    ) -> io.NodeOutput:
        dense = _check_dense(dense)
        check_choice(colormap, "colormap", list(COLORMAPS))
        _check_range(range, low, high)
        return io.NodeOutput(colorize(dense, colormap, range, low, high))


class DenseAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DenseAlign",
            display_name="UniDense Align Depth (scale and shift)",
            category=CATEGORY,
            description="Least-squares scale and shift per image so the prediction matches a reference: a metric "
            "depth map, sparse metric points (mark them with points), or another frame. Depth fits in depth space; "
            "a disparity (JointNet) fits in disparity space against 1/depth and becomes depth. The result takes the "
            "reference's scale and units (metric), and the fitted pairs are reported.",
            inputs=[
                Dense.Input("dense", tooltip="The prediction, e.g. MERGE's affine-invariant depth."),
                Dense.Input(
                    "reference",
                    tooltip="Metric depth (map or sparse points), or another frame; batch 1 (one for all) or B.",
                ),
                io.Boolean.Input(
                    "robust",
                    default=False,
                    tooltip="Ignore wrong points (up to half): seeded LMedS RANSAC, then least squares on the inliers.",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the robust fit's sampling."),
                io.Mask.Input(
                    "points",
                    optional=True,
                    tooltip="Only pixels > 0.5 here count (e.g. where a sensor measured); default: every pixel valid "
                    "in both maps.",
                ),
            ],
            outputs=[
                Dense.Output(display_name="dense", tooltip="The aligned map, with the reference's scale and units."),
                io.String.Output(display_name="report", tooltip="Scale and shift per image, and the space fitted."),
            ],
        )

    @classmethod
    def execute(
        cls, dense, reference, robust: bool = False, seed: int = 0, points: torch.Tensor | None = None
    ) -> io.NodeOutput:
        dense = _check_dense(dense)
        reference = _check_dense(reference, "reference")
        if points is not None:
            points = check_mask(points, "points")
        aligned, scale, shift, space = align_dense(dense, reference, points, bool(robust), int(seed))
        lines = [f"fitted in {space} space{' (robust)' if robust else ''}: {aligned.describe()}"]
        lines += [
            f"image {i}: scale {float(s):.6g}, shift {float(t):.6g}"
            for i, (s, t) in enumerate(zip(scale, shift, strict=True))
        ]
        report = "\n".join(lines)
        return io.NodeOutput(aligned, report, ui=ui.PreviewText(report))


NODES: list[type[io.ComfyNode]] = [DenseDecode, DenseFromMask, DenseToImage, DenseColorize, DenseAlign]
