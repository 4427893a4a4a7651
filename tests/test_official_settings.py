"""The README's recipe for JointNet's official sampler: stock `euler` + `ddim_uniform` is DDIM (eta = 0) at
t = 981, 961, ..., 1 (official: 50 steps); only the last step differs (ComfyUI ends at sigma = 0)."""

import torch


def test_euler_with_ddim_uniform_is_the_official_ddim(comfy):
    import comfy.k_diffusion.sampling as kds
    import comfy.model_sampling
    import comfy.samplers

    class EpsDiscrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    ms = EpsDiscrete()  # SD 1.x/2.x-base schedule: scaled_linear 0.00085..0.012, 1000 steps
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50)
    timesteps = [int(round(float(ms.timestep(s)))) for s in sigmas[:-1]]
    assert timesteps == list(range(981, 0, -20)) and float(sigmas[-1]) == 0.0

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 4, generator=g) * 0.3, torch.randn(1, 4, 1, 1, generator=g)

    def eps_fn(x_vp):  # any fixed ε-prediction of the VP latent
        return torch.einsum("ij,bjhw->bihw", weight, x_vp) + bias

    x_t = torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=g)
    weight, bias = weight.double(), bias.double()
    # Official DDIM (eta = 0) from t = 981 to t = 1 (the 49 steps before the last one).
    abar = 1 / (1 + ms.sigmas.double() ** 2)  # ᾱ_t
    x = x_t
    for t, t_next in zip(timesteps[:-1], timesteps[1:], strict=True):
        eps = eps_fn(x)
        x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        x = abar[t_next].sqrt() * x0 + (1 - abar[t_next]).sqrt() * eps
    # ComfyUI's Euler in sigma space on the same sigmas; its latent is x_vp * sqrt(1 + sigma^2).
    s = sigmas[:-1].double()

    def denoiser(x_sigma, sigma, **kw):
        return x_sigma - sigma * eps_fn(x_sigma / (1 + sigma**2).sqrt())

    out = kds.sample_euler(denoiser, x_t * (1 + s[0] ** 2).sqrt(), s, disable=True)
    torch.testing.assert_close(out / (1 + s[-1] ** 2).sqrt(), x, rtol=1e-9, atol=1e-9)
