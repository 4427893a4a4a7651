"""DMP (Lee et al., "Exploiting Diffusion Prior for Generalizable Dense Prediction", CVPR 2024).

The interpolation formulation, the deterministic sampler of the official code (diffusers DDIM, η = 0, leading
spacing, steps_offset 1, started from the image latent without noise), its "oracle" variant, and the same sampler
in k-diffusion σ-space for ComfyUI's SAMPLER socket (the read-outs per task are in ``dense.readout``).

Notation (methods.md §3.2): z_x = image latent, z_y = target-map latent, ᾱ_t = SD1.4's cumulative alphas.
    z_t = √ᾱ_t·z_y + √(1−ᾱ_t)·z_x                    (the Gaussian noise is replaced by the image latent)
    v   = √ᾱ_t·z_x − √(1−ᾱ_t)·z_y                    (v-prediction target)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# SD 1.4 scheduler (CompVis/stable-diffusion-v1-4, scheduler/scheduler_config.json): scaled-linear betas.
SD14_NUM_TRAIN_TIMESTEPS = 1000
SD14_BETA_START = 0.00085
SD14_BETA_END = 0.012
STEPS_OFFSET = 1  # DDIMScheduler steps_offset of SD 1.4 ("leading" spacing)

DEFAULT_STEPS = 5  # README inference_step=5, config.yaml target_inference_steps=5, Gradio default 5
MIN_STEPS, MAX_STEPS = 1, 20  # the Gradio demo allows 2-20; 1 evaluates t = 1 only (close to the image latent)
VARIANTS = ("standard", "oracle")  # standard: diffusers DDIM (official default); oracle: x̂ := z_x (ddim.py)
OFFICIAL_GUIDANCE = 2.0  # target_guidance_scale for captioned checkpoints; "-notext" checkpoints use no CFG
BEDROOM_DEPTH_SCALE = 8.0  # --target_scale=8 of the paper's depth checkpoint (ZoeDepth metres / 8 -> [0, 1])

# (z [B,4,h,w], t) -> v̂ [B,4,h,w]; classifier-free guidance, if any, happens inside.
VelocityFn = Callable[[torch.Tensor, int], torch.Tensor]


def alphas_cumprod(
    num_train_timesteps: int = SD14_NUM_TRAIN_TIMESTEPS,
    beta_start: float = SD14_BETA_START,
    beta_end: float = SD14_BETA_END,
) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1, float32, computed exactly as diffusers' ``scaled_linear`` schedule."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(
            f"steps must be an integer from {MIN_STEPS} to {MAX_STEPS}, got {steps!r}. "
            f"The official default is {DEFAULT_STEPS} (t = 801, 601, 401, 201, 1)."
        )


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")


@dataclass(frozen=True)
class DMPSchedule:
    """The DDIM steps of one run: timesteps t_i, ᾱ at t_i, and ᾱ at the next step (the last one is ᾱ_0)."""

    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]
    alphas_next: tuple[float, ...]

    @property
    def sigmas(self) -> torch.Tensor:
        """k-diffusion σ_i = √((1−ᾱ)/ᾱ) at every timestep, then at the final ᾱ: [steps + 1], float32."""
        a = list(self.alphas) + [self.alphas_next[-1]]
        return torch.tensor([math.sqrt((1.0 - x) / x) for x in a], dtype=torch.float32)


def dmp_schedule(steps: int = DEFAULT_STEPS) -> DMPSchedule:
    """diffusers DDIMScheduler(SD 1.4 config).set_timesteps(steps): leading spacing, steps_offset 1, final ᾱ_0."""
    check_steps(steps)
    ac = alphas_cumprod()
    ratio = SD14_NUM_TRAIN_TIMESTEPS // steps
    timesteps = [i * ratio + STEPS_OFFSET for i in reversed(range(steps))]
    final = float(ac[0])  # set_alpha_to_one=False
    alphas = tuple(float(ac[t]) for t in timesteps)
    alphas_next = tuple(float(ac[t - ratio]) if t - ratio >= 0 else final for t in timesteps)
    return DMPSchedule(tuple(timesteps), alphas, alphas_next)


def dmp_sigmas(steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """σ-space schedule for SamplerCustomAdvanced: 5 steps -> [5.1344, 2.2929, 1.1682, 0.5741, 0.0413, 0.0292]."""
    return dmp_schedule(steps).sigmas


def _bcast(alpha: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(alpha, torch.Tensor) and alpha.ndim > 0:
        return alpha.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return float(alpha)


def interpolate(target_latent: torch.Tensor, image_latent: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Forward process: z_t = √ᾱ·z_y + √(1−ᾱ)·z_x (official ``add_noise(trg, src, t)``); ᾱ scalar or [B]."""
    a = _bcast(alpha, target_latent)
    if isinstance(a, float):
        return math.sqrt(a) * target_latent + math.sqrt(1.0 - a) * image_latent
    return a.sqrt() * target_latent + (1.0 - a).sqrt() * image_latent


