"""Depth read-out: a decoded prediction IMAGE -> a depth IMAGE for ControlNet plus the raw float depth."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..unidense_core.dense.readout import (
    NORMALIZE,
    depth_to_display,
    merge_depth_from_unit,
    normalize_depth,
    resize_depth,
)


class DepthReadout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_MergeDepthReadout",
            display_name="UniDense MERGE Depth Read-out",
            category="UniDense/MERGE",
            description="Mean of the 3 decoded channels (the official MERGE read-out): affine-invariant depth in "
            "[0, 1], 0 = near. Gives a 3-channel IMAGE for ControlNetApplyAdvanced and the raw depth as a MASK.",
            inputs=[
                io.Image.Input("decoded", tooltip="VAEDecode of the depth latent."),
                io.Boolean.Input(
                    "near_white", default=True, tooltip="On: near = white, as MiDaS and SD depth ControlNets expect."
                ),
                io.Combo.Input(
                    "normalize",
                    options=list(NORMALIZE),
                    default="per_image",
                    tooltip="Stretch the display image to [0, 1]: per image, or over the whole batch "
                    "(steadier for video). The raw output is never normalised.",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="Resize the depth back to this image's size (bilinear, as the official "
                    "pipeline does after resolution binning).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="depth_image", tooltip="3-channel depth for ControlNet / preview."),
                io.Mask.Output(display_name="depth_raw", tooltip="Float depth [B,H,W], 0 = near, not normalised."),
            ],
        )

    @classmethod
    def execute(
        cls,
        decoded: torch.Tensor,
        near_white: bool = True,
        normalize: str = "per_image",
        reference_image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        if decoded.ndim != 4 or decoded.shape[-1] < 3:
            raise ValueError(f"decoded must be an IMAGE [B,H,W,3], got shape {tuple(decoded.shape)}.")
        depth = merge_depth_from_unit(decoded, channel_dim=-1)  # [B,H,W]
        if reference_image is not None:
            depth = resize_depth(depth, tuple(reference_image.shape[1:3]))
        shown = depth_to_display(normalize_depth(depth, normalize), near_is_low=True, near_white=near_white)
        return io.NodeOutput(shown, depth)
