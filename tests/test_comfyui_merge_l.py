"""MERGE-L in a real ComfyUI: ModeSwitch on ComfyUI's own FLUX MODEL (fp32 and fp8 weights), stock samplers, the
official schedule through ModelSamplingFlux, the FLUX latent format and guidance 0.

Skipped (with the reason) unless a ComfyUI is found (tests/comfyui_env.py); run with ComfyUI's own Python.
"""

import logging

import pytest
import torch

from unidense_core.merge.flux_converters import MergeFluxConverters, save_flux_converters
from unidense_core.merge.flux_forward import MergeFluxTransformer
from unidense_core.merge.flux_pipeline import FLUX_SCHEDULER, official_sigmas
from unidense_core.tiny import tiny_flux, tiny_flux_converters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads

H, W = 8, 12  # latent size (64×96 px)
CONVERTER = "merge-large-depth-v1/depth_converters/diffusion_pytorch_model.safetensors"
SHIFT, SCALE = 0.1159, 0.3611  # FLUX VAE latent format


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    from comfy_tiny import comfy_flux_from_diffusers

    folder = tmp_path_factory.mktemp("merge_converters")
    comfy.folder_paths.add_model_folder_path("merge_converters", str(folder), is_default=True)
    conv = tiny_flux_converters()
    save_flux_converters(conv, folder / "merge-large-depth-v1" / "depth_converters")
    flux = tiny_flux()
    handle = comfy.node("UniDense_LoadConverter").execute(CONVERTER, "fp32")[0]
    return dict(comfy=comfy, flux=flux, conv=conv, base=comfy_flux_from_diffusers(comfy, flux), handle=handle)


def switch(env, model, mode):
    return env["comfy"].node("UniDense_ModeSwitch").execute(model, env["handle"], mode, "pixart_alpha")[0]


def cond(seed=0, tokens=5, guidance=3.5):
    g = torch.Generator().manual_seed(seed)
    return [
        [
            torch.randn(1, tokens, 32, generator=g),
            {"pooled_output": torch.randn(1, 16, generator=g), "guidance": guidance},
        ]
    ]


def image_cond(batch=1, seed=0, guidance=0.0):
    """What MergeLDepthConditioning attaches: the image latent in the FLUX latent format as noise_concat."""
    raw = torch.randn(batch, 16, H, W, generator=torch.Generator().manual_seed(100 + seed))
    c = cond(guidance=guidance)
    c[0][1]["noise_concat"] = (raw - SHIFT) * SCALE
    return c, {"samples": torch.zeros(batch, 16, H, W)}


def flux_sampling(comfy, model, width, height):
    """The stock ModelSamplingFlux node (max_shift 1.15, base_shift 0.5) on ``model``."""
    return comfy.nodes.NODE_CLASS_MAPPINGS["ModelSamplingFlux"]().patch(model, 1.15, 0.5, width, height)[0]


def sample(comfy, model, positive, latent, seed=0, steps=3, noise=None, sampler="euler", scheduler="simple"):
    """What the stock KSampler node does (comfy.sample.sample) at cfg 1.0."""
    z = latent["samples"]
    if noise is None:
        noise = comfy.sample.prepare_noise(z, seed)
    return comfy.sample.sample(
        model, noise, steps, 1.0, sampler, scheduler, positive, positive, z, seed=seed, disable_pbar=True
    )


def through_wrappers(comfy, model, x, sigma, ctx, pooled, guidance, **extra):
    """What BaseModel._apply_model hands the network: FLUX's forward, through the model's wrappers."""
    import comfy.patcher_extension as pe

    comfy.model_management.load_models_gpu([model, *model.get_nested_additional_models()])
    options = {"wrappers": pe.copy_nested_dicts(model.wrappers)}
    with torch.no_grad():
        dm = model.model.diffusion_model
        return dm(x, sigma, ctx, y=pooled, guidance=guidance, transformer_options=options, **extra)


def test_comfyui_flux_holds_the_diffusers_weights(env):
    """The tiny builder's key mapping (fused qkv/mlp rows, the final modulation's swapped (shift, scale) halves) gives
    ComfyUI's own FLUX the diffusers model's generation output, so the depth parity below compares like with like."""
    g = torch.Generator().manual_seed(5)
    z, ctx, pooled = (
        torch.randn(2, 16, H, W, generator=g),
        torch.randn(2, 5, 32, generator=g),
        torch.randn(2, 16, generator=g),
    )
    sigma, guidance = torch.tensor([0.9, 0.2]), torch.full((2,), 3.5)
    with torch.no_grad():
        ref = MergeFluxTransformer(env["flux"])(z, sigma, ctx, pooled, guidance=guidance)
        ours = env["base"].model.diffusion_model(z, sigma, ctx, y=pooled, guidance=guidance)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_nodes_registered_and_converters_detected(env):
    comfy = env["comfy"]
    info = comfy.node("UniDense_MergeLDepthConditioning").GET_NODE_INFO_V1()
    assert info["display_name"] and info["output"] == ["CONDITIONING", "CONDITIONING", "LATENT", "INT", "INT"]
    h = env["handle"]
    # the pack's own module (ComfyUI imports it under its path), hence the class name
    assert type(h.patcher.model).__name__ == MergeFluxConverters.__name__ and h.config.num_single_layers == 2
    assert h.patcher.model.x_embedder.weight.dtype == torch.float32
    bf16 = comfy.node("UniDense_LoadConverter").execute(CONVERTER, "bf16")[0]
    assert bf16.patcher.model.x_embedder.weight.dtype == torch.bfloat16


