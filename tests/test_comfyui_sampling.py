"""The official DDIM nodes in a real ComfyUI against the official loops (diffusers DDIMScheduler over the core
JointNetRGBD, the official per-tile panorama procedure), and the measured difference of the stock route.

Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import math

import pytest
import torch
from bad_inputs import Case, run_case
from diffusers import DDIMScheduler

from unidense_core.jointnet.inpaint import channel_mask, latent_mask, masked_condition, preset_masks
from unidense_core.jointnet.model import load_jointnet, save_jointnet
from unidense_core.jointnet.pipeline import SD21_BASE_SCHEDULER, ddim_generate, ddim_inpaint, strength_timesteps
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet, tiny_sd_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads

H = W = 8  # latent side
SCALE = 0.18215
TOL = 1e-4  # fp32, batch order of CFG and per-tile calls; a wrong start or end is > 1e-2 here
NODE_IDS = ("UniDense_OfficialDDIMSigmas", "UniDense_OfficialDDIMSampler", "UniDense_OfficialDDIMKSampler")


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    """The tiny official-format JointNet folders, loaded as the node loads them and as the core loads them."""
    root = tmp_path_factory.mktemp("jointnet_ddim")
    comfy.folder_paths.add_model_folder_path("jointnet", str(root), is_default=True)
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=3), root / "ddim_gen")
    save_jointnet(random_jointnet(TINY_SD21_UNET, True, seed=5), root / "ddim_inp")
    loader = comfy.node("UniDense_JointNetLoader")
    return dict(
        comfy=comfy,
        gen=loader.execute("ddim_gen", "fp32")[0],
        inp=loader.execute("ddim_inp", "fp32")[0],
        core_gen=load_jointnet(root / "ddim_gen"),
        core_inp=load_jointnet(root / "ddim_inp"),
    )


def ctx(seed, tokens=5):
    return torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed))


def cond(seed, tokens=5):
    return [[ctx(seed, tokens), {}]]


def official_scheduler():
    return DDIMScheduler.from_config(SD21_BASE_SCHEDULER)  # the official JointNet scheduler (SD2.1-base)


def ksampler_node(comfy, model, latent, steps, denoise=1.0, seed=7, cfg=7.5, pos=None, neg=None):
    node = comfy.node("UniDense_OfficialDDIMKSampler")
    pos = cond(0) if pos is None else pos
    neg = cond(1) if neg is None else neg
    (out,) = node.execute(model, seed, steps, cfg, pos, neg, latent, denoise).args
    return out["samples"]


def noise_of(comfy, shape, seed=7):
    """The noise KSampler and the official-DDIM KSampler draw for ``seed`` (comfy.sample.prepare_noise)."""
    return comfy.sample.prepare_noise(torch.zeros(shape), seed)


def stock(comfy, model, latent, steps, sampler="euler", seed=7, cfg=7.5, denoise=1.0):
    """The stock route: KSampler's comfy.sample.sample with euler + ddim_uniform."""
    z = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    return comfy.sample.sample(
        model,
        noise_of(comfy, z.shape, seed),
        steps,
        cfg,
        sampler,
        "ddim_uniform",
        cond(0),
        cond(1),
        z,
        denoise=denoise,
        noise_mask=latent.get("noise_mask"),
        disable_pbar=True,
        seed=seed,
    )


def assert_official(out, ref, tol=TOL):
    """``out`` (a ComfyUI LATENT's samples, VAE space) equals the official model-space latent ``ref``."""
    err = float((out * SCALE - ref).abs().max())
    assert err <= tol, f"max |ComfyUI - official| = {err:.3g} (model space; |official| max {ref.abs().max():.3g})"


def empty(channels=4):
    return {"samples": torch.zeros(1, channels, H, W)}


# ----------------------------------------------------------------------------------------------------------
# Registration and the schedule


def test_nodes_register_with_tooltips(comfy):
    for node_id in NODE_IDS:
        info = comfy.node(node_id).GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"] == "UniDense/Sampling" and info["description"]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), f"{node_id} has an output without a tooltip"


