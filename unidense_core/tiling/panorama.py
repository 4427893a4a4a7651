"""Tiled panorama denoising: MultiDiffusion with JointNet's panorama rules, over any denoiser callable.

Implements the tile-based panorama procedure of JointNet (Zhang et al., ICLR 2024, §4.2; the official
``jointnetpano_pipeline.py``): square windows, a stride, horizontal circular wrap for 360° canvases, one random
horizontal offset for all tiles per step, the whole canvas as an extra (heavily weighted) tile during the first steps,
linear tile-edge weights, and MultiDiffusion aggregation ``Σ w·x / Σ w`` (Bar-Tal et al., 2023, Eq. 5).

Nothing here depends on the channel count: tiles are crops of the last two dims, so 4-channel (SD, PixArt) and
8-channel (JointNet RGB-D) latents go through the same code.

Aggregating per-tile steps == stepping the aggregate (why this works inside a k-diffusion / ComfyUI sampler):
the official code lets every view batch take its own DDIM step on its post-CFG ε and averages the stepped latents.
A deterministic DDIM step (η = 0) from ᾱ_t to ᾱ_s is affine in the tile's ε with the *same* coefficients for every
tile, and the tile's input z_v is a crop of the canvas z:

    z'_v = c1·z_v + c2·ε_v,   c1 = √ᾱ_s/√ᾱ_t,   c2 = √(1−ᾱ_s) − √ᾱ_s·√(1−ᾱ_t)/√ᾱ_t
    Σ_v w_v·z'_v / Σ_v w_v = c1·z + c2·(Σ_v w_v·ε_v / Σ_v w_v)        (per pixel, wherever Σ w > 0)

so averaging the stepped tiles is one DDIM step with the averaged ε. In k-diffusion variables (x = z/√ᾱ,
σ = √((1−ᾱ)/ᾱ)) the model returns the denoised D_v = x_v − σ·ε_v, again affine in ε_v with tile-independent
coefficients, so averaging D with the same weights is averaging ε; and DDIM(η = 0) is Euler in σ:
x' = x + (x − D)/σ·(σ' − σ). Hence: aggregate the per-tile *denoised* predictions here and let the sampler step once
on the canvas. CFG is linear too, so averaging cond and uncond predictions separately and applying CFG afterwards
equals the official per-tile CFG. For multistep or stochastic samplers (DPM++, ancestral) the official per-view
scheduler states have no equivalent; stepping the aggregate is the standard MultiDiffusion form.
``tests/test_panorama_core.py::test_matches_official_procedure`` checks all of this against a literal re-statement
of the official loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

RAMP_AXES = ("x", "xy")


@dataclass(frozen=True)
class PanoramaConfig:
    """Tiling settings; the defaults are the official JointNet panorama settings (512×2048 px, 50 DDIM steps)."""

    window: int | None = field(default=None, metadata={"help": "square tile side in latent px; None = latent height"})
    stride: int = field(default=32, metadata={"help": "latent px between tile starts (MultiDiffusion used 8)"})
    circular: bool = field(default=True, metadata={"help": "wrap horizontally: the right edge meets the left (360°)"})
    random_offset: bool = field(default=True, metadata={"help": "shift all tiles by one offset in [0, stride)/step"})
    full_canvas_fraction: float = field(
        default=0.4, metadata={"help": "add the whole canvas as a tile for step indices i <= int(N·fraction); 0 = off"}
    )
    full_canvas_weight: float = field(default=5.0, metadata={"help": "constant weight of the whole-canvas tile"})
    boundary: int = field(default=8, metadata={"help": "linear weight ramp at tile edges, latent px; 0 = constant"})
    ramp_axes: str = field(default="x", metadata={"help": "'x' (panorama) or 'xy' (depth refinement)"})
    view_batch_size: int = field(default=8, metadata={"help": "tiles per model call (official CLI: 8)"})
    denoise: float = field(
        default=1.0, metadata={"help": "sampler denoise the preset is meant for (not used by the tiling itself)"}
    )


# Presets as plain data (official settings read in apple/ml-jointnet, commit c0f7f79).
PRESETS: dict[str, PanoramaConfig] = {
    # jointnetpano_pipeline.py __main__: view_stride 32, circular, random offset, full pano 0.4 × 5, linear 8.
    "jointnet_pano": PanoramaConfig(),
    # jointnet_upsample_pipeline.py: SDEdit strength 0.4, window 64, stride 32, linear 8 on x and y; no wrap, offset
    # or whole-canvas tile.
    "jointnet_refine": PanoramaConfig(
        window=64,
        stride=32,
        circular=False,
        random_offset=False,
        full_canvas_fraction=0.0,
        ramp_axes="xy",
        denoise=0.4,
    ),
    # MultiDiffusion as compared in the JointNet paper (§4.2): stride 8, constant weights, no offset or full tile.
    "multidiffusion": PanoramaConfig(stride=8, random_offset=False, full_canvas_fraction=0.0, boundary=0),
}


@dataclass(frozen=True)
class View:
    """One tile in latent pixels. ``left`` may run past the right edge on a circular canvas (it wraps)."""

    top: int
    left: int
    height: int
    width: int
    is_full: bool = False  # the whole-canvas tile


def preset(name: str, **overrides) -> PanoramaConfig:
    """A preset by name, with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}.")
    return replace(PRESETS[name], **overrides)