def test_converters_follow_model_management(env):
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    assert env["handle"].patcher in m.get_additional_models()
    c_img, _ = image_cond()
    conds = {"positive": comfy.sampler_helpers.convert_cond(c_img)}
    comfy.sampler_helpers.prepare_sampling(m, (1, 16, H, W), conds, m.model_options)  # as every stock sampler
    loaded = [lm.model for lm in comfy.model_management.current_loaded_models]
    assert env["handle"].patcher in loaded and m in loaded
    assert not env["base"].wrappers and not env["base"].get_additional_models()  # the input MODEL is untouched


def test_converters_stream_under_low_vram(env):
    """Built with ComfyUI's ops: a partial (low-VRAM) load casts the weights per call and gives the same depth."""
    comfy = env["comfy"]
    handle = comfy.node("UniDense_LoadConverter").execute(CONVERTER, "fp32")[0]
    linears = [m for m in handle.patcher.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(hasattr(m, "comfy_cast_weights") for m in linears)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 32, H, W, generator=g)
    ctx, pooled, sigma = torch.randn(1, 5, 32, generator=g), torch.randn(1, 16, generator=g), torch.tensor([0.7])
    m = env["comfy"].node("UniDense_ModeSwitch").execute(env["base"], handle, "depth", "keep")[0]
    full = through_wrappers(comfy, m, x, sigma, ctx, pooled, None)
    comfy.model_management.unload_all_models()
    handle.patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)  # every module in low VRAM
    try:
        import comfy.patcher_extension as pe

        assert all(lin.comfy_cast_weights for lin in linears)  # on the CPU the weights stay put; the cast path runs
        with torch.no_grad():
            streamed = m.model.diffusion_model(
                x, sigma, ctx, y=pooled, transformer_options={"wrappers": pe.copy_nested_dicts(m.wrappers)}
            )
        assert all(lin.comfy_cast_weights for lin in linears)
    finally:
        handle.patcher.unpatch_model()
    assert torch.equal(streamed, full)


def test_generate_mode_is_bit_identical(env):
    comfy, base = env["comfy"], env["base"]
    latent = {"samples": torch.zeros(1, 16, H, W)}
    ref = sample(comfy, base, cond(), latent)
    assert torch.equal(sample(comfy, switch(env, base, "generate"), cond(), latent), ref)


def test_depth_forward_matches_core(env):
    """ComfyUI's FLUX + our wrapper == the diffusers FLUX + core MERGE-L forward, for the same weights."""
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    g = torch.Generator().manual_seed(0)
    z_t, z_img = torch.randn(2, 16, H, W, generator=g), torch.randn(2, 16, H, W, generator=g)
    ctx, pooled = torch.randn(2, 5, 32, generator=g), torch.randn(2, 16, generator=g)
    sigma = torch.tensor([1.0, 0.31])
    ours = through_wrappers(comfy, m, torch.cat([z_t, z_img], dim=1), sigma, ctx, pooled, torch.full((2,), 3.5))
    with torch.no_grad():
        ref = MergeFluxTransformer(env["flux"], env["conv"])(z_t, sigma, ctx, pooled, "depth", image_latent=z_img)
    assert ours.shape == (2, 16, H, W)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # guidance is 0 in depth mode whatever the conditioning carries (3.5 above, none or 0 here)
    for guidance in (None, torch.zeros(2)):
        again = through_wrappers(comfy, m, torch.cat([z_t, z_img], dim=1), sigma, ctx, pooled, guidance)
        assert torch.equal(again, ours)


