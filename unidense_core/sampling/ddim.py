"""The official DDIM (η = 0) of the diffusers pipelines, in k-diffusion σ-space, for any discrete VP model.

JointNet's official pipelines (and DMP's, and diffusers' Stable Diffusion pipelines) sample with diffusers'
``DDIMScheduler`` in the SD configuration: scaled-linear β, ``timestep_spacing="leading"``, ``steps_offset=1``,
``set_alpha_to_one=False``. In k-diffusion variables (x = z/√ᾱ, σ = √((1−ᾱ)/ᾱ), the model returns the denoised D)
one DDIM step is Euler in σ:

    z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂    ⇔    x' = D + σ'·(x − D)/σ          (x̂₀ = D, ε̂ = (x − D)/σ)

A stock ComfyUI run on the same timesteps (``ddim_uniform``) still differs in its two ends, which is what this
module adds:

* start: a full-strength run starts from plain noise, VP z_T = ε, i.e. x = ε·√(1+σ₀²). ComfyUI starts from
  ε·σ₀ (+ latent) whenever σ₀ < σ_max (t = 981 < 999 for 50 steps); the official start is 0.29 % larger at 50
  steps and 5.7 % at 3 steps.
  A strength < 1 run starts from ``add_noise(init, ε, t₀)`` = init + σ₀·ε in σ-space, as ComfyUI does.
* end: the last step goes to ᾱ_final = ᾱ_{t=0} (σ_final = σ(t=0) = 0.0292 for SD), not to σ = 0, and the result is
  the VP latent z = x·√ᾱ_final (it keeps √(1−ᾱ₀) ≈ 2.9 % of the last noise estimate).

``tests/test_sampling_core.py`` checks the loop against diffusers' ``DDIMScheduler`` on a toy and a tiny UNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

STEPS_OFFSET = 1  # DDIMScheduler steps_offset of the SD 1.x / 2.x scheduler configs ("leading" spacing)


def sigmas_from_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion σ_t = √((1−ᾱ_t)/ᾱ_t) for every training timestep (ComfyUI's ``model_sampling.sigmas``)."""
    a = alphas_cumprod.double()
    return ((1.0 - a) / a).sqrt().to(alphas_cumprod.dtype)  # [T]


def check_steps(steps: int, num_train_timesteps: int = 1000, steps_offset: int = STEPS_OFFSET) -> None:
    """Steps must be an integer in [1, T − steps_offset] (more would index past the model's last timestep)."""
    top = num_train_timesteps - steps_offset
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= top:
        raise ValueError(
            f"steps must be an integer from 1 to {top} for a model with {num_train_timesteps} training timesteps, "
            f"got {steps!r}. The official JointNet setting is 50."
        )


def check_strength(strength: float, steps: int) -> int:
    """Strength (ComfyUI's denoise) in (0, 1] that leaves at least one step; returns int(steps·strength)."""
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0.0 < strength <= 1.0:
        raise ValueError(f"denoise (strength) must be in (0, 1], got {strength!r}. Use 1.0 to generate from noise.")
    kept = min(int(steps * strength), steps)  # diffusers img2img get_timesteps, float rounding included
    if kept < 1:
        raise ValueError(
            f"denoise {strength} with {steps} steps runs int({steps}·{strength}) = 0 steps. Raise denoise to at "
            f"least {1 / steps:.3g} or raise steps."
        )
    return kept


def official_timesteps(
    steps: int, strength: float = 1.0, num_train_timesteps: int = 1000, steps_offset: int = STEPS_OFFSET
) -> list[int]:
    """diffusers DDIM ``set_timesteps(steps)`` with leading spacing (t_i = i·(T//N) + offset, descending), then the
    last int(N·strength) of them (the img2img ``get_timesteps`` rule). 50 steps: 981, 961, …, 1."""
    check_steps(steps, num_train_timesteps, steps_offset)
    kept = check_strength(strength, steps)
    ratio = num_train_timesteps // steps
    timesteps = [i * ratio + steps_offset for i in reversed(range(steps))]
    return timesteps[steps - kept :]


def official_sigmas(
    sigma_table: torch.Tensor, steps: int, strength: float = 1.0, steps_offset: int = STEPS_OFFSET
) -> torch.Tensor:
    """σ at the official timesteps, then σ_final = σ(t=0) (``set_alpha_to_one=False``): [int(N·strength) + 1].

    ``sigma_table`` [T] is the model's own σ per training timestep (ComfyUI ``model_sampling.sigmas``, or
    :func:`sigmas_from_alphas`), so every σ maps back to its integer timestep exactly.
    """
    if sigma_table.ndim != 1 or len(sigma_table) < 2:
        raise ValueError(f"sigma_table must be the σ of every training timestep [T], got {tuple(sigma_table.shape)}.")
    timesteps = official_timesteps(steps, strength, len(sigma_table), steps_offset)
    index = torch.tensor([*timesteps, 0])  # the step after t = 1 ends at ᾱ_0 (diffusers: final_alpha_cumprod)
    return sigma_table.detach().cpu()[index].clone()  # [k+1]


def is_full_strength_start(sigma_table: torch.Tensor, sigmas: torch.Tensor, steps_offset: int = STEPS_OFFSET) -> bool:
    """Whether ``sigmas`` start at the first timestep of a full (strength 1) official run of their length."""
    steps = len(sigmas) - 1
    if not 1 <= steps <= len(sigma_table) - steps_offset:
        return False
    first = float(sigma_table[(steps - 1) * (len(sigma_table) // steps) + steps_offset])
    return math.isclose(float(sigmas[0]), first, rel_tol=1e-5)


@torch.no_grad()
def sample_official_ddim(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' DDIM (η = 0) in σ-space, k-diffusion sampler contract; returns the VP latent z = x_N·√ᾱ_final.

    ``model(x, σ)`` returns the denoised D (any ε- or v-prediction model wrapped as k-diffusion does). ``sigmas``
    are :func:`official_sigmas` (any decreasing schedule works; a last σ of 0 gives Euler's clean end). The start
    is ``x`` = init + σ₀·ε, the official ``add_noise`` start of a strength < 1 run; with ``noise`` = ε the run is a
    full-strength one and starts from plain noise, x = ε·√(1+σ₀²) (VP z_T = ε), ``x`` then giving only the shape.
    ``disable`` is accepted for the contract; progress is reported through ``callback`` once per step.
    """
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) < 2:
        return x
    if noise is not None:
        if noise.shape != x.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the latent's shape {tuple(x.shape)}.")
        x = noise.to(x) * (1.0 + sigmas[0] ** 2).sqrt()  # official full strength: z_T = ε
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)  # x̂₀
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised + sigmas[i + 1] * (x - denoised) / sigmas[i]  # z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂, divided by √ᾱ'
    return x / (1.0 + sigmas[-1] ** 2).sqrt()  # × √ᾱ_final: the official result is the VP latent at ᾱ_0