def _nearest_multiples(value: int, base: int, step: int) -> tuple[int, int]:
    """The nearest values base + k·step (k >= 0) below and above ``value``."""
    k = max(0, (value - base) // step)
    return base + k * step, base + (k + 1) * step


def check_config(config: PanoramaConfig) -> None:
    """The checks that need no canvas (run when a node builds the config)."""
    window, stride = config.window, config.stride
    for name in ("full_canvas_fraction", "full_canvas_weight"):
        if not math.isfinite(getattr(config, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(config, name)!r}.")
    if config.ramp_axes not in RAMP_AXES:
        raise ValueError(f"ramp_axes must be one of {RAMP_AXES}, got {config.ramp_axes!r}.")
    if stride < 1 or (window is not None and window < 1) or config.boundary < 0 or config.view_batch_size < 1:
        raise ValueError(
            f"stride ({stride}), window ({window}) and view_batch_size ({config.view_batch_size}) must be >= 1 "
            f"and boundary ({config.boundary}) >= 0."
        )
    if not 0.0 <= config.full_canvas_fraction <= 1.0 or config.full_canvas_weight <= 0:
        raise ValueError(
            f"full_canvas_fraction must be in [0, 1] (got {config.full_canvas_fraction}) and full_canvas_weight > 0 "
            f"(got {config.full_canvas_weight})."
        )
    if config.random_offset and not config.circular:
        raise ValueError(
            "random_offset shifts tiles past the right edge, which only works on a circular (360°) canvas: turn "
            "circular on, or random_offset off (the depth-refinement preset uses neither)."
        )
    if window is not None and stride > window:
        raise ValueError(
            f"stride ({stride}) is larger than the window ({window}): columns between tiles would never be denoised. "
            f"Use a stride of at most {window} (official: half the window)."
        )


def check_canvas(
    height: int, width: int, config: PanoramaConfig, vae_factor: int = 8, preset: str | None = None
) -> int:
    """Validate a latent canvas against the tiling; returns the window. Errors say what to choose instead: with a
    ``preset`` (whose window and stride the user cannot set) the canvas size, or the custom settings."""
    check_config(config)
    if height < 1 or width < 1:
        raise ValueError(f"The latent canvas is {width}×{height}; it needs at least one latent pixel on each side.")
    window = config.window or height
    stride = config.stride
    custom = f" or choose preset = custom to set the window and stride (preset '{preset}' fixes them)" if preset else ""

    def px(v: int) -> str:
        return f"{v} latent px = {v * vae_factor} px"

    if window > height:
        fix = f"a window of at most {height} (0 = the latent height, as the official pipeline)" if not preset else ""
        raise ValueError(
            f"The window ({px(window)}) is larger than the canvas height ({px(height)}). Use a latent at least "
            f"{window * vae_factor} px tall" + (f", or {fix}" if fix else custom) + "."
        )
    if window > width:
        wrap = " and circular wrap would make a tile see the same columns twice" if config.circular else ""
        raise ValueError(
            f"The window ({px(window)}) is larger than the canvas width ({px(width)}){wrap}. Use a canvas at least "
            f"{window} wide ({window * vae_factor} px)" + (" or a smaller window" if not preset else custom) + "."
        )
    if stride > window:
        what = "the window" if config.window else "the window (= the latent height)"
        fix = (
            f"Use a stride of at most {window} (official: half the window)"
            if not preset
            else (f"Use a latent at least {stride * vae_factor} px tall" + custom)
        )
        raise ValueError(
            f"stride ({stride}) is larger than {what} ({window}): columns between tiles would never be denoised. "
            + fix
            + "."
        )
    if config.circular and width % stride:
        lo, hi = _nearest_multiples(width, 0, stride)
        lo = max(lo, stride * math.ceil(window / stride))
        hi = max(hi, lo + stride)
        other = f", or a stride that divides {width}" if not preset else custom
        raise ValueError(
            f"With circular wrap the canvas width ({px(width)}) must be a multiple of the stride ({stride}), or "
            f"the tiles do not go round the 360° evenly. Choose a width of {lo * vae_factor} or {hi * vae_factor} "
            f"px{other}."
        )
    if not config.circular and (width - window) % stride:
        lo, hi = _nearest_multiples(width, window, stride)
        raise ValueError(
            f"Without wrap the canvas width ({px(width)}) must be window + k·stride ({window} + k·{stride}), or "
            f"the right edge is never covered by a tile. Choose a width of {lo * vae_factor} or {hi * vae_factor} "
            f"px{custom}."
        )
    if (height - window) % stride:
        lo, hi = _nearest_multiples(height, window, stride)
        raise ValueError(
            f"The canvas height ({px(height)}) must be window + k·stride ({window} + k·{stride}). Choose a height "
            f"of {lo * vae_factor} or {hi * vae_factor} px{custom}."
        )
    return window


def plan_views(
    height: int, width: int, config: PanoramaConfig, offset: int = 0, include_full: bool = False
) -> list[View]:
    """Tile layout of one step: rows × columns of square windows, all shifted right by ``offset`` (wrapping on a
    circular canvas), plus the whole canvas shifted by the same offset when ``include_full``. Official: ``get_views``.
    """
    window = check_canvas(height, width, config)
    if offset and not config.circular:
        raise ValueError("A horizontal offset needs a circular canvas (see check_canvas).")
    rows = (height - window) // config.stride + 1
    cols = width // config.stride if config.circular else (width - window) // config.stride + 1
    offset = offset % width if config.circular else 0
    views = []
    for r in range(rows):
        for c in range(cols):
            left = (c * config.stride + offset) % width if config.circular else c * config.stride
            views.append(View(r * config.stride, left, window, window))
    if include_full:
        views.append(View(0, offset, height, width, is_full=True))
    return views


def batch_views(views: Sequence[View], view_batch_size: int) -> list[list[View]]:
    """Group tiles for one model call each; the whole-canvas tile (another size) always goes alone, last."""
    tiles = [v for v in views if not v.is_full]
    batches = [list(tiles[i : i + view_batch_size]) for i in range(0, len(tiles), view_batch_size)]
    return batches + [[v] for v in views if v.is_full]


def include_full_canvas(step: int, num_steps: int, fraction: float) -> bool:
    """Official rule: the whole canvas joins for step indices i <= int(N·fraction) (21 of 50 steps at 0.4)."""
    return fraction > 0 and step <= int(num_steps * fraction)


def draw_offsets(num_steps: int, stride: int, generator: torch.Generator | None = None) -> list[int]:
    """One horizontal offset in [0, stride) per step, from the generator (the official code uses numpy's global RNG)."""
    return [int(v) for v in torch.randint(stride, (num_steps,), generator=generator)]


def _ramp(n: int, size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Official linear boundary: w(p) = clamp(n/2 − |p + 0.5 − n/2|, 0, size)/size; 1/(2·size) at the edge pixel."""
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    return ((n / 2 - (pos - n / 2).abs()).clamp(0, size) / size).to(dtype=dtype, device=device)  # [n]


def tile_weight(view: View, config: PanoramaConfig, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Aggregation weight of one tile, [h, w]: constant for the whole canvas, else the linear edge ramp."""
    h, w = view.height, view.width
    if view.is_full:
        return torch.full((h, w), config.full_canvas_weight, dtype=dtype, device=device)
    if config.boundary == 0:
        return torch.ones(h, w, dtype=dtype, device=device)
    wx = _ramp(w, config.boundary, dtype, device)[None, :].expand(h, w)  # [h,w]
    if config.ramp_axes == "x":
        return wx.contiguous()
    wy = _ramp(h, config.boundary, dtype, device)[:, None].expand(h, w)  # [h,w]
    return torch.minimum(wx, wy)


def _column_runs(left: int, width: int, canvas_width: int) -> list[tuple[int, int, int]]:
    """(tile_start, canvas_start, length) runs of a tile's columns; two runs when it wraps past the right edge."""
    left %= canvas_width
    first = min(width, canvas_width - left)
    runs = [(0, left, first)]
    if first < width:
        runs.append((first, 0, width - first))
    return runs


def gather(canvas: torch.Tensor, view: View, scale: int = 1) -> torch.Tensor:
    """The tile's crop of the last two dims of ``canvas`` (wrapping horizontally); ``scale`` maps latent px to the
    canvas' own pixels (e.g. 8 for a ControlNet hint at image resolution)."""
    top, h = view.top * scale, view.height * scale
    rows = canvas[..., top : top + h, :]
    runs = _column_runs(view.left * scale, view.width * scale, canvas.shape[-1])
    if len(runs) == 1:
        _, c0, n = runs[0]
        return rows[..., c0 : c0 + n]
    return torch.cat([rows[..., c0 : c0 + n] for _, c0, n in runs], dim=-1)


def scatter_add_(canvas: torch.Tensor, tile: torch.Tensor, view: View) -> torch.Tensor:
    """``canvas[view] += tile`` in place, wrapping horizontally (the inverse placement of ``gather``)."""
    rows = canvas[..., view.top : view.top + view.height, :]
    for t0, c0, n in _column_runs(view.left, view.width, canvas.shape[-1]):
        rows[..., c0 : c0 + n] += tile[..., t0 : t0 + n]
    return canvas


def weight_sum(height: int, width: int, views: Sequence[View], config: PanoramaConfig) -> torch.Tensor:
    """Σ w over all tiles at every latent pixel, [H, W] (float64) — the MultiDiffusion normaliser."""
    count = torch.zeros(height, width, dtype=torch.float64)
    for v in views:
        scatter_add_(count, tile_weight(v, config, torch.float64), v)
    return count


Denoiser = Callable[[torch.Tensor, list[View]], "torch.Tensor | Sequence[torch.Tensor]"]


def tiled_apply(
    fn: Denoiser, x: torch.Tensor, views: Sequence[View], config: PanoramaConfig
) -> torch.Tensor | list[torch.Tensor]:
    """MultiDiffusion aggregation: run ``fn`` on batches of tiles and return Σ w·out / Σ w on the canvas.

    ``fn(tiles, views)`` gets the tiles stacked view-major, [len(views)·B, C, h, w], and returns a tensor (or a list of
    tensors, e.g. one per conditioning) of the same batch layout; each output is aggregated separately with the same
    weights. Memory: one canvas-sized buffer per output plus one [H, W] weight sum, whatever the width.
    """
    if x.ndim != 4:
        raise ValueError(f"Panorama tiling works on image latents [B,C,H,W], got shape {tuple(x.shape)}.")
    batch, (height, width) = x.shape[0], x.shape[-2:]
    values: list[torch.Tensor] | None = None
    single = True
    count = None
    for group in batch_views(views, config.view_batch_size):
        tiles = torch.cat([gather(x, v) for v in group])  # [n·B,C,h,w]
        out = fn(tiles, group)
        single = isinstance(out, torch.Tensor)
        outs = [out] if single else list(out)
        if values is None:
            acc = torch.promote_types(outs[0].dtype, torch.float32)  # accumulate half-precision outputs in fp32
            dtypes = [o.dtype for o in outs]
            values = [o.new_zeros(batch, *o.shape[1:-2], height, width, dtype=acc) for o in outs]  # [B,C',H,W] each
            count = outs[0].new_zeros(height, width, dtype=acc)  # [H,W]
        for k, view in enumerate(group):
            w = tile_weight(view, config, count.dtype, count.device)  # [h,w]
            for value, o in zip(values, outs, strict=True):
                scatter_add_(value, o[k * batch : (k + 1) * batch] * w, view)
            scatter_add_(count, w, view)
    if values is None:
        raise ValueError("No tiles to denoise.")
    if not bool((count > 0).all()):
        raise RuntimeError("Some latent pixels are covered by no tile; check the layout with check_canvas().")
    result = [(value / count).to(dtype) for value, dtype in zip(values, dtypes, strict=True)]
    return result[0] if single else result


def tiled_denoise(
    fn: Denoiser,
    x: torch.Tensor,
    config: PanoramaConfig,
    step: int = 0,
    num_steps: int = 1,
    offset: int = 0,
) -> torch.Tensor | list[torch.Tensor]:
    """One model evaluation of a panorama step: plan the views of step ``step`` of ``num_steps`` and aggregate."""
    height, width = x.shape[-2:]
    full = include_full_canvas(step, num_steps, config.full_canvas_fraction)
    views = plan_views(height, width, config, offset if config.random_offset else 0, include_full=full)
    return tiled_apply(fn, x, views, config)


def area_runs(area: Sequence[int], view: View, canvas_width: int) -> list[tuple[int, int, int, int]]:
    """A canvas area (h, w, y, x) (latent px, as ComfyUI's area conditioning) seen from a tile: the (h, w, y, x)
    rectangles in tile coordinates (none if disjoint; two if a wrapped tile sees both ends of the area with a gap
    between them; pieces that meet across the seam are one rectangle, so no false area edge appears there)."""
    ah, aw, ay, ax = (int(v) for v in area)
    y0, y1 = max(ay, view.top), min(ay + ah, view.top + view.height)
    if y1 <= y0:
        return []
    out = []
    for t0, c0, n in _column_runs(view.left, view.width, canvas_width):
        x0, x1 = max(ax, c0), min(ax + aw, c0 + n)
        if x1 > x0:
            piece = (y1 - y0, x1 - x0, y0 - view.top, t0 + x0 - c0)
            if out and out[-1][3] + out[-1][1] == piece[3]:  # continues the previous piece across the seam
                piece = (piece[0], out[-1][1] + piece[1], piece[2], out[-1][3])
                out.pop()
            out.append(piece)
    return out


def circular_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last dim circularly by ``pad`` on both sides: [..., W] -> [..., W + 2·pad] (official decode padding)."""
    if pad < 0 or pad > x.shape[-1]:
        raise ValueError(
            f"circular padding must be between 0 and the width ({x.shape[-1]}), got {pad}: a canvas cannot wrap "
            "more than once."
        )
    if pad == 0:
        return x
    return torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)


def crop_pad(x: torch.Tensor, pad: int, dim: int = -1) -> torch.Tensor:
    """Remove ``pad`` from both ends of ``dim`` (undo ``circular_pad`` after decode/encode, in that space's units)."""
    if pad == 0:
        return x
    return x.narrow(dim, pad, x.shape[dim] - 2 * pad)