def test_fp8_base_runs_as_comfyui_casts_it(env):
    """An fp8 FLUX (weights float8_e4m3fn, compute fp32 through ComfyUI's ops) == the core on fp8-rounded weights."""
    from comfy_tiny import comfy_flux_from_diffusers

    comfy = env["comfy"]
    fp8 = comfy_flux_from_diffusers(comfy, env["flux"], torch.float8_e4m3fn, torch.float32)
    assert fp8.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    m = switch(env, fp8, "depth")
    g = torch.Generator().manual_seed(1)
    z_t, z_img = torch.randn(1, 16, H, W, generator=g), torch.randn(1, 16, H, W, generator=g)
    ctx, pooled = torch.randn(1, 5, 32, generator=g), torch.randn(1, 16, generator=g)
    sigma = torch.tensor([0.5])
    ours = through_wrappers(comfy, m, torch.cat([z_t, z_img], dim=1), sigma, ctx, pooled, None)
    rounded = tiny_flux()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.float8_e4m3fn).float())
        ref = MergeFluxTransformer(rounded, env["conv"])(z_t, sigma, ctx, pooled, "depth", image_latent=z_img)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,width,height", [(20, 1024, 1024), (20, 512, 768), (10, 640, 480), (50, 1024, 1024)])
def test_model_sampling_flux_and_simple_give_the_official_sigmas(env, steps, width, height):
    """ModelSamplingFlux(width, height) + the 'simple' scheduler = linspace(1, 1/N, N) shifted by the official μ."""
    comfy = env["comfy"]
    m = flux_sampling(comfy, switch(env, env["base"], "depth"), width, height)
    ours = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", steps)
    torch.testing.assert_close(ours, official_sigmas(steps, height, width, FLUX_SCHEDULER), rtol=0, atol=2e-6)
    plain = comfy.samplers.calculate_sigmas(env["base"].get_model_object("model_sampling"), "simple", steps)
    if (width, height) != (1024, 1024):  # without ModelSamplingFlux the shift is 1.15 (1024²) for every size
        assert (plain - ours).abs().max() > 1e-3


@pytest.mark.parametrize("steps,size", [(28, 1024), (33, 2048)])
def test_steps_that_do_not_divide_10000_round_the_grid_slightly(env, steps, size):
    """ComfyUI's 'simple' picks from 10,000 σ values by truncated index: off by < 1e-3 when N does not divide it."""
    comfy = env["comfy"]
    m = flux_sampling(comfy, env["base"], size, size)
    ours = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", steps)
    diff = (ours - official_sigmas(steps, size, size)).abs().max().item()
    assert 1e-5 < diff < 1e-3


def test_stock_ksampler_reproduces_the_official_loop(env):
    """KSampler(euler, simple, cfg 1) after ModelSamplingFlux == the official Euler loop on the core model."""
    comfy = env["comfy"]
    g = torch.Generator().manual_seed(11)
    raw = torch.randn(1, 16, H, W, generator=g)
    noise = torch.randn(1, 16, H, W, generator=g)
    c = cond(seed=2)
    ctx, pooled = c[0][0], c[0][1]["pooled_output"]
    z_img, steps = (raw - SHIFT) * SCALE, 4
    model = MergeFluxTransformer(env["flux"], env["conv"])
    sig = official_sigmas(steps, H * 8, W * 8)
    z = noise.clone()
    with torch.no_grad():
        for i in range(steps):
            v = model(z, sig[i : i + 1], ctx, pooled, mode="depth", image_latent=z_img)
            z = z + (sig[i + 1] - sig[i]) * v  # FlowMatchEulerDiscreteScheduler.step (Euler on the velocity)
    c[0][1]["noise_concat"] = z_img
    m = flux_sampling(comfy, switch(env, env["base"], "depth"), W * 8, H * 8)
    out = sample(comfy, m, c, {"samples": torch.zeros(1, 16, H, W)}, noise=noise, steps=steps)
    # the LATENT out is unscaled: ComfyUI's process_latent_out = z / 0.3611 + 0.1159
    torch.testing.assert_close(out, z / SCALE + SHIFT, rtol=1e-4, atol=1e-4)


def test_same_model_both_modes_equals_separate_graphs(env):
    comfy, base = env["comfy"], env["base"]
    c_img, latent = image_cond()
    gen_alone = sample(comfy, switch(env, base, "generate"), cond(), latent)
    depth_alone = sample(comfy, switch(env, base, "depth"), c_img, latent)
    g1 = sample(comfy, switch(env, base, "generate"), cond(), latent)
    d1 = sample(comfy, switch(env, base, "depth"), c_img, latent)
    g2 = sample(comfy, switch(env, base, "generate"), cond(), latent)
    assert torch.equal(g1, gen_alone) and torch.equal(g2, gen_alone) and torch.equal(d1, depth_alone)
    assert not torch.equal(d1, g1)