@pytest.mark.parametrize(("steps", "denoise"), [(50, 1.0), (3, 1.0), (50, 0.6), (10, 0.35)])
def test_sigmas_are_the_official_timesteps_of_the_model(env, steps, denoise):
    comfy, model = env["comfy"], env["gen"]
    (sig,) = comfy.node("UniDense_OfficialDDIMSigmas").execute(model, steps, denoise).args
    ms = model.get_model_object("model_sampling")
    sched = official_scheduler()
    sched.set_timesteps(steps)
    expected = strength_timesteps(sched, steps, denoise).tolist()
    assert ms.timestep(sig[:-1]).tolist() == expected  # each σ is the model's σ at the official timestep
    assert float(sig[-1]) == float(ms.sigmas[0]) and float(sig[-1]) > 0.029  # ends at ᾱ_0, not at σ = 0
    alphas = sched.alphas_cumprod[torch.tensor(expected)]
    torch.testing.assert_close(sig[:-1], ((1 - alphas) / alphas).sqrt(), rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------------------
# JointNet through the nodes == the official DDIM loop over the core model


@pytest.mark.parametrize("steps", [3, 10])
def test_generation_equals_official_loop(env, steps):
    comfy = env["comfy"]
    out = ksampler_node(comfy, env["gen"], empty(4), steps)  # EmptyLatentImage's 4 channels are widened
    noise = noise_of(comfy, (1, 8, H, W))
    ref = ddim_generate(env["core_gen"], official_scheduler(), noise, ctx(0), ctx(1), 7.5, steps)
    assert out.shape == (1, 8, H, W)
    assert_official(out, ref)


def test_sampler_custom_advanced_route_equals_the_one_node(env):
    """RandomNoise + CFGGuider + Official DDIM Sampler + Official DDIM Sigmas in the stock SamplerCustomAdvanced."""
    comfy = env["comfy"]
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    noise = m["RandomNoise"]().get_noise(7)[0]
    guider = m["CFGGuider"]().get_guider(env["gen"], cond(0), cond(1), 7.5)[0]
    (sampler,) = comfy.node("UniDense_OfficialDDIMSampler").execute(True).args
    (sigmas,) = comfy.node("UniDense_OfficialDDIMSigmas").execute(env["gen"], 4, 1.0).args
    out, _ = m["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, empty(8))
    assert torch.equal(out["samples"], ksampler_node(comfy, env["gen"], empty(8), 4))


def inpaint(env, model_key, preset, z, **kw):
    node = env["comfy"].node("UniDense_ChannelInpaintRGBD")
    return node.execute(env[model_key], cond(0), cond(1), preset, rgbd_latent={"samples": z}, **kw).args


def official_inpaint(env, model_key, z, m_rgb, m_depth, steps, strength):
    """The official inpaint loop (core ddim_inpaint, diffusers DDIMScheduler) with the node's noise and masks."""
    core = env["core_" + model_key]
    init = z * SCALE
    masked = masked_condition(m_rgb, init[:, :4], m_depth, init[:, 4:]) if core.has_masked_latent_input else None
    cmask = channel_mask(m_rgb, m_depth, 4)
    noise = noise_of(env["comfy"], z.shape)
    return ddim_inpaint(core, official_scheduler(), init, cmask, noise, ctx(0), ctx(1), 7.5, steps, strength, masked)


CUSTOM = torch.zeros(1, 8 * H, 8 * W)
CUSTOM[:, 16:40, 8:48] = 1  # a pixel-size region to regenerate in both modalities
INPAINT_CASES = {
    "rgb2j_inpaint_model": ("inp", "rgb2j", 1.0, {}),
    "j2rgb_inpaint_model": ("inp", "j2rgb", 1.0, {}),
    "rgb2j_generation_model": ("gen", "rgb2j", 1.0, {}),  # the documented RePaint-only fallback
    "custom_edit_strength_0.6": ("inp", "custom", 0.6, dict(rgb_mask=CUSTOM, depth_mask=CUSTOM)),
}


@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_channel_inpainting_equals_official_loop(env, case):
    model_key, preset, strength, kw = INPAINT_CASES[case]
    z = torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(2))
    if preset == "j2rgb":
        z[:, :4] = 0  # only the depth is known
    model, pos, neg, latent = inpaint(env, model_key, preset, z, **kw)
    out = ksampler_node(env["comfy"], model, latent, 6, strength, pos=pos, neg=neg)
    if preset == "custom":
        m_rgb, m_depth = latent_mask(CUSTOM, (H, W)), latent_mask(CUSTOM, (H, W))
    else:
        m_rgb, m_depth = preset_masks(preset, 1, (H, W))
    ref = official_inpaint(env, model_key, z, m_rgb, m_depth, 6, strength)
    assert_official(out, ref)
    keep = channel_mask(m_rgb, m_depth, 4).expand_as(z) < 0.5
    assert torch.equal(out[keep], z[keep])  # the known channels are the input, bit for bit
    assert (out[~keep] - z[~keep]).abs().max() > 0.05  # the rest was generated


def test_first_model_call_sees_plain_noise_in_kept_channels(env):
    """Official inpainting at strength 1: the first call sees z_T = ε in all 8 channels; later calls see the known
    latent noised to that step (the RePaint blend) in the kept ones."""
    import comfy.patcher_extension as pe

    z = torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(4))
    model, pos, neg, latent = inpaint(env, "inp", "rgb2j", z)
    seen = []

    def spy(executor, x, t, *args, **kwargs):
        seen.append((x[:, :8].clone(), t.clone()))
        return executor(x, t, *args, **kwargs)

    spied = model.clone()
    spied.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    ksampler_node(env["comfy"], spied, latent, 3, pos=pos, neg=neg)
    noise = noise_of(env["comfy"], z.shape)
    first, _ = seen[0]
    torch.testing.assert_close(first[:1], noise, rtol=0, atol=1e-6)  # VP z_T = ε, kept channels included
    ms = model.get_model_object("model_sampling")
    second, t = seen[2]  # calls come in (cond, uncond) pairs; the second step's input
    s = ms.sigma(t[:1]).reshape(())
    known = (z[:, :4] * SCALE + s * noise[:, :4]) / (1 + s**2).sqrt()
    torch.testing.assert_close(second[:1, :4], known, rtol=1e-6, atol=1e-6)


