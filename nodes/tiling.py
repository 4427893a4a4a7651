"""Panorama nodes: TiledPanorama (a MODEL any stock sampler tiles with) and the circular VAE decode/encode."""

from __future__ import annotations

from dataclasses import replace

import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..unidense_core.io.checks import check_choice, check_image, check_latent
from ..unidense_core.tiling.panorama import PRESETS, RAMP_AXES, PanoramaConfig, check_config, circular_pad, crop_pad
from .hosts.tiling import WRAPPER_KEY, PanoramaTiler

CUSTOM = "custom"
OFFICIAL = PRESETS["jointnet_pano"]
CUSTOM_ONLY = " Used only when preset = custom."


class TiledPanorama(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_TiledPanorama",
            display_name="UniDense Tiled Panorama",
            category="UniDense/Panorama",
            description="Coherent wide and 360° panoramas with any sampler (JointNet §4.2 / MultiDiffusion): the "
            "returned MODEL denoises a wide latent in overlapping square tiles, with circular wrap, a random offset "
            "per step, the whole canvas as an extra tile in the first steps and linear tile-edge weights. ControlNet "
            "hints, masks and area conds are cut per tile. Works on SD UNets, PixArt and 8-channel RGB-D models.",
            inputs=[
                io.Model.Input("model", tooltip="Any diffusion MODEL (SD1.x/2.x, PixArt, JointNet RGB-D, ...)."),
                io.Combo.Input(
                    "preset",
                    options=[*PRESETS, CUSTOM],
                    default="jointnet_pano",
                    tooltip="jointnet_pano: the official panorama settings (window = latent height, stride 32, "
                    "circular, random offset, full canvas for 40% of the steps × 5, linear edges 8). "
                    "jointnet_refine: depth refinement (window 64, stride 32, edges ramped on x and y, no wrap; use "
                    "KSampler denoise 0.4). multidiffusion: stride 8, constant weights. custom: the values below.",
                ),
                io.Int.Input(
                    "window",
                    default=0,
                    min=0,
                    max=1024,
                    tooltip="Square tile side in latent px (image px / 8); 0 = the latent height." + CUSTOM_ONLY,
                ),
                io.Int.Input(
                    "stride",
                    default=OFFICIAL.stride,
                    min=1,
                    max=1024,
                    tooltip="Latent px between tile starts. Circular canvases need a width that is a multiple of "
                    "it." + CUSTOM_ONLY,
                ),
                io.Boolean.Input(
                    "circular",
                    default=OFFICIAL.circular,
                    tooltip="Wrap horizontally so the right edge meets the left (360°)." + CUSTOM_ONLY,
                ),
                io.Boolean.Input(
                    "random_offset",
                    default=OFFICIAL.random_offset,
                    tooltip="Shift all tiles by one random offset in [0, stride) each step (needs circular)."
                    + CUSTOM_ONLY,
                ),
                io.Float.Input(
                    "full_canvas_fraction",
                    default=OFFICIAL.full_canvas_fraction,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Add the whole canvas as a tile for the first steps (i <= int(steps × this)); 0 = never."
                    + CUSTOM_ONLY,
                ),
                io.Float.Input(
                    "full_canvas_weight",
                    default=OFFICIAL.full_canvas_weight,
                    min=0.01,
                    max=100.0,
                    step=0.01,
                    tooltip="Weight of the whole-canvas tile against a tile centre (1)." + CUSTOM_ONLY,
                ),
                io.Int.Input(
                    "boundary",
                    default=OFFICIAL.boundary,
                    min=0,
                    max=512,
                    tooltip="Tile weights ramp linearly over this many latent px at tile edges; 0 = constant."
                    + CUSTOM_ONLY,
                ),
                io.Combo.Input(
                    "ramp_axes",
                    options=list(RAMP_AXES),
                    default=OFFICIAL.ramp_axes,
                    tooltip="x: ramp the left/right tile edges (panorama). xy: all four (2-D tiling)." + CUSTOM_ONLY,
                ),
                io.Int.Input(
                    "view_batch_size",
                    default=OFFICIAL.view_batch_size,
                    min=1,
                    max=64,
                    tooltip="Tiles per model call (all presets). Larger is faster on a GPU and needs more memory; "
                    "memory does not grow with the canvas width.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the per-step tile offsets (all presets); the same seed gives the same result.",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="Give to KSampler / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(
        cls,
        model: io.Model.Type,
        preset: str,
        window: int,
        stride: int,
        circular: bool,
        random_offset: bool,
        full_canvas_fraction: float,
        full_canvas_weight: float,
        boundary: int,
        ramp_axes: str,
        view_batch_size: int,
        seed: int,
    ) -> io.NodeOutput:
        if preset == CUSTOM:
            config = PanoramaConfig(
                window=window or None,
                stride=stride,
                circular=circular,
                random_offset=random_offset,
                full_canvas_fraction=full_canvas_fraction,
                full_canvas_weight=full_canvas_weight,
                boundary=boundary,
                ramp_axes=ramp_axes,
                view_batch_size=view_batch_size,
            )
        else:
            check_choice(preset, "preset", [*PRESETS, CUSTOM])
            config = replace(PRESETS[preset], view_batch_size=view_batch_size)
        check_config(config)
        tiler = PanoramaTiler(config, seed, None if preset == CUSTOM else preset)
        m = model.clone()
        for kind, fn in (
            (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, tiler.calc_cond_batch),
            (comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, tiler.prepare_sampling),
        ):
            m.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying the node twice replaces, never stacks
            m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return io.NodeOutput(m)


def _pixel_ratio(vae, decode: bool) -> int:
    ratio = vae.spacial_compression_decode() if decode else vae.spacial_compression_encode()
    if not isinstance(ratio, int):
        raise ValueError("Circular VAE decode/encode needs an image VAE with a fixed spatial factor (e.g. 8).")
    return ratio


def _check_padding(padding: int, latent_width: int, ratio: int) -> None:
    """The padding widget counts latent px: a canvas cannot wrap more than once around itself."""
    if not 0 <= padding <= latent_width:
        raise ValueError(
            f"padding is {padding} latent px, but the canvas is only {latent_width} latent px ({latent_width * ratio} "
            f"image px) wide and cannot wrap more than once. Set padding between 0 and {latent_width} (official: 8)."
        )


class CircularVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_CircularVAEDecode",
            display_name="UniDense Circular VAE Decode",
            category="UniDense/Panorama",
            description="VAE decode of a 360° latent with no seam where its ends meet: the latent is padded "
            "circularly (its right end before the left, its left end after the right), decoded, and cropped back, "
            "as the official JointNet panorama decode (8 latent px).",
            inputs=[
                io.Latent.Input("samples", tooltip="A panorama latent (e.g. from KSampler with TiledPanorama)."),
                io.Vae.Input("vae", tooltip="The model's VAE."),
                io.Int.Input(
                    "padding",
                    default=8,
                    min=0,
                    max=256,
                    tooltip="Latent px wrapped onto each side before decoding (official: 8 = 64 px); 0 = plain.",
                ),
                io.Int.Input(
                    "channel_offset",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="Decode latent channels [offset, offset + the VAE's channels). RGB-D (JointNet, 8 "
                    "channels): 0 = the image, 4 = the depth.",
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The decoded image, seamless across the wrap.")],
        )

    @classmethod
    def execute(cls, samples, vae, padding: int = 8, channel_offset: int = 0) -> io.NodeOutput:
        z = check_latent(samples, "samples")  # [B,C,h,w]
        channels = vae.latent_channels
        if channel_offset + channels > z.shape[1]:
            raise ValueError(
                f"The latent has {z.shape[1]} channels; channels {channel_offset}..{channel_offset + channels - 1} "
                f"do not exist (this VAE decodes {channels}). Use channel_offset 0, or 4 for the depth of an RGB-D "
                "latent."
            )
        z = z[:, channel_offset : channel_offset + channels]  # [B,c,h,w]
        ratio = _pixel_ratio(vae, decode=True)
        _check_padding(padding, z.shape[-1], ratio)
        images = vae.decode(circular_pad(z, padding))  # [B,H,W+2·pad·ratio,3]
        if images.ndim == 5:  # video VAEs: combine batches, as VAEDecode does
            images = images.reshape(-1, *images.shape[-3:])
        return io.NodeOutput(crop_pad(images, padding * ratio, dim=2))


class CircularVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_CircularVAEEncode",
            display_name="UniDense Circular VAE Encode",
            category="UniDense/Panorama",
            description="VAE encode of a 360° image with no seam: the image is padded circularly, encoded and "
            "cropped back, so the latent's ends agree (for img2img / refinement of panoramas).",
            inputs=[
                io.Image.Input("pixels", tooltip="A 360° panorama image (its right edge continues into its left)."),
                io.Vae.Input("vae", tooltip="The model's VAE."),
                io.Int.Input(
                    "padding",
                    default=8,
                    min=0,
                    max=256,
                    tooltip="Latent px (× the VAE factor in image px) wrapped onto each side before encoding.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The encoded latent, seamless across the wrap.")],
        )

    @classmethod
    def execute(cls, pixels: torch.Tensor, vae, padding: int = 8) -> io.NodeOutput:
        check_image(pixels, "pixels", channels=(3, 4))
        ratio = _pixel_ratio(vae, decode=False)
        height, width = pixels.shape[1:3]
        if height % ratio or width % ratio:
            fit_w, fit_h = (max(ratio, v // ratio * ratio) for v in (width, height))
            raise ValueError(
                f"The image is {width}×{height} px; circular encoding needs sides that are multiples of {ratio} "
                f"(e.g. {fit_w}×{fit_h}), or the wrapped ends would not line up."
            )
        _check_padding(padding, width // ratio, ratio)
        padded = circular_pad(pixels[..., :3].movedim(2, -1), padding * ratio).movedim(-1, 2)  # [B,H,W+2p,3]
        z = vae.encode(padded)  # [B,c,h,w+2·pad]
        return io.NodeOutput({"samples": crop_pad(z, padding, dim=-1)})