def test_sampler_custom_advanced_path_equals_ksampler(env):
    comfy = env["comfy"]
    m = flux_sampling(comfy, switch(env, env["base"], "depth"), W * 8, H * 8)
    c_img, latent = image_cond()
    noise = torch.randn(1, 16, H, W, generator=torch.Generator().manual_seed(3))
    ref = sample(comfy, m, c_img, latent, noise=noise, steps=4)
    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(c_img, c_img)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", 4)
    out = guider.sample(
        noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_conditioning_node(env):
    from comfy_tiny import comfy_flux_vae

    comfy = env["comfy"]
    vae = comfy_flux_vae(comfy)
    node = comfy.node("UniDense_MergeLDepthConditioning")
    image = torch.rand(2, 64, 96, 3)
    pos, neg, latent, width, height = node.execute(cond(tokens=512), vae, image, 0).args
    raw = vae.encode(image)
    assert torch.equal(pos[0][1]["noise_concat"], (raw - SHIFT) * SCALE) and neg is pos
    assert pos[0][1]["guidance"] == 0.0 and "pooled_output" in pos[0][1]
    assert latent["samples"].shape == raw.shape == (2, 16, 8, 12) and not latent["samples"].any()
    assert (width, height) == (96, 64)
    *_, w2, h2 = node.execute(cond(tokens=512), vae, torch.rand(1, 70, 100, 3), 0).args
    assert (w2, h2) == (96, 64)  # floored to multiples of 16, as the official VaeImageProcessor(16)
    *_, w3, h3 = node.execute(cond(tokens=512), vae, torch.rand(1, 60, 90, 3), 256).args
    assert (w3, h3) == (256, 176)  # longer side 256, both sides multiples of 16


def test_conditioning_warns_about_token_count(env, caplog):
    from comfy_tiny import comfy_flux_vae

    node = env["comfy"].node("UniDense_MergeLDepthConditioning")
    with caplog.at_level(logging.WARNING):
        node.execute(cond(tokens=256), comfy_flux_vae(env["comfy"]), torch.rand(1, 32, 32, 3), 0)
    assert "T5TokenizerOptions" in caplog.text and "256" in caplog.text


def test_prompt_embedding_nodes_keep_the_pooled_output(env, tmp_path):
    comfy = env["comfy"]
    comfy.folder_paths.add_model_folder_path("unidense_embeddings", str(tmp_path), is_default=True)
    c = cond(seed=4, tokens=512)
    comfy.node("UniDense_SavePromptEmbedding").execute(c, "flux_empty", "")
    loaded = comfy.node("UniDense_LoadPromptEmbedding").execute("flux_empty.safetensors")[0]
    assert torch.equal(loaded[0][0], c[0][0]) and torch.equal(loaded[0][1]["pooled_output"], c[0][1]["pooled_output"])


def test_bad_combinations_leave_the_model_untouched(env, caplog):
    from comfy_tiny import comfy_flux_from_diffusers, comfy_pixart_from_diffusers

    from unidense_core.tiny import tiny_pixart

    comfy, base = env["comfy"], env["base"]
    ms = comfy.node("UniDense_ModeSwitch")
    pixart = comfy_pixart_from_diffusers(comfy, tiny_pixart())
    for mode in ("depth", "generate"):
        with pytest.raises(ValueError, match="MERGE-L converters .* the MODEL is PixArtMS"):
            ms.execute(pixart, env["handle"], mode, "pixart_alpha")
    schnell = comfy_flux_from_diffusers(comfy, tiny_flux(guidance_embeds=False))
    with pytest.raises(ValueError, match="FLUX.1-schnell"):
        ms.execute(schnell, env["handle"], "depth", "pixart_alpha")
    depth_dev = comfy_flux_from_diffusers(comfy, tiny_flux(in_channels=128, out_channels=64))
    with pytest.raises(ValueError, match="FLUX.1-Depth-dev"):
        ms.execute(depth_dev, env["handle"], "depth", "pixart_alpha")
    lora = base.clone()
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    lora.add_patches({key: (torch.zeros_like(base.model.state_dict()[key]),)}, 1.0)
    with caplog.at_level(logging.WARNING):
        ms.execute(lora, env["handle"], "depth", "pixart_alpha")
    assert "LoRA" in caplog.text
    assert not base.wrappers and not base.get_additional_models() and not base.patches


def test_depth_mode_errors(env):
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    with pytest.raises(ValueError, match="no image latent"):
        sample(comfy, m, cond(), {"samples": torch.zeros(1, 16, H, W)})
    x, ctx, pooled = torch.zeros(1, 32, H, W), torch.zeros(1, 5, 32), torch.zeros(1, 16)
    with pytest.raises(ValueError, match="ControlNet"):
        through_wrappers(comfy, m, x, torch.tensor([1.0]), ctx, pooled, None, control={"input": [], "output": []})
    with pytest.raises(ValueError, match="reference latents"):
        through_wrappers(comfy, m, x, torch.tensor([1.0]), ctx, pooled, None, ref_latents=[torch.zeros(1, 16, H, W)])
    with pytest.raises(ValueError, match="pooled CLIP"):
        through_wrappers(comfy, m, x, torch.tensor([1.0]), ctx, None, None)
