"""Each estimator's decoded prediction -> a :class:`DenseMap`, and a DenseMap -> images for ControlNet, display and
stock nodes.

The read-outs are the official ones (mean of the 3 channels for MERGE and DMP depth, channel 0 for JointNet, 2·rgb − 1
for DMP normals) applied to the **unclamped** decode ``x/2 + 0.5``: ComfyUI's VAEDecode (and diffusers' ``postprocess``)
clamp to [0, 1], which caps DMP's metric depth at its ``target_scale`` and flattens any overshoot of MERGE/JointNet.

Colour maps: a value's *nearness* t ∈ [0, 1] (1 = nearest) is coloured so that near is the bright or warm end of every
map: ``grey`` t (near = white, the MiDaS/ControlNet polarity), ``inferno`` t (near = pale yellow, as the DMP demo),
``turbo`` t (near = dark red), ``spectral`` 1 − t (near = dark red, far = violet, as Marigold shows depth).
``inferno`` and ``turbo`` are their published polynomial fits (inferno: Matt Zucker's CC0 fit; turbo: Anton Mikhailov's
Apache-2.0 fit, Google 2019), not the 256-entry tables: at the ends inferno is within 0.014 and turbo within 0.13 (its
dark ends are the loosest part of the fit; ``tests/test_dense_convert.py::test_colormap_ends``). ``spectral``
interpolates ColorBrewer's 11 Spectral colours linearly, which is what matplotlib's ``Spectral`` is (ends exact).
"""

from __future__ import annotations

import torch

from ..io.checks import check_finite
from ..io.resolution import resize_image
from .maps import NORMAL_CONVENTIONS, DenseMap

# method -> what its read-out gives (the DenseMap's kind and scale, set in :func:`dense_from_decoded`).
METHODS = {
    "merge-b": "mean of the 3 channels: affine-invariant depth, 0 = near (MERGE, Lin et al. 2025)",
    "merge-l": "mean of the 3 channels: affine-invariant depth, 0 = near (MERGE-L on FLUX.1-dev)",
    "dmp-depth": "mean of the 3 channels × target_scale: metric depth in m (DMP, Lee et al. 2024; scale-invariant "
    "when target_scale is 0)",
    "dmp-normals": "2·rgb − 1, normalised: unit surface normals (DMP)",
    "jointnet": "channel 0: relative disparity, near = high (JointNet rgb2j, Zhang et al. 2024)",
}
RANGES = ("per_image", "per_batch", "fixed")
COLORMAPS = ("grey", "inferno", "turbo", "spectral")

