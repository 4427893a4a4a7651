"""Ensembles with uncertainty: N predictions of every image made as one batch by the stock sampler, then combined.

The estimator runs N times the ComfyUI way: as a batch. 'UniDense Ensemble Batch' repeats the images N times
(member-major, as RepeatLatentBatch; for DMP every odd member is mirrored), the usual estimator chain (MERGE
conditioning + KSampler, DMP sampler, JointNet…) runs once on the N·B batch (the sampler's seed gives every batch item
its own noise), and 'UniDense Ensemble' aligns and combines the N·B maps into B, with the spread across the members as
the uncertainty (``unidense_core.dense.ensemble``). Any estimator, sampler and read-out works unchanged in between.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..unidense_core.dense.ensemble import (
    ALIGNMENTS,
    AUGMENTATIONS,
    MAX_MEMBERS,
    REDUCTIONS,
    check_ensemble_size,
    ensemble_map,
    repeat_members,
)
from ..unidense_core.dense.maps import DenseMap
from ..unidense_core.dense.readout import depth_to_display, normalize_depth, normals_to_image
from ..unidense_core.io.checks import check_choice, check_image, check_mask
from .types import Dense

CATEGORY = "UniDense/dense"
SIZE_TIP = (
    f"N, the number of members per image (1-{MAX_MEMBERS}). Marigold uses 10; 4-10 gives a usable uncertainty. "
    "Must match between 'UniDense Ensemble Batch' and 'UniDense Ensemble'."
)
AUGMENTATION_TIP = (
    "noise: plain copies; the members differ by the sampler's noise (MERGE-B/L, JointNet). hflip: every odd member "
    "is mirrored left-right (test-time augmentation for DMP, which is deterministic); 'UniDense Ensemble' mirrors "
    "them back."
)


class EnsembleBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_EnsembleBatch",
            display_name="UniDense Ensemble Batch",
            category=CATEGORY,
            description="Repeat the images N times (member-major: all images, then all again…) so that one run of "
            "the estimator gives N members per image. Feed the output to the estimator as its image, then the "
            "N·B maps to 'UniDense Ensemble'.",
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to estimate [B,H,W,C]."),
                io.Int.Input("ensemble_size", default=4, min=1, max=MAX_MEMBERS, tooltip=SIZE_TIP),
                io.Combo.Input("augmentation", options=list(AUGMENTATIONS), default="noise", tooltip=AUGMENTATION_TIP),
            ],
            outputs=[
                io.Image.Output(
                    display_name="members",
                    tooltip="N·B images: member j of image b is item j·B + b. Estimate depth for all of them.",
                )
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, ensemble_size: int = 4, augmentation: str = "noise") -> io.NodeOutput:
        check_image(image, "image")
        check_ensemble_size(ensemble_size)
        check_choice(augmentation, "augmentation", AUGMENTATIONS)
        return io.NodeOutput(repeat_members(image, ensemble_size, augmentation, width_dim=2))  # [N·B,H,W,C]


class Ensemble(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_Ensemble",
            display_name="UniDense Ensemble (with uncertainty)",
            category=CATEGORY,
            description="Combine N members per image (from 'UniDense Ensemble Batch' through any estimator) into one "
            "map: each member's scale and shift least-squares fitted to the members' median (float32, unless the "
            "map is metric), then the pixelwise median or mean (Marigold's ensembling). The uncertainty is the "
            "spread of the aligned members: MAD (median) or standard deviation (mean) in the map's own units; for "
            "normals the mean angle to the result / π.",
            inputs=[
                io.MultiType.Input(
                    "members",
                    types=[Dense, io.Mask],
                    tooltip="The N·B maps: a UNIDENSE_DENSE batch, or the raw depth MASK of a read-out node (treated "
                    "as depth known up to scale and shift).",
                ),
                io.Int.Input("ensemble_size", default=4, min=1, max=MAX_MEMBERS, tooltip=SIZE_TIP),
                io.Combo.Input(
                    "augmentation",
                    options=list(AUGMENTATIONS),
                    default="noise",
                    tooltip="As set in 'UniDense Ensemble Batch' (hflip: odd members are mirrored back first).",
                ),
                io.Combo.Input(
                    "reduction",
                    options=list(REDUCTIONS),
                    default="median",
                    tooltip="median: robust to a bad member (Marigold's default); uncertainty = MAD. mean: "
                    "uncertainty = standard deviation.",
                ),
                io.Combo.Input(
                    "align",
                    options=list(ALIGNMENTS),
                    default="auto",
                    tooltip="auto: by the map's scale (affine -> scale and shift, scale-invariant -> scale, metric "
                    "-> none). The others force it; none for maps already on one scale.",
                ),
            ],
            outputs=[
                Dense.Output(display_name="dense", tooltip="The B combined maps (same kind, scale and source)."),
                io.Mask.Output(
                    display_name="uncertainty",
                    tooltip="[B,H,W] float spread across the members, in the map's units (0 = all agree); raw, "
                    "not normalised.",
                ),
                io.Image.Output(
                    display_name="uncertainty_image",
                    tooltip="The uncertainty divided by its per-image maximum (white = most spread), for Preview/"
                    "Save Image.",
                ),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The combined map as an image: depth/disparity min-max per image with near = white; "
                    "normals (n + 1)/2.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        members: DenseMap | torch.Tensor,
        ensemble_size: int = 4,
        augmentation: str = "noise",
        reduction: str = "median",
        align: str = "auto",
    ) -> io.NodeOutput:
        check_ensemble_size(ensemble_size)
        check_choice(augmentation, "augmentation", AUGMENTATIONS)
        check_choice(reduction, "reduction", REDUCTIONS)
        check_choice(align, "align", ALIGNMENTS)
        if isinstance(members, torch.Tensor):
            check_mask(members, "members")
            members = DenseMap(members.reshape(-1, *members.shape[-2:]).float(), "depth", scale="affine")
        elif not isinstance(members, DenseMap):
            raise ValueError(f"members must be a UNIDENSE_DENSE or a MASK, got {type(members).__name__}.")
        combined, uncertainty = ensemble_map(members, ensemble_size, augmentation, reduction, align)
        peak = uncertainty.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        unc_image = (uncertainty / peak)[..., None].expand(-1, -1, -1, 3).contiguous()  # [B,H,W,3]
        if combined.kind == "normals":
            preview = normals_to_image(combined.values, channel_dim=-1)
        else:
            unit = normalize_depth(combined.values, "per_image")
            preview = depth_to_display(unit, near_is_low=combined.near_is_low, near_white=True)
        return io.NodeOutput(combined, uncertainty, unc_image, preview)


NODES: list[type[io.ComfyNode]] = [EnsembleBatch, Ensemble]
