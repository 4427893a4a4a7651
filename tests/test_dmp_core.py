"""DMP core: schedule, interpolation, the deterministic sampler (standard and oracle) against the official update
equations, the σ-space sampler, read-outs and the processing resolution."""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from unidense_core.dense import readout
from unidense_core.dmp import sampler as dmp
from unidense_core.dmp.lora import apply_lora_peft
from unidense_core.io.resolution import processing_size, resize_for_processing, resize_image
from unidense_core.tiny import random_dmp_lora, tiny_sd_unet

# CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json, with DMP's v-prediction.
SD14_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
)


def official_ddim():
    return DDIMScheduler(**SD14_SCHEDULER)  # timestep_spacing "leading" is the default, as in diffusers 0.20


@pytest.fixture(scope="module")
def models():
    """A tiny SD 1.x UNet with a random non-zero LoRA: once with the official LoRA math as forward hooks
    (out = W·h + up(down(h)), LoRAAttnProcessor semantics), once through our peft path."""
    torch.manual_seed(0)
    base = tiny_sd_unet()
    lora = random_dmp_lora(base, scale=0.3)
    reference = copy.deepcopy(base)
    for name, mod in reference.named_modules():
        if name in lora.modules:
            m = lora.modules[name]
            mod.register_forward_hook(lambda mod, inp, out, m=m: out + F.linear(F.linear(inp[0], m.down), m.up))
    ours = apply_lora_peft(copy.deepcopy(base), lora)
    g = torch.Generator().manual_seed(1)
    return dict(
        base=base,
        reference=reference,
        ours=ours,
        z_x=torch.randn(2, 4, 8, 8, generator=g),
        cond=torch.randn(1, 5, 32, generator=g),
        uncond=torch.randn(1, 5, 32, generator=g),
    )


def official_loop(unet, z_x, cond, steps, oracle=False, uncond=None, guidance=2.0):
    """The official ``Pipeline.__call__`` target loop, with diffusers' DDIMScheduler.step for the standard variant
    and ddim.py's oracle step (pred_epsilon := src_latents) written out from methods.md §3.2."""
    sched = official_ddim()
    sched.set_timesteps(steps)
    b = z_x.shape[0]
    latents = z_x
    with torch.no_grad():
        for t in sched.timesteps:
            if uncond is None:
                v = unet(latents, t, encoder_hidden_states=cond.expand(b, -1, -1)).sample
            else:
                emb = torch.cat([cond.expand(b, -1, -1), uncond.expand(b, -1, -1)])  # official order [cond, uncond]
                v_c, v_u = unet(latents.repeat(2, 1, 1, 1), t, encoder_hidden_states=emb).sample.chunk(2)
                v = v_u + guidance * (v_c - v_u)
            if not oracle:
                latents = sched.step(v, t, latents).prev_sample
                continue
            prev = t - 1000 // steps
            a = sched.alphas_cumprod[t]
            a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
            y_hat = a**0.5 * latents - (1 - a) ** 0.5 * v
            latents = a_prev**0.5 * y_hat + (1 - a_prev) ** 0.5 * z_x
    return latents


# ----------------------------------------------------------------------------------------------------------
# Schedule and formulation


@pytest.mark.parametrize("steps", range(1, 21))
def test_schedule_is_diffusers_ddim_leading(steps):
    sched = official_ddim()
    sched.set_timesteps(steps)
    ours = dmp.dmp_schedule(steps)
    assert list(ours.timesteps) == sched.timesteps.tolist()
    ac = sched.alphas_cumprod
    assert ours.alphas == tuple(float(ac[t]) for t in sched.timesteps)
    for t, a_next in zip(sched.timesteps.tolist(), ours.alphas_next, strict=True):
        prev = t - 1000 // steps
        assert a_next == float(ac[prev] if prev >= 0 else sched.final_alpha_cumprod)


def test_official_five_steps():
    s = dmp.dmp_schedule(5)
    assert s.timesteps == (801, 601, 401, 201, 1)
    assert s.alphas == pytest.approx([0.03655, 0.15982, 0.42288, 0.75214, 0.99830], abs=1e-5)
    assert s.alphas_next[-1] == pytest.approx(0.99915, abs=1e-5)  # final ᾱ = ᾱ_0, not 1
    assert dmp.dmp_sigmas(5).tolist() == pytest.approx([5.1344, 2.2929, 1.1682, 0.5741, 0.0413, 0.0292], abs=1e-4)
    assert dmp.dmp_schedule(1).timesteps == (1,) and dmp.dmp_schedule(2).timesteps == (501, 1)


