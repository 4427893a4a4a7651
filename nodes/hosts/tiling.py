"""TiledPanorama inside ComfyUI: a CALC_COND_BATCH wrapper that tiles the canvas and crops every conditioning to
each tile before ComfyUI computes it.

Why this level: ``set_model_unet_function_wrapper`` runs after ``_calc_cond_batch`` has already computed the
ControlNet residuals for the *full* latent (and cut area/mask conds to it), so tiling there either applies the
whole hint to every tile (the known failure of existing tiling packs) or breaks. One level up, the wrapper receives
the processed conds and calls ComfyUI's own ``_calc_cond_batch`` once per batch of tiles with:

* ControlNet / T2I-adapter / Control-LoRA chains: shallow copies whose ``cond_hint_original`` (and spatial
  ``extra_concat_orig``) is the hint resized once to the canvas' pixel size, then cut to the tile (wrapping like
  the latent); the copy keeps the original's sampling state (timestep range, model sampling) and computes its own
  residuals at tile size. The original objects are never modified.
* ``mask`` conds: the [B,H,W] latent mask cut to the tile.
* ``area`` conds: the area intersected with the tile, in tile coordinates (two pieces if the tile wraps across it;
  dropped where disjoint). Tiles are then evaluated one at a time.
* spatial model conds (``CONDNoiseShape``, e.g. inpainting ``c_concat`` or image latents): cut to the tile.

Tiles of one model call are stacked view-major ([tile0 b0..bB-1, tile1 b0..]), and every per-tile tensor is built
in that order, so ComfyUI's own batch broadcasting (``repeat_to_batch_size``, ``broadcast_image_to``) lines up.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import comfy.conds
import comfy.utils
import torch

from ...unidense_core.io.checks import check_finite
from ...unidense_core.tiling.panorama import (
    PanoramaConfig,
    View,
    area_runs,
    check_canvas,
    draw_offsets,
    gather,
    include_full_canvas,
    plan_views,
    tiled_apply,
)

WRAPPER_KEY = "unidense_panorama"
ASPECT_TOLERANCE = 0.01


class PanoramaTiler:
    """State of one TiledPanorama MODEL: its settings and the seed of its per-step offsets."""

    def __init__(self, config: PanoramaConfig, seed: int = 0, preset: str | None = None):
        self.config = config
        self.seed = seed
        self.preset = preset  # a named preset fixes window and stride: errors then point at the canvas size
        self._offsets: dict[int, list[int]] = {}
        self._warned = False

    # -- schedule ------------------------------------------------------------------------------------------------
    def offsets(self, num_steps: int) -> list[int]:
        """The offsets of a run of ``num_steps`` steps: drawn once from a generator seeded with ``seed``."""
        if num_steps not in self._offsets:
            gen = torch.Generator().manual_seed(self.seed)
            self._offsets[num_steps] = draw_offsets(num_steps, self.config.stride, gen)
        return self._offsets[num_steps]

    @staticmethod
    def step_of(timestep: torch.Tensor, model_options: dict) -> tuple[int, int]:
        """(step index, number of steps) from the sampler's sigma schedule; (0, 1) outside a sampler run.

        A sigma between two schedule entries (second evaluations of Heun, DPM++ 2S, ...) counts as the step it lies in.
        """
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None or sigmas.numel() < 2:
            return 0, 1
        sig = sigmas.flatten().float().cpu()
        num_steps = sig.numel() - 1
        sigma = float(timestep.flatten()[0])
        step = int((sig[:num_steps] >= sigma * (1 - 1e-4)).sum()) - 1
        return min(max(step, 0), num_steps - 1), num_steps

    def views_for(self, height: int, width: int, step: int, num_steps: int) -> list[View]:
        cfg = self.config
        offset = self.offsets(num_steps)[step] if cfg.random_offset else 0
        full = include_full_canvas(step, num_steps, cfg.full_canvas_fraction)
        return plan_views(height, width, cfg, offset, include_full=full)

    # -- wrappers ------------------------------------------------------------------------------------------------
    def calc_cond_batch(self, executor, model, conds, x_in: torch.Tensor, timestep: torch.Tensor, model_options):
        """WrappersMP.CALC_COND_BATCH: evaluate the canvas tile by tile and return the aggregated predictions."""
        if x_in.ndim != 4:
            raise ValueError(
                f"UniDense TiledPanorama works on image latents [B,C,H,W]; this latent is {tuple(x_in.shape)}."
            )
        batch, (height, width) = x_in.shape[0], x_in.shape[-2:]
        step, num_steps = self.step_of(timestep, model_options)
        if step == 0:
            check_finite(x_in, "The latent being sampled (with TiledPanorama)", "BChw")
        views = self.views_for(height, width, step, num_steps)
        has_area = any("area" in c for cl in conds if cl is not None for c in cl)
        if not self._warned and any("gligen" in c for cl in conds if cl is not None for c in cl):
            logging.warning("UniDense TiledPanorama: GLIGEN boxes are not cropped per tile; they apply to each tile.")
            self._warned = True
        config = replace(self.config, view_batch_size=1) if has_area else self.config
        cropper = CondCropper(height, width, batch)

        def denoise(tiles: torch.Tensor, group: list[View]) -> list[torch.Tensor]:
            t = timestep.repeat(len(group)) if len(group) > 1 else timestep  # [n·B], view-major like tiles
            return executor(model, cropper.crop_conds(conds, group), tiles, t, model_options)

        return tiled_apply(denoise, x_in, views, config)

    def prepare_sampling(self, executor, model, noise_shape, *args, **kwargs):
        """WrappersMP.PREPARE_SAMPLING: validate the canvas before sampling starts, and estimate memory for the
        largest model call (a batch of tiles, or the whole canvas while it is a tile) instead of the full latent."""
        shape = list(noise_shape)
        if len(shape) == 4:
            height, width = shape[-2:]
            window = check_canvas(height, width, self.config, preset=self.preset)
            n_tiles = len(plan_views(height, width, replace(self.config, random_offset=False)))
            tiles = [shape[0] * min(self.config.view_batch_size, n_tiles), shape[1], window, window]
            if self.config.full_canvas_fraction == 0 or tiles[0] * window * window > shape[0] * height * width:
                shape = tiles
        return executor(model, shape, *args, **kwargs)


class CondCropper:
    """Cuts ComfyUI's processed conds to a batch of tiles (see the module docstring)."""

    def __init__(self, height: int, width: int, batch: int):
        self.height, self.width, self.batch = height, width, batch
        self._canvas_cache: dict[tuple[int, int], torch.Tensor] = {}

    def per_view(self, full: torch.Tensor, views: list[View], scale: int = 1) -> torch.Tensor:
        """Stack the tiles' crops of a canvas-sized tensor view-major, each repeated to the latent batch as ComfyUI
        would; one view keeps the original batch (ComfyUI broadcasts it)."""
        if len(views) == 1:
            return gather(full, views[0], scale)
        return torch.cat([comfy.utils.repeat_to_batch_size(gather(full, v, scale), self.batch) for v in views])

    def crop_conds(self, conds: list[list[dict] | None], views: list[View]) -> list[list[dict] | None]:
        """All cond lists (positive, negative, ...) for one model call. A ControlNet shared by several conds gets one
        shared copy, so ComfyUI still batches cond and uncond together as it would untiled."""
        memo: dict[int, object] = {}
        out = []
        for cond_list in conds:
            if cond_list is None:
                out.append(None)
                continue
            out.append([piece for cond in cond_list for piece in self.crop_cond(cond, views, memo)])
        return out

    def crop_cond(self, cond: dict, views: list[View], memo: dict) -> list[dict]:
        c = cond.copy()
        if "mask" in cond:
            mask = cond["mask"]
            if tuple(mask.shape[-2:]) != (self.height, self.width):
                raise ValueError(f"A mask cond is {tuple(mask.shape[-2:])}, the latent {self.height}×{self.width}.")
            c["mask"] = self.per_view(mask[: self.batch] if len(views) > 1 else mask, views)
        model_conds = {}
        for key, value in cond.get("model_conds", {}).items():
            if isinstance(value, comfy.conds.CONDNoiseShape) and tuple(value.cond.shape[-2:]) == (
                self.height,
                self.width,
            ):
                value = value._copy_with(self.per_view(value.cond, views))
            model_conds[key] = value
        c["model_conds"] = model_conds
        if cond.get("control") is not None:
            c["control"] = self.crop_control(cond["control"], views, memo)
        if "area" not in cond:
            return [c]
        area = cond["area"]
        if len(area) != 4 or len(views) != 1:
            raise ValueError(f"UniDense TiledPanorama supports 2-D area conds (h, w, y, x); got {tuple(area)}.")
        pieces = []
        for run in area_runs(area, views[0], self.width):
            piece = c.copy()
            piece["area"] = run
            pieces.append(piece)
        return pieces

    # -- ControlNet ----------------------------------------------------------------------------------------------
    def canvas_image(self, control, image: torch.Tensor, ratio: int) -> torch.Tensor:
        """A hint [B,C,h,w] at the canvas' pixel size, resized as ControlNet.get_control would for the whole canvas;
        a hint of another aspect is an error (stock ControlNet would silently crop its centre)."""
        key = (id(image), ratio)
        if key in self._canvas_cache:
            return self._canvas_cache[key]
        target_h, target_w = self.height * ratio, self.width * ratio
        hint_h, hint_w = image.shape[-2:]
        if abs((hint_w / hint_h) / (target_w / target_h) - 1) > ASPECT_TOLERANCE:
            raise ValueError(
                f"The ControlNet hint is {hint_w}×{hint_h} px (aspect {hint_w / hint_h:.3f}) but the panorama canvas "
                f"is {target_w}×{target_h} px (aspect {target_w / target_h:.3f}). TiledPanorama cuts the hint into "
                f"the same tiles as the latent, so it must cover the whole canvas: resize or pad the hint image to "
                f"{target_w}×{target_h} px (e.g. with 'Upscale Image', crop disabled) before ControlNetApply."
            )
        if (hint_h, hint_w) != (target_h, target_w):
            image = comfy.utils.common_upscale(image, target_w, target_h, control.upscale_algorithm, "center")
        self._canvas_cache[key] = image
        return image

    def crop_control(self, control, views: list[View], memo: dict):
        """A shallow copy of a ControlNet chain with every hint cut to the tiles (shared objects stay shared)."""
        if control is None:
            return None
        if id(control) in memo:
            return memo[id(control)]
        c = copy.copy(control)
        c.previous_controlnet = self.crop_control(control.previous_controlnet, views, memo)
        vae = getattr(control, "vae", None)
        ratio = int(control.compression_ratio) * (vae.spacial_compression_encode() if vae is not None else 1)
        if control.cond_hint_original is not None:
            full = self.canvas_image(control, control.cond_hint_original, ratio)
            c.cond_hint_original = self.per_view(full, views, ratio)
        extra = []
        for t in getattr(control, "extra_concat_orig", []):
            if t.shape[-1] > 1 or t.shape[-2] > 1:  # a spatial input (e.g. inpaint ControlNet mask/image)
                t = self.per_view(self.canvas_image(control, t, ratio), views, ratio)
            extra.append(t)
        c.extra_concat_orig = extra
        c.cond_hint = None  # recomputed by the copy at tile size
        c.extra_concat = None
        if hasattr(c, "control_input"):  # T2I-adapter cache
            c.control_input = None
        memo[id(control)] = c
        return c
