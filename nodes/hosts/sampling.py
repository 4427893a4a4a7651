"""The official DDIM (``unidense_core.sampling.ddim``) inside ComfyUI's sampling: a ``KSAMPLER`` whose function reads
what it needs from ComfyUI's ``KSamplerX0Inpaint`` (the run's noise, the input latent, the inpainting mask), the
official SIGMAS of a MODEL, and the one-call run behind the KSampler-like node (``comfy.sample.sample_custom``).

How a run is made equal to the official pipelines (diffusers DDIM over the same network):
* timesteps: :func:`model_official_sigmas`, from the MODEL's own σ table, ending at σ(t=0), not 0;
* start: at full strength the sampler ignores ComfyUI's x = ε·σ₀ + latent and starts from ε·√(1+σ₀²) (VP z_T = ε),
  and its first model call gets ``denoise_mask=None``, so inpainted channels see the plain noise the official
  pipeline sees (``KSamplerX0Inpaint`` would blend them with latent + σ₀·ε); below full strength ComfyUI's start
  (latent + σ₀·ε) already is the official ``add_noise``;
* between steps: ``KSamplerX0Inpaint``'s blend of kept channels (latent + σ·ε, same ε) is the official RePaint blend;
* end: the VP latent z = x·√ᾱ_0, kept channels written clean (the official last step), since σ_final ≠ 0.
"""

from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.model_sampling as ms_types
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ...unidense_core.sampling.ddim import is_full_strength_start, official_sigmas, sample_official_ddim

NEEDS = "SD1.x/2.x, the JointNet RGB-D MODEL or their TiledPanorama clones"


def discrete_vp_sampling(model):
    """The MODEL's ``model_sampling`` if it is a discrete VP schedule in ε- or v-prediction, else a clear error."""
    ms = model.get_model_object("model_sampling")
    ok = (
        isinstance(ms, ms_types.ModelSamplingDiscrete)
        and not isinstance(ms, ms_types.ModelSamplingDiscreteEDM)
        and isinstance(ms, ms_types.EPS)  # V_PREDICTION is an EPS
        and not isinstance(ms, (ms_types.EDM, ms_types.X0))
        and type(ms).timestep is ms_types.ModelSamplingDiscrete.timestep  # σ table index = training timestep
        and getattr(ms, "sigmas", None) is not None
        and len(ms.sigmas) >= 2
    )
    if not ok:
        kinds = " + ".join(c.__name__ for c in type(ms).__mro__[1:3])
        raise ValueError(
            f"The official DDIM needs a MODEL with a discrete VP noise schedule in ε- or v-prediction ({NEEDS}); "
            f"this MODEL samples with {kinds}. Flow models (SD3, Flux), EDM/continuous schedules and distilled "
            "(LCM) schedules have no DDIM timesteps: use a stock KSampler for them."
        )
    return ms


def model_official_sigmas(model, steps: int, denoise: float) -> torch.Tensor:
    """The official DDIM sigmas of ``steps`` at strength ``denoise`` from the MODEL's own σ table: [k+1], float32."""
    table = discrete_vp_sampling(model).sigmas.detach().float().cpu()  # [T]
    return official_sigmas(table, steps, denoise)


def _need(obj, name: str):
    """An attribute of ComfyUI's KSamplerX0Inpaint (present in 0.3.x and newer); a clear error if a version lacks it."""
    if not hasattr(obj, name):
        raise RuntimeError(
            f"The official DDIM reads '{name}' from ComfyUI's sampler model (comfy.samplers.KSamplerX0Inpaint), and "
            f"this ComfyUI's {type(obj).__name__} has none. Use the stock KSampler (euler + ddim_uniform, see the "
            "README for its small difference) and report your ComfyUI version to UniDense."
        )
    return getattr(obj, name)