def test_interpolation_and_velocity_match_the_training_code():
    """Official train_batch: add_noise(trg, src, t) and get_velocity(trg, src, t) of the SD 1.4 DDPMScheduler."""
    ddpm = DDPMScheduler(**{k: v for k, v in SD14_SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    g = torch.Generator().manual_seed(2)
    z_y, z_x = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 401, 999])
    a = dmp.alphas_cumprod()[t]
    torch.testing.assert_close(dmp.interpolate(z_y, z_x, a), ddpm.add_noise(z_y, z_x, t))
    torch.testing.assert_close(dmp.velocity_target(z_y, z_x, a), ddpm.get_velocity(z_y, z_x, t))
    # the exact v recovers both latents in one DDIM step: ŷ = z_y, and x̂ = z_x
    z_t = dmp.interpolate(z_y, z_x, float(a[1]))
    z_next, y_hat = dmp.ddim_step(z_t, dmp.velocity_target(z_y, z_x, float(a[1])), float(a[1]), 0.9)
    torch.testing.assert_close(y_hat, z_y, atol=1e-5, rtol=0)
    torch.testing.assert_close(z_next, dmp.interpolate(z_y, z_x, 0.9), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Sampler


@pytest.mark.parametrize("variant", ["standard", "oracle"])
@pytest.mark.parametrize("steps", [5, 3])
def test_sampler_matches_official_update_equations(models, variant, steps):
    ref = official_loop(models["reference"], models["z_x"], models["cond"], steps, oracle=variant == "oracle")
    fn = dmp.unet_velocity_fn(models["ours"], models["cond"])
    ours = dmp.sample_dmp(fn, models["z_x"], steps, variant)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    if steps == 5:
        no_lora = official_loop(models["base"], models["z_x"], models["cond"], steps, oracle=variant == "oracle")
        assert (no_lora - ref).abs().max() > 1e-2  # the LoRA is far above the tolerance


def test_cfg_matches_official(models):
    ref = official_loop(models["reference"], models["z_x"], models["cond"], 5, uncond=models["uncond"], guidance=2.0)
    fn = dmp.unet_velocity_fn(models["ours"], models["cond"], models["uncond"], dmp.OFFICIAL_GUIDANCE)
    torch.testing.assert_close(dmp.sample_dmp(fn, models["z_x"], 5), ref, atol=2e-5, rtol=1e-5)


def test_exactly_steps_unet_evaluations(models):
    for steps in range(1, 21):
        seen = []
        dmp.sample_dmp(lambda z, t, seen=seen: seen.append(t) or z, models["z_x"], steps)
        assert seen == list(dmp.dmp_schedule(steps).timesteps)
    for uncond in (None, models["uncond"]):  # the UNet itself: one (batched) call per step, with or without CFG
        calls = []
        hook = models["ours"].register_forward_pre_hook(lambda mod, args: calls.append((int(args[1]), len(args[0]))))
        try:
            dmp.sample_dmp(dmp.unet_velocity_fn(models["ours"], models["cond"], uncond, 2.0), models["z_x"], 5)
        finally:
            hook.remove()
        assert calls == [(t, 2 if uncond is None else 4) for t in (801, 601, 401, 201, 1)]


def test_deterministic_and_batched(models):
    fn = dmp.unet_velocity_fn(models["ours"], models["cond"])
    a = dmp.sample_dmp(fn, models["z_x"], 5)
    assert torch.equal(a, dmp.sample_dmp(fn, models["z_x"], 5))
    single = dmp.sample_dmp(fn, models["z_x"][1:], 5)
    torch.testing.assert_close(a[1:], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["standard", "oracle"])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_sigma_space_sampler_equals_vp_loop(variant, steps):
    """methods.md §3.6: x_init = z_x/√ᾱ_t0, the DMP sigmas, Euler ≡ DDIM, final × √ᾱ_0 — checked numerically."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 4, generator=g) * 0.3
    z_x = torch.randn(2, 4, 8, 8, generator=g)
    ac = dmp.alphas_cumprod()
    table = ((1 - ac) / ac).sqrt().log()

    def velocity(z, t):  # a deterministic stand-in for a v-prediction network
        return torch.einsum("oc,bchw->bohw", w, z) * (1 + t / 1000) + 0.1 * torch.sin(z)

    def denoiser(x, sigma):  # what ComfyUI's V_PREDICTION model returns: ŷ from x = z/√ᾱ
        t = int((table - sigma[0].log()).abs().argmin())
        a = 1 / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        z = x * a.sqrt()
        return a.sqrt() * z - (1 - a).sqrt() * velocity(z, t)

    vp = dmp.sample_dmp(velocity, z_x, steps, variant)
    seen = []
    ks = dmp.sample_interp(
        denoiser, z_x, dmp.dmp_sigmas(steps), callback=lambda d: seen.append(d["i"]), oracle=variant == "oracle"
    )
    torch.testing.assert_close(ks, vp, atol=2e-6, rtol=1e-5)
    assert seen == list(range(steps))


def test_bad_inputs():
    for steps in (0, 21, 2.5, True):
        with pytest.raises(ValueError, match="steps must be"):
            dmp.dmp_schedule(steps)
    with pytest.raises(ValueError, match="variant"):
        dmp.sample_dmp(lambda z, t: z, torch.zeros(1, 4, 2, 2), 5, "ddpm")
    with pytest.raises(ValueError, match="target_scale"):
        readout.dmp_depth(torch.rand(1, 3, 4, 4), -1.0)
    with pytest.raises(ValueError, match="3-channel"):
        readout.dmp_normals(torch.rand(1, 1, 4, 4))


# ----------------------------------------------------------------------------------------------------------
# Read-outs


def test_depth_readout_is_the_official_formula():
    g = torch.Generator().manual_seed(4)
    decoded = torch.randn(2, 3, 6, 5, generator=g) * 1.2  # raw VAE output, partly outside [-1, 1]
    official = (decoded.mean(dim=1) / 2 + 0.5).clamp(min=0)
    torch.testing.assert_close(readout.dmp_depth(decoded / 2 + 0.5, dmp.BEDROOM_DEPTH_SCALE), official * 8)
    m = official.amin(dim=(1, 2), keepdim=True)
    mx = official.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(readout.dmp_depth(decoded / 2 + 0.5), (official - m) / (mx - m))
    hwc = (decoded / 2 + 0.5).movedim(1, -1)
    torch.testing.assert_close(readout.dmp_depth(hwc, 8.0, channel_dim=-1), official * 8)


def test_normals_readout():
    image = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    n = readout.dmp_normals(image)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(2, 5, 5))
    torch.testing.assert_close(n, F.normalize(image * 2 - 1, dim=1))
    vis = readout.normals_to_image(n)
    assert vis.min() >= 0 and vis.max() <= 1
    torch.testing.assert_close(readout.normals_to_image(n, flip_y=True)[:, 1], 1 - vis[:, 1])
    torch.testing.assert_close(readout.normals_to_image(n, flip_y=True)[:, ::2], vis[:, ::2])


# ----------------------------------------------------------------------------------------------------------
# Processing resolution (resolution.py, shared with the other estimators)


@pytest.mark.parametrize(
    "h, w, res, side, expected",
    [
        (480, 640, 768, "longer", (576, 768)),  # Marigold: longer side = processing_resolution
        (480, 640, 512, "shorter", (512, 680)),  # DMP official: shorter side = 512 (682.7 -> 680)
        (1080, 1920, 512, "longer", (288, 512)),
        (333, 517, 0, "longer", (336, 520)),  # 0 = native, rounded to the VAE factor
        (512, 512, 512, "shorter", (512, 512)),
        (4, 3000, 512, "longer", (8, 512)),  # never below one multiple
    ],
)
def test_processing_size(h, w, res, side, expected):
    out = processing_size(h, w, res, 8, side)
    assert out == expected and out[0] % 8 == 0 and out[1] % 8 == 0


def test_processing_size_checks():
    for res in (-8, 500):
        with pytest.raises(ValueError, match="multiple of 8"):
            processing_size(480, 640, res)
    with pytest.raises(ValueError, match="side"):
        processing_size(480, 640, 512, side="width")


def test_resize_round_trip_keeps_the_input_size():
    image = torch.rand(1, 3, 30, 50, generator=torch.Generator().manual_seed(6))
    small = resize_for_processing(image, 16, 8, "shorter")
    assert small.shape == (1, 3, 16, 24) and small.min() >= 0 and small.max() <= 1
    assert resize_image(small, (30, 50)).shape == (1, 3, 30, 50)
    assert resize_image(image, (30, 50)) is image
    flat = torch.full((1, 3, 30, 50), 0.25)
    torch.testing.assert_close(resize_image(resize_for_processing(flat, 16), (30, 50)), flat)