def velocity_target(
    target_latent: torch.Tensor, image_latent: torch.Tensor, alpha: float | torch.Tensor
) -> torch.Tensor:
    """Training target: v = √ᾱ·z_x − √(1−ᾱ)·z_y (diffusers ``get_velocity(sample=z_y, noise=z_x)``)."""
    a = _bcast(alpha, target_latent)
    if isinstance(a, float):
        return math.sqrt(a) * image_latent - math.sqrt(1.0 - a) * target_latent
    return a.sqrt() * image_latent - (1.0 - a).sqrt() * target_latent


def ddim_step(
    z: torch.Tensor,
    v: torch.Tensor,
    alpha: float,
    alpha_next: float,
    image_latent: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM step (η = 0) on a v-prediction; returns (z_next, ŷ).

    ŷ = √ᾱ·z − √(1−ᾱ)·v̂ and x̂ = √ᾱ·v̂ + √(1−ᾱ)·z, then z' = √ᾱ'·ŷ + √(1−ᾱ')·x̂. With ``image_latent``
    (the "oracle" DDIM of the official ddim.py) the true input latent replaces x̂.
    """
    sa, sb = math.sqrt(alpha), math.sqrt(1.0 - alpha)
    y_hat = sa * z - sb * v  # predicted target latent ("pred_original_sample")
    x_hat = image_latent if image_latent is not None else sa * v + sb * z  # predicted input latent ("pred_epsilon")
    return math.sqrt(alpha_next) * y_hat + math.sqrt(1.0 - alpha_next) * x_hat, y_hat


@torch.no_grad()
def sample_dmp(
    velocity_fn: VelocityFn,
    image_latent: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    variant: str = "standard",
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DMP's deterministic sampler in VP space (official ``Pipeline.__call__`` loop): exactly ``steps`` model calls.

    ``image_latent`` is z_x = 0.18215·E(x) [B,4,h,w]; the run starts from it at t_0 with no noise and returns the
    prediction latent at ᾱ_0 (decode it with the VAE after dividing by 0.18215).
    """
    check_variant(variant)
    sched = dmp_schedule(steps)
    oracle = image_latent if variant == "oracle" else None
    z = image_latent  # no noise, init_noise_sigma = 1
    for i, (t, a, a_next) in enumerate(zip(sched.timesteps, sched.alphas, sched.alphas_next, strict=True)):
        v = velocity_fn(z, t)  # [B,4,h,w]
        z, y_hat = ddim_step(z, v, a, a_next, oracle)
        if callback is not None:
            callback({"i": i, "t": t, "x": z, "denoised": y_hat})
    return z


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance as the official code: v̂ = v_u + w·(v_c − v_u)."""
    return v_uncond + guidance * (v_cond - v_uncond)


def unet_velocity_fn(
    unet: nn.Module,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> VelocityFn:
    """A diffusers ``UNet2DConditionModel`` as a :data:`VelocityFn`.

    ``-notext`` checkpoints: ``prompt_embeds`` = the empty prompt, no guidance (one UNet pass per step). Captioned
    checkpoints: caption embeddings, ``negative_embeds`` = the empty prompt, ``guidance`` = 2 (official); cond and
    uncond run in one batch, in the official order [cond, uncond].
    """
    use_cfg = negative_embeds is not None and guidance != 1.0

    def fn(z: torch.Tensor, t: int) -> torch.Tensor:
        b = z.shape[0]
        cond = prompt_embeds.expand(b, -1, -1) if prompt_embeds.shape[0] == 1 else prompt_embeds
        if not use_cfg:
            return unet(z, t, encoder_hidden_states=cond).sample
        uncond = negative_embeds.expand(b, -1, -1) if negative_embeds.shape[0] == 1 else negative_embeds
        v_c, v_u = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample.chunk(2)
        return guided_velocity(v_c, v_u, guidance)

    return fn


@torch.no_grad()
def sample_interp(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    oracle: bool = False,
) -> torch.Tensor:
    """DMP's deterministic DDIM in k-diffusion σ-space (k-diffusion sampler contract; Euler ≡ DDIM with η = 0).

    ``x`` is the image latent z_x in VP space, which is what ComfyUI hands a sampler for SamplerCustomAdvanced with
    DisableNoise and the image LATENT (noise·σ_0 + latent = latent). It is lifted to x = z_x/√ᾱ_0 = z_x·√(1+σ_0²);
    ``model(x, σ)`` must return the v-prediction model's denoised ŷ. The result is brought back to VP space
    (× √ᾱ_last = 1/√(1+σ_last²)), i.e. the same latent as :func:`sample_dmp` with the sigmas of :func:`dmp_sigmas`.
    """
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) < 2:
        return x
    image_latent = x  # [B,4,h,w]
    s_in = x.new_ones([x.shape[0]])
    x = x * (1.0 + sigmas[0] ** 2).sqrt()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)  # ŷ
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x_hat = image_latent if oracle else (x - denoised) / sigmas[i]  # predicted input latent (DDIM "ε")
        x = denoised + sigmas[i + 1] * x_hat
    return x / (1.0 + sigmas[-1] ** 2).sqrt()