def test_img2img_strength_equals_official_loop(env):
    """A plain strength < 1 run (no mask) on the joint model: add_noise(init, ε, t_start), the last int(N·s) steps."""
    comfy, steps, strength = env["comfy"], 10, 0.5
    z = torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(6))
    out = ksampler_node(comfy, env["gen"], {"samples": z}, steps, strength)
    sched = official_scheduler()
    sched.set_timesteps(steps)
    timesteps = strength_timesteps(sched, steps, strength)
    noise = noise_of(comfy, z.shape)
    latents = sched.add_noise(z * SCALE, noise, timesteps[:1])
    with torch.no_grad():
        for t in timesteps:
            eps_u, eps_c = env["core_gen"](torch.cat([latents] * 2), t, torch.cat([ctx(1), ctx(0)])).chunk(2)
            latents = sched.step(eps_u + 7.5 * (eps_c - eps_u), t, latents).prev_sample
    assert len(timesteps) == 5
    assert_official(out, latents)


def test_sd_v_prediction_equals_diffusers(comfy):
    """Any discrete ε/v model: an SD-layout UNet switched to v-prediction (stock ModelSamplingDiscrete node)."""
    from comfy_tiny import comfy_sd15_from_diffusers

    unet = tiny_sd_unet(seed=3)
    base = comfy_sd15_from_diffusers(comfy, unet)
    (model,) = comfy.nodes.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]().patch(base, "v_prediction", False)
    pos, neg = [[torch.randn(1, 4, 32), {}]], [[torch.randn(1, 4, 32), {}]]
    out = ksampler_node(comfy, model, empty(4), 6, cfg=3.0, pos=pos, neg=neg)
    sched = DDIMScheduler.from_config({**SD21_BASE_SCHEDULER, "prediction_type": "v_prediction"})
    sched.set_timesteps(6)
    z = noise_of(comfy, (1, 4, H, W))
    with torch.no_grad():
        for t in sched.timesteps:
            v_u, v_c = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([neg[0][0], pos[0][0]])).sample.chunk(
                2
            )
            z = sched.step(v_u + 3.0 * (v_c - v_u), t, z).prev_sample
    assert_official(out, z)


# ----------------------------------------------------------------------------------------------------------
# TiledPanorama RGB-D == the official per-tile panorama procedure


def test_tiled_panorama_rgbd_equals_official_procedure(env):
    from test_comfyui_panorama import NODE_ARGS, node_config
    from test_panorama_core import official_loop

    from unidense_core.tiling.panorama import draw_offsets

    comfy, steps = env["comfy"], 5
    pano = comfy.node("UniDense_TiledPanorama").execute(env["gen"], **NODE_ARGS)[0]
    shape = (1, 8, H, 2 * W)
    out = ksampler_node(comfy, pano, {"samples": torch.zeros(shape)}, steps)
    cfg = node_config()
    offsets = draw_offsets(steps, cfg.stride, torch.Generator().manual_seed(NODE_ARGS["seed"]))
    sched = official_scheduler()
    sched.set_timesteps(steps)
    with torch.no_grad():
        ref = official_loop(
            lambda z, t, c: env["core_gen"](z, torch.tensor(t), c),
            noise_of(comfy, shape),
            sched.timesteps.tolist(),
            window=H,
            stride=cfg.stride,
            circular=cfg.circular,
            offsets=offsets,
            vbs=cfg.view_batch_size,
            frac=cfg.full_canvas_fraction,
            strength=cfg.full_canvas_weight,
            size=cfg.boundary,
            xy=False,
            g=7.5,
            ctx=torch.cat([ctx(1), ctx(0)]),  # [uncond, cond], interleaved per tile as the official code
        )
    assert_official(out, ref)
    assert len(set(offsets)) > 1


