"""Socket types the pack's nodes share (ComfyUI's own MODEL, LATENT, IMAGE, MASK are used wherever they fit)."""

from __future__ import annotations

from comfy_api.latest import io

# A unidense_core.dense.maps.DenseMap: float depth / disparity / normals with their meaning (kind, scale, units,
# valid mask, source, normals convention). Conversions to IMAGE / MASK feed stock nodes.
Dense = io.Custom("UNIDENSE_DENSE")
