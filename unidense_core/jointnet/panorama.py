"""JointNet RGB-D panoramas on diffusers modules (Zhang et al., ICLR 2024, §4.2; official ``jointnetpano_pipeline.py``).

The official loop: N(0, I) on the 8-channel canvas (512×2048 px), DDIM 50 steps with SD2.1-base's schedule, CFG 7.5
per tile, square tiles (window = latent height) every 32 latent px with horizontal wrap, one horizontal offset for
all tiles per step, the whole canvas as an extra tile of weight 5 for steps i ≤ int(0.4·N), linear edge weights over
8 latent px; every view batch takes its own DDIM step and the stepped tiles are averaged (Σ w·z / Σ w). Decoding
pads the canvas circularly by 8 latent px. The tiling itself is ``tiling.panorama``.

The official offsets come from numpy's global RNG (``numpy.random.randint(view_stride)`` once per step), not from the
torch generator; here they are an explicit list (one per step), or drawn from the generator, or reproduced from a
numpy seed with :func:`numpy_offsets`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tiling.panorama import (
    PanoramaConfig,
    check_canvas,
    draw_offsets,
    include_full_canvas,
    plan_views,
    preset,
    tiled_apply,
)
from .model import JointNetRGBD, check_joint_latent
from .pipeline import JointNetOutput, JointNetPipeline, StepCallback, _expand, guided_eps

PANORAMA_HEIGHT, PANORAMA_WIDTH = 512, 2048  # official __main__ defaults (--H, --W)
DECODE_PADDING = 8  # latent px of circular padding when decoding a 360° canvas (official decode_latents)


def official_config() -> PanoramaConfig:
    """The official panorama settings (``jointnetpano_pipeline.py`` ``__main__``)."""
    return preset("jointnet_pano")


def numpy_offsets(num_steps: int, stride: int, seed: int) -> list[int]:
    """The offsets of an official run after ``numpy.random.seed(seed)``: ``numpy.random.randint(stride)`` per step."""
    import numpy as np

    rng = np.random.RandomState(seed)  # the legacy global RNG's generator: same stream as numpy.random.seed
    return [int(rng.randint(stride)) for _ in range(num_steps)]


def check_offsets(offsets: Sequence[int], num_steps: int, config: PanoramaConfig) -> list[int]:
    """One integer offset in [0, stride) per step; non-zero offsets need ``random_offset`` (a circular canvas)."""
    offsets = list(offsets)
    if len(offsets) != num_steps:
        raise ValueError(f"Give one offset per step: {num_steps} steps but {len(offsets)} offsets.")
    bad = [o for o in offsets if isinstance(o, bool) or int(o) != o or not 0 <= o < config.stride]
    if bad:
        raise ValueError(f"Offsets must be integers in [0, {config.stride}) (the stride); got {bad[:5]}.")
    if any(offsets) and not config.random_offset:
        raise ValueError("Non-zero offsets need random_offset=True in the panorama config (a circular canvas).")
    return [int(o) for o in offsets]


@torch.no_grad()
def ddim_panorama(
    model: JointNetRGBD,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance_scale: float,
    num_inference_steps: int,
    config: PanoramaConfig,
    offsets: Sequence[int],
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The official tiled DDIM loop on a joint latent canvas [B,8,H,W] started from ``latents`` = N(0, I)."""
    check_joint_latent(latents, model.latent_channels, "latents")
    b, (height, width) = latents.shape[0], latents.shape[-2:]
    check_canvas(height, width, config)
    offsets = check_offsets(offsets, num_inference_steps, config)
    cond, uncond = _expand(cond, b), _expand(uncond, b)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    z = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        full = include_full_canvas(i, num_inference_steps, config.full_canvas_fraction)
        views = plan_views(height, width, config, offsets[i], include_full=full)

        def step_tiles(tiles: torch.Tensor, group: list, t: torch.Tensor = t) -> torch.Tensor:
            # tiles [n·B,8,h,w], view-major: tile k of batch item j is row k·B + j, so prompts repeat n times.
            n = len(group)
            u = None if uncond is None else uncond.repeat(n, 1, 1)
            eps = guided_eps(model, scheduler.scale_model_input(tiles, t), t, cond.repeat(n, 1, 1), u, guidance_scale)
            return scheduler.step(eps, t, tiles).prev_sample  # each view batch takes its own DDIM step

        z = tiled_apply(step_tiles, z, views, config)  # Σ w·z_tile / Σ w
        if callback is not None:
            callback(i, t, z)
    return z


class JointNetPanoramaPipeline(JointNetPipeline):
    """:class:`JointNetPipeline` plus ``panorama`` (text → 360° RGB-D canvas); ``from_folders`` as the base."""

    @torch.no_grad()
    def panorama(
        self,
        prompt: str | list[str] | None = None,
        height: int = PANORAMA_HEIGHT,
        width: int = PANORAMA_WIDTH,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        config: PanoramaConfig | None = None,
        offsets: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> JointNetOutput:
        """Text → RGB-D panorama with the official defaults (512×2048, DDIM 50, CFG 7.5, ``jointnet_pano`` tiling).

        ``offsets``: one horizontal tile offset in [0, stride) per step (e.g. :func:`numpy_offsets` to reproduce an
        official run); when None and the config has ``random_offset``, they are drawn from ``generator`` after the
        starting noise. ``latents`` [B,8,H/8,W/8] replace the starting noise N(0, I).
        """
        config = config or official_config()
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}×{width}.")
        check_canvas(height // 8, width // 8, config)
        cond, uncond = self._prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance_scale)
        shape = (cond.shape[0], 2 * self.model.latent_channels, height // 8, width // 8)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} for {width}×{height} px.")
        if offsets is None:
            random = config.random_offset
            offsets = (
                draw_offsets(num_inference_steps, config.stride, generator) if random else [0] * num_inference_steps
            )
        z = ddim_panorama(
            self.model,
            self.make_scheduler(),
            latents.to(self.device, self.dtype),
            cond,
            uncond,
            guidance_scale,
            num_inference_steps,
            config,
            offsets,
            callback,
        )
        return self.decode(z, circular_padding=DECODE_PADDING if config.circular else 0)
