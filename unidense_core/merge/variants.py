"""Which MERGE a converter file belongs to: MERGE-B (PixArt-α 512) or MERGE-L (FLUX.1-dev), and loading either.

Both releases ship a ``depth_converters/`` folder with the same file names; the config (or, for a bare file, the
tensor names) tells them apart before any weights are read.
"""

from __future__ import annotations

import os

import torch

from ..io.checkpoints import safetensors_shapes
from .converters import CONVERTER_SOURCE_HINT, MergeConverters, load_converters
from .flux_converters import MergeFluxConverters, load_flux_converters, resolve_converter_path

MERGE_B, MERGE_L = "MERGE-B", "MERGE-L"


def converter_variant(path: str | os.PathLike) -> str:
    """``"MERGE-B"`` or ``"MERGE-L"`` for a converter folder, repo root or file, read from config or key names."""
    weights, cfg = resolve_converter_path(os.fspath(path), CONVERTER_SOURCE_HINT)
    if cfg is not None:
        return MERGE_L if cfg.get("merge_flux_transformer") or "Flux" in cfg.get("_class_name", "") else MERGE_B
    if weights.endswith((".safetensors", ".sft")):
        keys = safetensors_shapes(weights)
        if any(k.startswith(("single_transformer_blocks_in_dual.", "x_embedder.")) for k in keys):
            return MERGE_L
    return MERGE_B  # MERGE-B's loader names any other layout (full models, UNets, FLUX files)


def load_merge_converters(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    flux_operations=None,
) -> MergeConverters | MergeFluxConverters:
    """Load official MERGE-B or MERGE-L converters, whichever the file is (every key and shape checked).

    ``flux_operations``: Linear/RMSNorm classes for MERGE-L's modules (e.g. ComfyUI's casting ops).
    """
    if converter_variant(path) == MERGE_L:
        return load_flux_converters(path, device, dtype, flux_operations)
    return load_converters(path, device, dtype)
