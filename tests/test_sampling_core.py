"""The official DDIM in σ-space (unidense_core.sampling.ddim) against diffusers' DDIMScheduler loop, the sampler the
official JointNet / DMP / SD pipelines run: timesteps, strength, the plain-noise start and the ᾱ_0 end."""

import math

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from unidense_core.dmp.sampler import dmp_sigmas
from unidense_core.jointnet.pipeline import SD21_BASE_SCHEDULER, strength_timesteps
from unidense_core.sampling.ddim import (
    is_full_strength_start,
    official_sigmas,
    official_timesteps,
    sample_official_ddim,
    sigmas_from_alphas,
)
from unidense_core.tiny import tiny_sd21_unet

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def scheduler(prediction_type="epsilon", dtype=torch.float32):
    """The official scheduler (SD2.1-base config); float64 ᾱ for exact checks of the algebra (diffusers computes its
    step coefficients in the dtype of its ᾱ table)."""
    sched = DDIMScheduler.from_config({**SD21_BASE_SCHEDULER, "prediction_type": prediction_type})
    sched.alphas_cumprod = sched.alphas_cumprod.to(dtype)
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(dtype)
    return sched


class ToyNet(nn.Module):
    """A non-linear ε/v network of (z, t, context): a 1×1 mix, tanh and a timestep- and context-dependent term."""

    def __init__(self, channels=4, seed=0, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(channels, channels, generator=g, dtype=dtype) * 0.5)
        self.c = nn.Parameter(torch.randn(channels, 3, generator=g, dtype=dtype))

    def forward(self, z, t, ctx):
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1, 1, 1)
        mixed = torch.einsum("oc,bchw->bohw", self.w, z)
        return torch.tanh(mixed) * (1 + t / 1000) + (ctx @ self.c.T)[..., None, None] * torch.cos(t / 300)


def denoiser(net, sigma_table, prediction_type, ctx):
    """k-diffusion's wrapper of a discrete VP model: σ -> its integer t, c_in = 1/√(1+σ²), D from ε or v."""
    log_table = sigma_table.log()

    def model(x, sigma):
        t = (sigma.log()[:, None] - log_table[None]).abs().argmin(dim=1)  # [B] exact: σ comes from the table
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        out = net(x / (1 + s**2).sqrt(), t, ctx)
        if prediction_type == "epsilon":
            return x - s * out
        return x / (1 + s**2) - out * s / (1 + s**2).sqrt()

    return model


def diffusers_loop(net, sched, steps, noise, ctx, init=None, strength=1.0):
    """The official loop: set_timesteps, (img2img: the last int(N·s) timesteps, add_noise), step() every timestep."""
    sched.set_timesteps(steps)
    timesteps = strength_timesteps(sched, steps, strength)
    z = noise * sched.init_noise_sigma if init is None else sched.add_noise(init, noise, timesteps[:1])
    for t in timesteps:
        z = sched.step(net(z, t, ctx), t, z).prev_sample
    return z


# ----------------------------------------------------------------------------------------------------------
# Schedule


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 50, 333, 501, 999])
def test_timesteps_are_diffusers_leading_with_offset(steps):
    sched = scheduler()
    sched.set_timesteps(steps)
    assert official_timesteps(steps) == sched.timesteps.tolist()


@pytest.mark.parametrize(("steps", "strength"), [(50, 0.6), (50, 0.58), (10, 0.3), (3, 0.5), (40, 0.99), (7, 1.0)])
def test_strength_keeps_the_last_steps_as_img2img(steps, strength):
    sched = scheduler()
    sched.set_timesteps(steps)
    assert official_timesteps(steps, strength) == strength_timesteps(sched, steps, strength).tolist()


def test_sigmas_end_at_alpha_zero_not_at_zero():
    sched = scheduler()
    table = sigmas_from_alphas(sched.alphas_cumprod.double())
    sig = official_sigmas(table, 50)
    assert len(sig) == 51 and sig[-1] == table[0] > 0
    assert torch.equal(sig[:-1], table[torch.tensor(official_timesteps(50))])
    assert math.isclose(float(sig[-1]), math.sqrt((1 - 0.99915) / 0.99915), rel_tol=1e-4)  # ᾱ_0 = 1 − β_0 (fp32)
    # DMP's own schedule (SD 1.4, same β) is the same rule
    torch.testing.assert_close(official_sigmas(table.float(), 5), dmp_sigmas(5), rtol=1e-6, atol=0)
    partial = official_sigmas(table, 50, 0.6)
    assert len(partial) == 31 and torch.equal(partial, sig[20:])