# ----------------------------------------------------------------------------------------------------------
# The stock route's difference (README: JointNet / Panoramas)


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps", [3, 50])
def test_stock_route_difference_is_measured(env, steps, capsys):
    """euler + ddim_uniform (the same timesteps) vs the official DDIM on the tiny JointNet: the start (σ₀ vs
    √(1+σ₀²) noise scale) and the end (σ = 0 vs ᾱ_0) differ; the official-DDIM node closes the gap."""
    comfy = env["comfy"]
    noise = noise_of(comfy, (1, 8, H, W))
    ref = ddim_generate(env["core_gen"], official_scheduler(), noise, ctx(0), ctx(1), 7.5, steps) / SCALE
    ours = ksampler_node(comfy, env["gen"], empty(8), steps)
    stock_out = stock(comfy, env["gen"], empty(8), steps)
    ms = env["gen"].get_model_object("model_sampling")
    s0 = float(ms.sigmas[(steps - 1) * (1000 // steps) + 1])
    start = math.sqrt(1 + s0**2) / s0 - 1  # relative size of the start noise, official vs stock
    diff, ours_diff = relative(stock_out, ref), relative(ours, ref)
    with capsys.disabled():
        print(
            f"\n[stock euler+ddim_uniform vs official DDIM, tiny JointNet, {steps} steps] start noise scale "
            f"{100 * start:.2f} % larger in the official run; final latent relative L2 difference "
            f"{100 * diff:.2f} % (max |Δ| {float((stock_out - ref).abs().max()):.3g}); official-DDIM node "
            f"{ours_diff:.1e}"
        )
    assert ours_diff < 1e-5
    expected_start = {3: 0.0567, 50: 0.0029}[steps]
    assert math.isclose(start, expected_start, rel_tol=0.05)
    assert 0.5 * start < diff < 2 * start  # the README's claim: about the size of the start gap


# ----------------------------------------------------------------------------------------------------------
# Bad inputs, inputs never changed


def test_inputs_are_never_changed(env):
    z = torch.randn(1, 8, H, W)
    model, pos, neg, latent = inpaint(env, "inp", "rgb2j", z)
    before = (dict(latent), latent["samples"].clone(), dict(model.model_options), [c[1].copy() for c in pos])
    ksampler_node(env["comfy"], model, latent, 2, pos=pos, neg=neg)
    assert dict(latent) == before[0] and torch.equal(latent["samples"], before[1])
    assert dict(model.model_options) == before[2] and [c[1] for c in pos] == before[3]


def sd_variant(comfy, sampling):
    """A tiny SD MODEL with another model_sampling (stock nodes), for the schedule checks."""
    from test_comfyui_panorama import sd_unet

    m = comfy.nodes.NODE_CLASS_MAPPINGS
    if sampling == "flow":
        return m["ModelSamplingSD3"]().patch(sd_unet(comfy), 3.0)[0]
    return m["ModelSamplingDiscrete"]().patch(sd_unet(comfy), sampling, False)[0]


def sampler_run(env, full_strength, sigmas, noise_seed=7, latent=None):
    """SamplerCustomAdvanced with the official SAMPLER (DisableNoise when noise_seed is None)."""
    m = env["comfy"].nodes.NODE_CLASS_MAPPINGS
    noise = m["DisableNoise"]().get_noise()[0] if noise_seed is None else m["RandomNoise"]().get_noise(noise_seed)[0]
    guider = m["CFGGuider"]().get_guider(env["gen"], cond(0), cond(1), 7.5)[0]
    sampler = env["comfy"].node("UniDense_OfficialDDIMSampler").execute(full_strength).args[0]
    return m["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, latent or empty(8))


def bad_cases(env):
    comfy, gen = env["comfy"], env["gen"]
    sig = comfy.node("UniDense_OfficialDDIMSigmas").execute
    ks = comfy.node("UniDense_OfficialDDIMKSampler").execute
    lat = empty(8)
    nan = {"samples": torch.full((1, 8, H, W), float("nan"))}
    partial = sig(gen, 10, 0.5).args[0]
    full = sig(gen, 10, 1.0).args[0]
    return [
        Case("Sigmas", "steps_0", lambda: sig(gen, 0, 1.0), r"steps must be an integer from 1 to 999"),
        Case("Sigmas", "steps_1000", lambda: sig(gen, 1000, 1.0), r"steps must be an integer from 1 to 999"),
        Case("Sigmas", "denoise_0", lambda: sig(gen, 10, 0.0), r"denoise \(strength\) must be in \(0, 1\]"),
        Case("Sigmas", "denoise_1.5", lambda: sig(gen, 10, 1.5), r"must be in \(0, 1\]"),
        Case("Sigmas", "denoise_nan", lambda: sig(gen, 10, float("nan")), r"must be in \(0, 1\]"),
        Case("Sigmas", "no_step_left", lambda: sig(gen, 10, 0.05), r"runs int\(10·0.05\) = 0 steps.*raise"),
        Case("Sigmas", "flow_model", lambda: sig(sd_variant(comfy, "flow"), 10, 1.0), r"discrete VP.*Flow models"),
        Case("Sigmas", "x0_model", lambda: sig(sd_variant(comfy, "x0"), 10, 1.0), r"ε- or v-prediction"),
        Case("Sigmas", "lcm_model", lambda: sig(sd_variant(comfy, "lcm"), 10, 1.0), r"distilled \(LCM\)"),
        Case("KSampler", "steps_0", lambda: ks(gen, 0, 0, 7.5, cond(0), cond(1), lat, 1.0), r"from 1 to 999"),
        Case("KSampler", "cfg_nan", lambda: ks(gen, 0, 3, float("nan"), cond(0), cond(1), lat, 1.0), r"cfg must"),
        Case("KSampler", "latent_nan", lambda: ks(gen, 0, 3, 7.5, cond(0), cond(1), nan, 1.0), r"latent_image has"),
        Case("KSampler", "not_a_latent", lambda: ks(gen, 0, 3, 7.5, cond(0), cond(1), None, 1.0), r"must be a LATENT"),
        Case(
            "Sampler",
            "full_strength_str",
            lambda: comfy.node("UniDense_OfficialDDIMSampler").execute("yes"),
            r"full_strength must be true or false",
        ),  # fmt: skip
        Case(
            "Sampler",
            "full_on_partial_sigmas",
            lambda: sampler_run(env, True, partial),
            r"full_strength is on.*denoise < 1.*Turn full_strength off",
        ),  # fmt: skip
        Case(
            "Sampler", "disable_noise", lambda: sampler_run(env, True, full, None), r"'RandomNoise', not 'DisableNoise'"
        ),
        Case(
            "Sampler",
            "split_sigmas",
            lambda: sampler_run(env, False, full[:5]),
            r"last sigma must be the model's σ\(t=0\).*Split schedules",
        ),  # fmt: skip
    ]


def test_bad_inputs_raise_clear_errors(env):
    for case in bad_cases(env):
        run_case(case)


def test_partial_sigmas_with_full_strength_off_run_the_edit(env):
    """SamplerCustomAdvanced with denoise < 1 SIGMAS and full_strength off == the one-node KSampler's edit."""
    z = {"samples": torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(6))}
    sigmas = env["comfy"].node("UniDense_OfficialDDIMSigmas").execute(env["gen"], 10, 0.5).args[0]
    out, _ = sampler_run(env, False, sigmas, latent=z)
    assert torch.equal(out["samples"], ksampler_node(env["comfy"], env["gen"], z, 10, 0.5))


def test_missing_ksampler_attributes_are_a_clear_error(comfy):
    import sys

    host = next(m for k, m in sys.modules.items() if k.endswith("nodes.hosts.sampling"))

    class NoAttributes:
        def __call__(self, x, sigma, **kwargs):
            return x

    with pytest.raises(RuntimeError, match=r"reads 'inner_model' from ComfyUI's sampler model.*stock KSampler"):
        host.sample_official_ddim_comfy(NoAttributes(), torch.zeros(1, 4, 2, 2), torch.tensor([1.0, 0.0]))


def test_jointnet_and_panorama_workflows_use_the_official_sampler():
    import json
    import os

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")
    for name in sorted(os.listdir(folder)):
        if not name.startswith(("jointnet_", "panorama_")):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            nodes = json.load(f)["nodes"]
        samplers = [n for n in nodes if n["type"] == "UniDense_OfficialDDIMKSampler"]
        assert len(samplers) == 1 and not any(n["type"] == "KSampler" for n in nodes), name
        seed, _control, steps, cfg, denoise = samplers[0]["widgets_values"]
        assert (steps, cfg) == (50, 7.5) and 0 < denoise <= 1, name  # the official settings
