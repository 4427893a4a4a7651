"""MERGE-L (FLUX.1-dev) depth conditioning: brings the image to a stock sampler; LoadConverter and ModeSwitch are
shared with MERGE-B (``nodes/merge.py``)."""

from __future__ import annotations

import logging

import comfy.latent_formats
import comfy.utils
import node_helpers
import torch
from comfy_api.latest import io

from ..unidense_core.io.checks import check_image, check_not_empty
from ..unidense_core.io.resolution import processing_size
from ..unidense_core.merge.flux_pipeline import MAX_T5_TOKENS, floor16

logger = logging.getLogger(__name__)


def check_flux_conditioning(conditioning, name: str = "conditioning") -> None:
    """The empty prompt as FLUX encodes it: a T5 context with CLIP's pooled output (the official 512 tokens)."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(f"{name} must be a non-empty CONDITIONING (the empty prompt through FLUX's CLIP + T5).")
    for context, extra in conditioning:
        check_not_empty(context, name, "BTC")
        if extra.get("pooled_output") is None:
            raise ValueError(
                f"{name} has no pooled CLIP output; MERGE-L needs the empty prompt encoded by FLUX's "
                "DualCLIPLoader (clip_l + t5xxl, type flux), or a saved embedding made from one (a T5-only "
                "embedding such as MERGE-B's does not work)."
            )
        if context.shape[1] != MAX_T5_TOKENS:
            logger.warning(
                "UniDense MERGE-L: the conditioning has %d T5 tokens; the official depth runs use %d (ComfyUI's "
                "FLUX tokenizer pads to 256: put 'T5TokenizerOptions' with min_length %d before CLIPTextEncode).",
                context.shape[1],
                MAX_T5_TOKENS,
                MAX_T5_TOKENS,
            )


class MergeLDepthConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_MergeLDepthConditioning",
            display_name="UniDense MERGE-L Depth Conditioning (FLUX)",
            category="UniDense/MERGE",
            description="Encode the image with the FLUX VAE and attach its latent to the conditioning, so a stock "
            "KSampler / SamplerCustomAdvanced runs MERGE-L depth estimation on the ModeSwitch(depth) MODEL. "
            "Official settings: ModelSamplingFlux with this node's width/height, euler, simple, 20 steps, cfg 1.0, "
            "the empty prompt (guidance is set to 0). Batches: one depth map per image.",
            inputs=[
                io.Conditioning.Input(
                    "conditioning", tooltip="The empty prompt through FLUX's CLIP-L + T5 (or a saved embedding)."
                ),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Image.Input("image", tooltip="Image(s) to estimate depth for."),
                io.Int.Input(
                    "processing_resolution",
                    default=0,
                    min=0,
                    max=8192,
                    step=16,
                    tooltip="0 (official): the image's own size, floored to multiples of 16. Otherwise the longer "
                    "side in pixels (both sides rounded to multiples of 16), e.g. 1024 to bound time and memory.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The prompt with the image latent attached."),
                io.Conditioning.Output(display_name="negative", tooltip="Same as positive; MERGE-L uses no CFG."),
                io.Latent.Output(display_name="latent", tooltip="Empty depth latent of the right size and batch."),
                io.Int.Output(display_name="width", tooltip="Processed width: give it to ModelSamplingFlux."),
                io.Int.Output(display_name="height", tooltip="Processed height: give it to ModelSamplingFlux."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, vae, image: torch.Tensor, processing_resolution: int = 0) -> io.NodeOutput:
        check_image(image, "image", channels=(3, 4))
        check_flux_conditioning(conditioning)
        if processing_resolution < 0 or processing_resolution % 16:
            raise ValueError(
                f"processing_resolution must be 0 (official) or a multiple of 16, got {processing_resolution}."
            )
        h, w = image.shape[1:3]
        if processing_resolution == 0:
            th, tw = floor16(h, w)
        else:
            th, tw = processing_size(h, w, processing_resolution, multiple=16)
        pixels = image[..., :3]
        if (th, tw) != (h, w):  # the official pipeline resizes with PIL's lanczos
            pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), tw, th, "lanczos", "disabled").movedim(1, -1)
        raw = vae.encode(pixels)  # [B,16,h/8,w/8], unscaled
        if raw.shape[1] != 16:
            raise ValueError(
                f"The VAE gives {raw.shape[1]}-channel latents; MERGE-L needs the 16-channel FLUX VAE "
                "(ae.safetensors from black-forest-labs/FLUX.1-dev)."
            )
        z_img = comfy.latent_formats.Flux().process_in(raw)  # (z - 0.1159) · 0.3611, as the official pipeline
        cond = node_helpers.conditioning_set_values(conditioning, {"noise_concat": z_img, "guidance": 0.0})
        return io.NodeOutput(cond, cond, {"samples": torch.zeros_like(raw)}, tw, th)


NODES = [MergeLDepthConditioning]