_SPECTRAL = (  # ColorBrewer "Spectral", 11 classes, dark red -> violet
    "9e0142 d53e4f f46d43 fdae61 fee08b ffffbf e6f598 abdda4 66c2a5 3288bd 5e4fa2"
).split()
_INFERNO = (  # c0 … c6 of the degree-6 fit (rows: powers of t; columns: r, g, b)
    (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
    (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
    (11.60249308247187, -3.972853965665698, -15.9423941062914),
    (-41.70399613139459, 17.43639888205313, 44.35414519872813),
    (77.162935699427, -33.40235894210092, -81.80730925738993),
    (-71.31942824499214, 32.62606426397723, 73.20951985803202),
    (25.13112622477341, -12.24266895238567, -23.07032500287172),
)
_TURBO = (  # degree-5 fit: powers 0…5 of t (rows), r, g, b (columns)
    (0.13572138, 0.09140261, 0.10667330),
    (4.61539260, 2.19418839, 12.64194608),
    (-42.66032258, 4.84296658, -60.58204836),
    (132.13108234, -14.18503333, 110.36276771),
    (-152.94239396, 4.27729857, -89.90310912),
    (59.28637943, 2.82956604, 27.34824973),
)


def decoded_unit(decoded: torch.Tensor) -> torch.Tensor:
    """A VAE's raw output in [−1, 1] -> ``x/2 + 0.5`` **without** the [0, 1] clamp of VAEDecode/``postprocess``."""
    return decoded / 2 + 0.5


def dense_from_decoded(
    unit: torch.Tensor,
    method: str,
    target_scale: float = 0.0,
    convention: str = "opengl",
    size: tuple[int, int] | None = None,
) -> DenseMap:
    """The official read-out of ``method`` (:data:`METHODS`) on an unclamped decode ``unit`` [B,H,W,C] (C ≥ 3) ->
    a DenseMap that says what it holds. Nothing is clamped: DMP depth ≤ 0 (the official read-out clamps it to 0) is
    kept and marked invalid. ``size`` (H, W): resize back first, as the official pipelines (MERGE bilinear, DMP
    bicubic; the read-outs are linear, so resizing before or after them is the same)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if unit.ndim != 4 or unit.shape[-1] < 3:
        raise ValueError(f"Expected a decoded image [B,H,W,3], got shape {tuple(unit.shape)}.")
    check_finite(unit, "the decoded prediction", "BHWC")
    rgb = unit[..., :3].float()
    if size is not None and tuple(size) != tuple(rgb.shape[1:3]):
        chw = rgb.movedim(-1, 1)
        if method.startswith("dmp"):  # bicubic (antialiased when shrinking), as the DMP read-out nodes
            chw = resize_image(chw, tuple(size), "bicubic")
        else:  # bilinear, align_corners=False, as the official MERGE pipeline (readout.resize_depth)
            chw = torch.nn.functional.interpolate(chw, size=tuple(size), mode="bilinear", align_corners=False)
        rgb = chw.movedim(1, -1)
    if method in ("merge-b", "merge-l"):
        return DenseMap(rgb.mean(dim=-1), "depth", "affine", source=method)
    if method == "jointnet":
        return DenseMap(rgb[..., 0].contiguous(), "disparity", "affine", source=method)
    if method == "dmp-normals":
        if convention not in NORMAL_CONVENTIONS:
            raise ValueError(f"convention must be one of {list(NORMAL_CONVENTIONS)}, got {convention!r}.")
        n = rgb * 2 - 1
        length = n.norm(dim=-1, keepdim=True)
        valid = length[..., 0] > 1e-6  # a zero vector has no direction
        n = torch.where(valid[..., None], n / length.clamp_min(1e-6), torch.zeros_like(n))
        valid = None if valid.all() else valid
        return DenseMap(n, "normals", valid=valid, source="dmp", convention=convention)
    if not target_scale >= 0:
        raise ValueError(f"target_scale must be ≥ 0 (0 = unknown), got {target_scale}.")
    d = rgb.mean(dim=-1)
    valid = d > 0
    valid = None if valid.all() else valid
    if target_scale > 0:
        return DenseMap(d * target_scale, "depth", "metric", "m", valid=valid, source="dmp")
    return DenseMap(d, "depth", "scale", valid=valid, source="dmp")


def convert_normals(dense: DenseMap, convention: str) -> DenseMap:
    """Normals in the other axis convention (OpenGL y up <-> DirectX y down: the y component changes sign)."""
    if dense.kind != "normals":
        raise ValueError(f"Only normals have an axis convention; this map holds {dense.kind}.")
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"convention must be one of {list(NORMAL_CONVENTIONS)}, got {convention!r}.")
    if convention == dense.convention:
        return dense
    flip = torch.tensor([1.0, -1.0, 1.0], dtype=dense.values.dtype, device=dense.values.device)
    return dense.replace(values=dense.values * flip, convention=convention)


def value_range(dense: DenseMap, mode: str = "per_image", low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """[B, 2] (low, high) of each image's valid values (``per_image``), of the whole batch (``per_batch``, steady for
    video), or the given ``fixed`` pair."""
    if mode not in RANGES:
        raise ValueError(f"range must be one of {RANGES}, got {mode!r}.")
    if dense.kind == "normals":
        raise ValueError("normals have no value range to map; use the normals image.")
    b = dense.batch_size
    if mode == "fixed":
        if not (high > low):
            raise ValueError(f"A fixed range needs high > low, got low={low}, high={high}.")
        return torch.tensor([[low, high]], dtype=torch.float32).expand(b, 2).clone()
    valid = dense.valid_mask()
    if not valid.flatten(1).any(dim=1).all():
        empty = [i for i in range(b) if not valid[i].any()]
        raise ValueError(f"Image(s) {empty} have no valid value to take a range from; use range 'fixed'.")
    v = dense.values.float()
    lo = torch.where(valid, v, torch.inf).flatten(1).amin(dim=1)
    hi = torch.where(valid, v, -torch.inf).flatten(1).amax(dim=1)
    if mode == "per_batch":
        lo, hi = lo.min().expand(b), hi.max().expand(b)
    return torch.stack([lo, hi], dim=1).cpu()


def nearness(dense: DenseMap, mode: str = "per_image", low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """[B,H,W] in [0, 1], 1 = nearest: values mapped linearly from their range (:func:`value_range`) with the map's
    polarity. A fixed range saturates values outside it at its ends; invalid pixels are 0 (far)."""
    rng = value_range(dense, mode, low, high).to(dense.values.device)
    lo, hi = rng[:, 0, None, None], rng[:, 1, None, None]
    t = (dense.values.float() - lo) / (hi - lo).clamp_min(1e-12)  # 0 at low, 1 at high; equal values -> 0
    if dense.near_is_low:
        t = 1 - t
    return torch.where(dense.valid_mask(), t.clamp(0, 1), torch.zeros_like(t))


def colormap(t: torch.Tensor, name: str) -> torch.Tensor:
    """[...] values in [0, 1] -> [..., 3] colours in [0, 1] of the map ``name`` (:data:`COLORMAPS`)."""
    if name not in COLORMAPS:
        raise ValueError(f"colormap must be one of {list(COLORMAPS)}, got {name!r}.")
    t = t.float().clamp(0, 1)
    if name == "grey":
        return t[..., None].expand(*t.shape, 3).contiguous()
    if name == "spectral":
        anchors = torch.tensor([[int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] for h in _SPECTRAL], device=t.device)
        x = (1 - t) * (len(anchors) - 1)  # near (t = 1) -> the first colour, dark red
        i = x.floor().long().clamp(max=len(anchors) - 2)
        w = (x - i)[..., None]
        return anchors[i] * (1 - w) + anchors[i + 1] * w
    coeffs = torch.tensor(_INFERNO if name == "inferno" else _TURBO, dtype=torch.float64, device=t.device)
    powers = torch.stack([t.double() ** k for k in range(coeffs.shape[0])], dim=-1)  # [..., K]
    return (powers @ coeffs).clamp(0, 1).float()


def control_image(dense: DenseMap, mode: str = "per_image", low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Depth/disparity -> a ComfyUI IMAGE [B,H,W,3] with near = white (what MiDaS-trained depth ControlNets expect);
    normals -> (n + 1)/2 in the map's convention."""
    if dense.kind == "normals":
        return torch.where(dense.valid_mask()[..., None], (dense.values.float() + 1) / 2, 0.5).clamp(0, 1)
    return colormap(nearness(dense, mode, low, high), "grey")


def colorize(
    dense: DenseMap, name: str = "spectral", mode: str = "per_image", low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """Depth/disparity -> a colour IMAGE [B,H,W,3] (near = the bright/warm end); invalid pixels are black."""
    if dense.kind == "normals":
        raise ValueError("Colour maps show depth or disparity; for normals use the normals image (Dense to Image).")
    rgb = colormap(nearness(dense, mode, low, high), name)
    return torch.where(dense.valid_mask()[..., None], rgb, torch.zeros_like(rgb))
