"""Video depth: a batch of frames through MERGE-B or DMP chunk by chunk, on one scale, without flicker.

The node runs the same chain as the single-image workflows (MERGE: depth conditioning + KSampler with the official
dpmpp_2m / sgm_uniform, decode, read-out; DMP: processing resolution, VAEEncode, the deterministic sampler, decode,
raw read-out) on ``chunk_size`` frames at a time; ``unidense_core.dense.video.run_video`` drives the chunks, carries
the previous chunk's last latent for the blend and puts every frame on one scale as it arrives. Memory beyond the
frames and the [T,H,W] result does not grow with the number of frames.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.sample
import comfy.utils
import torch
from comfy_api.latest import io

from ..unidense_core.dense.maps import DenseMap
from ..unidense_core.dense.readout import depth_to_display, normalize_depth
from ..unidense_core.dense.video import (
    ALIGN,
    MAX_CHUNK,
    OFFICIAL_BLEND,
    blend_start,
    check_align,
    check_blend,
    check_chunk_size,
    frame_noise,
    run_video,
)
from ..unidense_core.io.checks import check_choice, check_conditioning, check_image, check_number
from .dmp import DeterministicInterpolationSampler, DMPDepthReadout, ProcessingResolution
from .merge import DepthReadout, MergeDepthConditioning
from .types import Dense

METHODS = {"merge-b": 20, "dmp": 5}  # method -> official steps
RESOLUTIONS = ("official", "native")
MERGE_SAMPLER = ("dpmpp_2m", "sgm_uniform")  # the official MERGE sampler and schedule (as the workflows)


def _merge_chunks(model, vae, positive, frames, steps, seed, shared, blend, resolution):
    """MERGE-B per chunk: depth conditioning, KSampler from (1 − β)·ε + β·ẑ, decode, the official read-out."""
    bins = "official_bins" if resolution == "official" else "native"
    latent_in = model.model.process_latent_in  # raw VAE latent -> model space (where ε and ẑ live)

    def estimate(first: int, stop: int, previous: torch.Tensor | None):
        chunk = frames[first:stop]
        pos, neg, latent = MergeDepthConditioning.execute(positive, vae, chunk, bins).args
        empty = latent["samples"]  # [c,4,h,w]
        noise = blend_start(frame_noise(tuple(empty.shape[1:]), first, stop, seed, shared), previous, blend)
        mm.throw_exception_if_processing_interrupted()
        sampler, scheduler = MERGE_SAMPLER
        samples = comfy.sample.sample(
            model, noise, steps, 1.0, sampler, scheduler, pos, neg, empty, seed=seed, disable_pbar=True
        )
        depth = DepthReadout.execute(vae.decode(samples), True, "none", chunk).args[1]  # [c,H,W] raw
        return depth, latent_in(samples.float())

    return estimate


def _dmp_chunks(model, vae, positive, frames, steps, blend, resolution):
    """DMP per chunk: resize, VAEEncode, the sampler from (1 − β)·z_x + β·ẑ, decode, the raw read-out (× 1)."""
    side = 512 if resolution == "official" else 0

    def estimate(first: int, stop: int, previous: torch.Tensor | None):
        chunk = frames[first:stop]
        pixels = ProcessingResolution.execute(chunk, side, "shorter").args[0]
        z_x = vae.encode(pixels[..., :3])  # [c,4,h,w] raw; the blend is affine, so raw or model space is alike
        start = blend_start(z_x, previous, blend)
        mm.throw_exception_if_processing_interrupted()
        pred = DeterministicInterpolationSampler.execute(model, positive, {"samples": start}, steps).args[0]
        depth = DMPDepthReadout.execute(vae.decode(pred["samples"]), 1.0, True, "none", chunk).args[1]
        return depth, pred["samples"]

    return estimate


class VideoDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_VideoDepth",
            display_name="UniDense Video Depth (chunked, temporally consistent)",
            category="UniDense/dense",
            description="Depth for a batch of video frames with MERGE-B or DMP, chunk_size frames at a time (memory "
            "flat in the video's length). Against flicker: one shared starting noise for every frame (MERGE), a "
            "blend of the previous frame's final latent into the start (diffusers' Marigold video example: 0.1), "
            "and one scale for the whole sequence (each frame's raw read-out least-squares aligned, robustly, to "
            "the previous or the first frame) instead of per-frame normalisation.",
            inputs=[
                io.Image.Input("frames", tooltip="The video as an IMAGE batch [T,H,W,C] (e.g. from Load Video)."),
                io.Model.Input(
                    "model",
                    tooltip="merge-b: PixArt-α through 'UniDense Mode Switch' (depth). dmp: SD 1.x with a DMP LoRA "
                    "('UniDense Load DMP LoRA').",
                ),
                io.Vae.Input("vae", tooltip="The model's VAE (PixArt-α: sd-vae-ft-ema; DMP: the SD 1.x VAE)."),
                io.Conditioning.Input(
                    "positive", tooltip="The empty prompt (MERGE: T5 / a saved embedding; DMP '-notext': CLIP)."
                ),
                io.Combo.Input("method", options=list(METHODS), default="merge-b", tooltip="The estimator."),
                io.Int.Input(
                    "chunk_size",
                    default=8,
                    min=1,
                    max=MAX_CHUNK,
                    tooltip="Frames per batch: larger is faster and needs more memory; 1 = one frame at a time.",
                ),
                io.Int.Input("steps", default=0, min=0, max=100, tooltip="0 = official (MERGE 20, DMP 5)."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="MERGE's starting noise (DMP is deterministic).",
                ),
                io.Boolean.Input(
                    "shared_noise",
                    default=True,
                    tooltip="MERGE: one noise for every frame (less flicker). Off: frame t draws from seed + t.",
                ),
                io.Float.Input(
                    "latent_blend",
                    default=OFFICIAL_BLEND,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="β: start frame t from (1 − β)·start + β·(previous frame's final latent). 0.1 as "
                    "diffusers' Marigold video example; 0 = off (suggested for DMP, whose start is the image latent).",
                ),
                io.Combo.Input(
                    "align",
                    options=list(ALIGN),
                    default="previous",
                    tooltip="One scale for the sequence: fit each frame's scale and shift to the previous aligned "
                    "frame (follows moving content) or to the first; none keeps each frame's raw read-out.",
                ),
                io.Combo.Input(
                    "resolution",
                    options=list(RESOLUTIONS),
                    default="official",
                    tooltip="official: MERGE's PixArt 512 bins / DMP's shorter side 512. native: the frames' size "
                    "(MERGE needs multiples of 16).",
                ),
            ],
            outputs=[
                Dense.Output(display_name="dense", tooltip="[T,H,W] depth (near = low) on one scale, affine."),
                io.Mask.Output(display_name="depth_raw", tooltip="The same values as a float MASK [T,H,W]."),
                io.Image.Output(
                    display_name="depth_image",
                    tooltip="Near = white, min-max over the whole video (one range: no flicker from the display).",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        frames: torch.Tensor,
        model: io.Model.Type,
        vae,
        positive: io.Conditioning.Type,
        method: str = "merge-b",
        chunk_size: int = 8,
        steps: int = 0,
        seed: int = 0,
        shared_noise: bool = True,
        latent_blend: float = OFFICIAL_BLEND,
        align: str = "previous",
        resolution: str = "official",
    ) -> io.NodeOutput:
        check_image(frames, "frames", channels=(3, 4))
        check_choice(method, "method", list(METHODS))
        check_chunk_size(chunk_size)
        check_number(steps, "steps", 0, 100)
        check_number(seed, "seed", 0)
        latent_blend = check_blend(latent_blend)
        check_align(align)
        check_choice(resolution, "resolution", RESOLUTIONS)
        check_conditioning(positive, "positive")
        steps = steps or METHODS[method]
        if method == "merge-b":
            estimate = _merge_chunks(model, vae, positive, frames, steps, seed, shared_noise, latent_blend, resolution)
        else:
            estimate = _dmp_chunks(model, vae, positive, frames, steps, latent_blend, resolution)
        bar = comfy.utils.ProgressBar(len(frames))
        result = run_video(
            len(frames), tuple(frames.shape[1:3]), estimate, chunk_size, align, latent_blend,
            progress=lambda done, total: bar.update_absolute(done, total),
        )  # fmt: skip
        depth = result.depth  # [T,H,W] float32
        dense = DenseMap(depth, "depth", scale="affine", source=method)
        shown = depth_to_display(normalize_depth(depth, "per_batch"), near_is_low=True, near_white=True)
        return io.NodeOutput(dense, depth, shown)


NODES: list[type[io.ComfyNode]] = [VideoDepth]