def test_full_strength_start_is_recognised():
    table = sigmas_from_alphas(scheduler().alphas_cumprod.double())
    assert is_full_strength_start(table, official_sigmas(table, 50))
    assert is_full_strength_start(table, official_sigmas(table, 3))
    assert not is_full_strength_start(table, official_sigmas(table, 50, 0.6))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: official_sigmas(t, 0), r"steps must be an integer from 1 to 999"),
        (lambda t: official_sigmas(t, 1000), r"from 1 to 999"),
        (lambda t: official_sigmas(t, 2.5), r"steps must be an integer"),
        (lambda t: official_sigmas(t, 10, 0.0), r"denoise \(strength\) must be in \(0, 1\]"),
        (lambda t: official_sigmas(t, 10, 1.5), r"must be in \(0, 1\]"),
        (lambda t: official_sigmas(t, 10, float("nan")), r"must be in \(0, 1\]"),
        (lambda t: official_sigmas(t, 10, 0.05), r"runs int\(10·0.05\) = 0 steps"),
        (lambda t: official_sigmas(t[:1], 1), r"sigma_table must be"),
    ],
)
def test_bad_schedule_inputs(call, match):
    table = sigmas_from_alphas(scheduler().alphas_cumprod.double())
    with pytest.raises(ValueError, match=match):
        call(table)


# ----------------------------------------------------------------------------------------------------------
# The loop equals diffusers' DDIMScheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("steps", "strength"), [(50, 1.0), (3, 1.0), (1, 1.0), (20, 0.6), (50, 0.3)])
def test_toy_equals_diffusers_ddim(prediction_type, steps, strength):
    """Float64 throughout: the σ-space loop is the DDIM algebra exactly."""
    sched = scheduler(prediction_type, F64)
    table = sigmas_from_alphas(sched.alphas_cumprod)
    g = torch.Generator().manual_seed(steps)
    noise, init = torch.randn(2, 4, 5, 6, generator=g, dtype=F64), torch.randn(2, 4, 5, 6, generator=g, dtype=F64)
    ctx = torch.randn(2, 3, generator=g, dtype=F64)
    net = ToyNet()
    with torch.no_grad():
        ref = diffusers_loop(net, sched, steps, noise, ctx, init if strength < 1 else None, strength)
    sigmas = official_sigmas(table, steps, strength)
    seen = []
    model = denoiser(net, table, prediction_type, ctx)
    if strength == 1.0:  # the sampler's x would be ComfyUI's noise·σ₀ (+ latent); the official start replaces it
        ours = sample_official_ddim(model, noise * sigmas[0], sigmas, noise=noise, callback=seen.append)
    else:
        ours = sample_official_ddim(model, init + sigmas[0] * noise, sigmas, callback=seen.append)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    assert [c["i"] for c in seen] == list(range(len(sigmas) - 1))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    # the two ends matter: a σ = 0 end or the σ₀-scaled start are measurably different
    stock_end = sample_official_ddim(model, init + sigmas[0] * noise, torch.cat([sigmas[:-1], sigmas[:1] * 0]))
    assert (stock_end - ref).abs().max() > 1e-4
    if strength == 1.0:
        assert (sample_official_ddim(model, noise * sigmas[0], sigmas) - ref).abs().max() > 1e-4


@pytest.mark.parametrize(("prediction_type", "steps", "strength"), [("epsilon", 10, 1.0), ("v_prediction", 8, 0.5)])
def test_tiny_unet_equals_diffusers_ddim(prediction_type, steps, strength):
    """Float32 as the pipelines run, a tiny SD2.1-layout UNet with classifier-free guidance 7.5 in the official batch
    order: equal up to fp32 rounding (diffusers forms its coefficients from fp32 ᾱ, this module from fp32 σ)."""
    unet = tiny_sd21_unet(seed=4)
    sched = scheduler(prediction_type)
    table = sigmas_from_alphas(sched.alphas_cumprod.double()).float()
    g = torch.Generator().manual_seed(1)
    noise, init = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)

    def guided(z, t, _ctx):  # official CFG 7.5 on the network output, [uncond, cond] in one batch
        t = torch.as_tensor(t).reshape(-1)[:1].expand(2)
        out_u, out_c = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return out_u + 7.5 * (out_c - out_u)

    with torch.no_grad():
        ref = diffusers_loop(guided, sched, steps, noise, None, init if strength < 1 else None, strength)
    sigmas = official_sigmas(table, steps, strength)
    model = denoiser(guided, table, prediction_type, None)
    if strength == 1.0:
        ours = sample_official_ddim(model, noise * sigmas[0], sigmas, noise=noise)
    else:
        ours = sample_official_ddim(model, init + sigmas[0] * noise, sigmas)
    scale = float(ref.abs().max())
    assert scale > 1.0  # not a trivially small latent
    assert float((ours - ref).abs().max()) <= 1e-5 * scale, ((ours - ref).abs().max(), scale)


def test_noise_shape_is_checked():
    with pytest.raises(ValueError, match="noise"):
        sample_official_ddim(lambda x, s: x, torch.zeros(1, 4, 2, 2), torch.tensor([1.0, 0.5]), noise=torch.zeros(4))