def _check_schedule(ms, sigmas: torch.Tensor, noise: torch.Tensor | None, full_strength: bool) -> None:
    last, smallest = float(sigmas[-1]), float(ms.sigma_min)
    if last != 0.0 and not math.isclose(last, smallest, rel_tol=1e-5):
        raise ValueError(
            f"The official DDIM runs a schedule to its end: the last sigma must be the model's σ(t=0) = "
            f"{smallest:.4f} ('UniDense Official DDIM Sigmas') or 0, got {last:.4f}. Split schedules are not supported."
        )
    if not full_strength:
        return
    if noise is None or torch.count_nonzero(noise) == 0:
        raise ValueError(
            "full_strength starts from the sampler's noise, but the noise is all zeros: give SamplerCustomAdvanced "
            "'RandomNoise', not 'DisableNoise'."
        )
    first = float(sigmas[0])
    if not (is_full_strength_start(ms.sigmas.float().cpu(), sigmas.cpu()) or first >= float(ms.sigma_max) * 0.99999):
        raise ValueError(
            f"full_strength is on, but the sigmas start at σ = {first:.4f}, below the first step of a full "
            f"{len(sigmas) - 1}-step schedule: they come from denoise < 1. Turn full_strength off for edits "
            "(the start is then the latent noised to the first σ, as the official img2img), or use denoise 1.0."
        )


def _effective_mask(model_k, sigma: torch.Tensor, mask: torch.Tensor, model_options: dict) -> torch.Tensor:
    """The mask KSamplerX0Inpaint applies at ``sigma`` (after the MODEL's denoise_mask_function, e.g. per channel)."""
    fn = model_options.get("denoise_mask_function")
    if fn is None:
        return mask
    return fn(sigma, mask, extra_options={"model": _need(model_k, "inner_model"), "sigmas": model_k.sigmas})


@torch.no_grad()
def sample_official_ddim_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, full_strength=True):
    """:func:`sample_official_ddim` for ``KSAMPLER``; ``model`` is ComfyUI's ``KSamplerX0Inpaint`` (see module doc)."""
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) < 2:
        return x
    guider = _need(model, "inner_model")  # CFGGuider -> BaseModel, as KSAMPLER.sample reaches it
    ms = _need(guider, "inner_model").model_sampling
    noise = _need(model, "noise") if full_strength else None
    _check_schedule(ms, sigmas, noise, full_strength)
    mask = extra_args.get("denoise_mask")
    run = model
    if full_strength and mask is not None:
        calls = []

        def run(x_, sigma, denoise_mask=None, **kwargs):  # the first call sees the plain noise (official)
            calls.append(None)
            return model(x_, sigma, denoise_mask=denoise_mask if len(calls) > 1 else None, **kwargs)

    out = sample_official_ddim(run, x, sigmas, extra_args, callback, disable, noise=noise)  # VP latent at ᾱ_0
    if mask is not None:  # the official last step writes the known latent clean where it is kept
        s_in = x.new_ones([x.shape[0]])
        m = _effective_mask(model, sigmas[-2] * s_in, mask, extra_args.get("model_options", {}))
        out = out * m + _need(model, "latent_image") * (1.0 - m)
    return out


class OfficialDDIM(comfy.samplers.KSAMPLER):
    """The official DDIM as a SAMPLER. Its runs always end clean (at ᾱ_0, kept channels written back), which
    ``hosts.jointnet``'s exact write-back of kept channels reads from ``ends_clean``."""

    ends_clean = True


def official_ddim_sampler(full_strength: bool = True) -> OfficialDDIM:
    """A SAMPLER for SamplerCustomAdvanced / sample_custom."""
    return OfficialDDIM(sample_official_ddim_comfy, extra_options={"full_strength": bool(full_strength)})


def progress_callback(model, steps: int):
    """Progress bar with latent preview (comfy.utils.ProgressBar), and a cancellation point after every step."""
    preview = latent_preview.prepare_callback(model, steps)

    def callback(step, x0, x, total_steps):
        preview(step, x0, x, total_steps)
        mm.throw_exception_if_processing_interrupted()

    return callback


def sample_official(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, denoise: float):
    """KSampler's path (seeded noise per batch index, empty latents widened, noise_mask) with the official DDIM:
    ``comfy.sample.sample_custom`` with :func:`model_official_sigmas` and :func:`official_ddim_sampler`."""
    sigmas = model_official_sigmas(model, steps, denoise)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    mm.throw_exception_if_processing_interrupted()
    samples = comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        official_ddim_sampler(full_strength=denoise == 1.0),
        sigmas,
        positive,
        negative,
        latent_image,
        noise_mask=latent.get("noise_mask"),
        callback=progress_callback(model, len(sigmas) - 1),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    out = latent.copy()
    out["samples"] = samples
    return out
