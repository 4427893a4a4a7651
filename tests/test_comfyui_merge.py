"""MERGE in a real ComfyUI: ModeSwitch on ComfyUI's own PixArt MODEL, stock samplers, the α latent format.

Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import pytest
import torch

from unidense_core.dense.readout import merge_depth_from_unit
from unidense_core.merge.converters import save_converters
from unidense_core.merge.forward import MergePixArtTransformer
from unidense_core.tiny import randomize_, tiny_converters, tiny_pixart

H = W = 34  # latent side: ComfyUI's PixArt needs (H+W)/2 >= 33 to generate


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    from comfy_tiny import comfy_pixart_from_diffusers

    folder = tmp_path_factory.mktemp("merge_converters")
    comfy.folder_paths.add_model_folder_path("merge_converters", str(folder), is_default=True)
    conv = tiny_converters()
    save_converters(conv, folder / "depth_converters")
    fixed = tiny_pixart()
    base = comfy_pixart_from_diffusers(comfy, fixed)
    handle = comfy.node("UniDense_LoadConverter").execute(
        "depth_converters/diffusion_pytorch_model.safetensors", "fp32"
    )[0]
    return dict(comfy=comfy, fixed=fixed, conv=conv, base=base, handle=handle, folder=folder)


def switch(env, model, mode, latent_format="pixart_alpha"):
    return env["comfy"].node("UniDense_ModeSwitch").execute(model, env["handle"], mode, latent_format)[0]


def sample(comfy, model, positive, latent, seed=0, steps=3, noise=None, cfg=1.0):
    """What the stock KSampler node does (comfy.sample.sample) with the official MERGE sampler settings."""
    latent = latent["samples"]
    if noise is None:
        noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model, noise, steps, cfg, "dpmpp_2m", "sgm_uniform", positive, positive, latent, seed=seed, disable_pbar=True
    )


def cond(seed=0, tokens=3):
    return [[torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def image_cond(env, batch=1, seed=0):
    """Conditioning carrying the image latent as MergeDepthConditioning builds it (noise_concat, ×0.18215)."""
    z = torch.randn(batch, 4, H, W, generator=torch.Generator().manual_seed(100 + seed))
    c = cond()
    c[0][1]["noise_concat"] = z * 0.18215
    return c, {"samples": torch.zeros(batch, 4, H, W)}


def test_pack_registers_v3_nodes(comfy):
    for node_id in (
        "UniDense_LoadConverter",
        "UniDense_ModeSwitch",
        "UniDense_MergeDepthConditioning",
        "UniDense_MergeDepthReadout",
        "UniDense_SavePromptEmbedding",
        "UniDense_LoadPromptEmbedding",
    ):
        info = comfy.node(node_id).GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"].startswith("UniDense")


def test_converters_follow_model_management(env):
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    assert env["handle"].patcher in m.get_additional_models()
    c_img, _ = image_cond(env)
    conds = {"positive": comfy.sampler_helpers.convert_cond(c_img)}
    comfy.sampler_helpers.prepare_sampling(m, (1, 4, H, W), conds, m.model_options)  # as every stock sampler
    loaded = [lm.model for lm in comfy.model_management.current_loaded_models]
    assert env["handle"].patcher in loaded and m in loaded  # loaded (and later offloaded) together


def test_generate_mode_is_bit_identical(env):
    comfy, base = env["comfy"], env["base"]
    latent = {"samples": torch.zeros(1, 4, H, W)}
    ref = sample(comfy, base, cond(), latent)
    kept = switch(env, base, "generate", "keep")
    assert torch.equal(sample(comfy, kept, cond(), latent), ref)
    # the α latent format changes only the latent scale, never the network's output
    alpha = switch(env, base, "generate")
    x, sigma = torch.randn(1, 4, H, W), torch.tensor([3.0])
    comfy.model_management.load_models_gpu([base])
    out_base = base.model.apply_model(x, sigma, c_crossattn=cond()[0][0])
    comfy.model_management.load_models_gpu([alpha])
    out_alpha = alpha.model.apply_model(x, sigma, c_crossattn=cond()[0][0])
    assert torch.equal(out_alpha, out_base)


def test_alpha_latent_format_on_clone_only(env):
    base = env["base"]
    assert base.get_model_object("latent_format").scale_factor == pytest.approx(0.13025)  # loaded as PixArt-Σ
    for mode in ("generate", "depth"):
        m = switch(env, base, mode)
        assert m.get_model_object("latent_format").scale_factor == pytest.approx(0.18215)
    assert base.get_model_object("latent_format").scale_factor == pytest.approx(0.13025)
    assert not base.object_patches and not base.get_additional_models()


def test_depth_forward_matches_core(env):
    """ComfyUI's PixArt + our patch == the diffusers PixArt + core MERGE forward, for the same weights."""
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    comfy.model_management.load_models_gpu([m])
    dm = m.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    z_t, z_img = torch.randn(2, 4, H, W, generator=g), torch.randn(2, 4, H, W, generator=g)
    ctx = torch.randn(2, 3, 32, generator=g)
    t = torch.tensor([999.0, 311.0])
    with torch.no_grad():
        ours = dm(torch.cat([z_t, z_img], dim=1), t, ctx)  # what _apply_model hands the network (c_concat last)
        ref = MergePixArtTransformer(env["fixed"], env["conv"])(z_t, t, ctx, None, mode="depth", image_latent=z_img)
    assert ours.shape == (2, 4, H, W)
    torch.testing.assert_close(ours, ref[:, :4], rtol=1e-4, atol=1e-4)


def test_same_model_both_modes_equals_separate_graphs(env):
    comfy, base = env["comfy"], env["base"]
    c_img, latent = image_cond(env)
    gen_alone = sample(comfy, switch(env, base, "generate"), cond(), latent)
    depth_alone = sample(comfy, switch(env, base, "depth"), c_img, latent)
    # one graph: generate, then depth, then generate again, all from the same loaded MODEL
    g1 = sample(comfy, switch(env, base, "generate"), cond(), latent)
    d1 = sample(comfy, switch(env, base, "depth"), c_img, latent)
    g2 = sample(comfy, switch(env, base, "generate"), cond(), latent)
    assert torch.equal(g1, gen_alone) and torch.equal(g2, gen_alone) and torch.equal(d1, depth_alone)
    assert not torch.equal(d1, g1)


def test_depth_batches_match_single_runs(env):
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    z = torch.randn(2, 4, H, W, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, 4, H, W, generator=torch.Generator().manual_seed(6))
    batch = [[cond()[0][0], {"noise_concat": z * 0.18215}]]
    out = sample(comfy, m, batch, {"samples": torch.zeros(2, 4, H, W)}, noise=noise)
    singles = []
    for i in range(2):
        one = [[cond()[0][0], {"noise_concat": z[i : i + 1] * 0.18215}]]
        singles.append(sample(comfy, m, one, {"samples": torch.zeros(1, 4, H, W)}, noise=noise[i : i + 1]))
    # equal up to fp32 batch-size effects (random tiny models amplify them); a mix-up of images is O(1)
    rel = [((out[i] - singles[i]).abs().max() / singles[i].abs().max()).item() for i in range(2)]
    assert max(rel) < 1e-3, rel
    assert ((out[0] - singles[1]).abs().max() / singles[1].abs().max()).item() > 0.1


def test_depth_mode_without_image_is_a_clear_error(env):
    m = switch(env, env["base"], "depth")
    with pytest.raises(ValueError, match="no image latent"):
        sample(env["comfy"], m, cond(), {"samples": torch.zeros(1, 4, H, W)})


def test_bad_inputs_leave_the_model_untouched(env):
    comfy, base = env["comfy"], env["base"]
    ms = comfy.node("UniDense_ModeSwitch")
    not_pixart = comfy.model_patcher.ModelPatcher(torch.nn.Module(), torch.device("cpu"), torch.device("cpu"))
    not_pixart.model.diffusion_model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs a PixArt MODEL"):
        ms.execute(not_pixart, env["handle"], "depth", "pixart_alpha")
    wide_conv = randomize_(
        type(env["conv"])(
            type(env["conv"].config)(num_layers=2, num_attention_heads=2, attention_head_dim=16, sample_size=8)
        )
    )
    bad = type(env["handle"])(
        comfy.model_patcher.ModelPatcher(wide_conv, torch.device("cpu"), torch.device("cpu")), wide_conv.config, "wide"
    )
    for mode in ("depth", "generate"):
        with pytest.raises(ValueError, match="another base model"):
            ms.execute(base, bad, mode, "pixart_alpha")
    with pytest.raises(ValueError, match="mode must be"):
        ms.execute(base, env["handle"], "normals", "pixart_alpha")
    assert not base.object_patches and not base.get_additional_models()
    assert base.model_options == {"transformer_options": {}}


def test_load_converter_errors_name_the_file(env, tmp_path):
    comfy = env["comfy"]
    with pytest.raises(FileNotFoundError, match="hongk1998/merge-base-depth-v1"):
        comfy.node("UniDense_LoadConverter").execute("missing.safetensors", "auto")
    (env["folder"] / "broken.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="broken.safetensors"):
        comfy.node("UniDense_LoadConverter").execute("broken.safetensors", "auto")


def test_conditioning_node_encodes_and_checks_sizes(env):
    from comfy_tiny import comfy_vae

    comfy = env["comfy"]
    vae = comfy_vae(comfy)
    node = comfy.node("UniDense_MergeDepthConditioning")
    image = torch.rand(2, 64, 96, 3)
    pos, neg, latent = node.execute(cond(), vae, image, "native").args
    raw = vae.encode(image)
    assert (
        torch.equal(pos[0][1]["noise_concat"], raw * 0.18215) and neg[0][1]["noise_concat"] is pos[0][1]["noise_concat"]
    )
    assert latent["samples"].shape == raw.shape == (2, 4, 8, 12) and not latent["samples"].any()
    with pytest.raises(ValueError, match="multiples of 16"):
        node.execute(cond(), vae, torch.rand(1, 60, 96, 3), "native")
    _, _, binned = node.execute(cond(), vae, torch.rand(1, 60, 90, 3), "official_bins").args
    assert binned["samples"].shape[-2:] == (416 // 8, 608 // 8)  # 60/90 = 0.67 -> the 0.68 bin, 416×608


def test_readout_node(env):
    comfy = env["comfy"]
    decoded = torch.rand(2, 8, 8, 3)
    image, raw = comfy.node("UniDense_MergeDepthReadout").execute(decoded, True, "none").args
    torch.testing.assert_close(raw, merge_depth_from_unit(decoded, channel_dim=-1))
    torch.testing.assert_close(image[..., 0], 1 - raw)  # near (small depth) is white
    assert image.shape == (2, 8, 8, 3)
    _, resized = comfy.node("UniDense_MergeDepthReadout").execute(decoded, True, "none", torch.zeros(1, 16, 12, 3)).args
    assert resized.shape == (2, 16, 12)


def test_mode_switch_shares_the_base_weights(env):
    """ModeSwitch is cheap because it copies nothing: every clone, switched back and forth, points at the base's own
    weight storage (no timing here; time and memory are measured in benchmarks/mode_switch.py)."""
    base = env["base"]
    ptrs = {k: v.data_ptr() for k, v in base.model.diffusion_model.state_dict().items()}
    model = base
    for mode in ("depth", "generate") * 10:
        model = switch(env, model, mode)
        assert model is not base and model.model is base.model
    clone_ptrs = {k: v.data_ptr() for k, v in model.model.diffusion_model.state_dict().items()}
    assert clone_ptrs == ptrs


def test_stock_ksampler_reproduces_the_official_loop(env):
    """KSampler(dpmpp_2m, sgm_uniform, 20 steps, cfg 1) in ComfyUI ≈ the official DPM-Solver++ loop in diffusers."""
    from diffusers import DPMSolverMultistepScheduler

    from unidense_core.merge.pipeline import PIXART_SCHEDULER

    comfy = env["comfy"]
    g = torch.Generator().manual_seed(11)
    z_img = torch.randn(1, 4, H, W, generator=g)
    noise = torch.randn(1, 4, H, W, generator=g)
    ctx = torch.randn(1, 3, 32, generator=g)
    # official: diffusers DPM-Solver++ (timesteps 999, 949, ..., 50) on the core MERGE forward
    model = MergePixArtTransformer(env["fixed"], env["conv"])
    sched = DPMSolverMultistepScheduler.from_config(PIXART_SCHEDULER)
    sched.set_timesteps(20)
    z = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(model(z, t.expand(1), ctx, None, mode="depth", image_latent=z_img)[:, :4], t, z).prev_sample
    # ComfyUI: the stock sampler on the ModeSwitch clone; LATENT out is unscaled (÷ 0.18215)
    c = [[ctx, {"noise_concat": z_img}]]
    out = sample(
        comfy, switch(env, env["base"], "depth"), c, {"samples": torch.zeros(1, 4, H, W)}, noise=noise, steps=20
    )
    rel = ((out * 0.18215 - z).abs().max() / z.abs().max()).item()
    # measured 1.7e-3: sgm_uniform uses unrounded timesteps (949.05 vs 949); everything else is the same
    assert rel < 1e-2, rel


def test_prompt_embedding_nodes_roundtrip(env, tmp_path):
    from unidense_core.io.prompt_embeddings import save_prompt_embedding

    comfy = env["comfy"]
    comfy.folder_paths.add_model_folder_path("unidense_embeddings", str(tmp_path), is_default=True)
    c = cond(seed=4, tokens=1)
    comfy.node("UniDense_SavePromptEmbedding").execute(c, "empty_t5", "")
    assert (tmp_path / "empty_t5.safetensors").is_file()
    loaded = comfy.node("UniDense_LoadPromptEmbedding").execute("empty_t5.safetensors")[0]
    assert torch.equal(loaded[0][0], c[0][0])
    # an official-style padded embedding (120 tokens + mask) loads as its real tokens only
    ctx = torch.randn(1, 120, 32)
    mask = torch.zeros(1, 120, dtype=torch.int64)
    mask[0, :2] = 1
    save_prompt_embedding(tmp_path / "padded.safetensors", ctx, mask)
    loaded = comfy.node("UniDense_LoadPromptEmbedding").execute("padded.safetensors")[0]
    assert torch.equal(loaded[0][0], ctx[:, :2])
    with pytest.raises(ValueError, match="plain file name"):
        comfy.node("UniDense_SavePromptEmbedding").execute(c, "../escape", "")


def test_sampler_custom_advanced_path_equals_ksampler(env):
    """The guider/sampler/sigmas route of SamplerCustomAdvanced gives the KSampler result."""
    comfy = env["comfy"]
    m = switch(env, env["base"], "depth")
    c_img, latent = image_cond(env)
    noise = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(3))
    ref = sample(comfy, m, c_img, latent, noise=noise, steps=4)
    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(c_img, c_img)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "sgm_uniform", 4)
    out = guider.sample(
        noise, latent["samples"], comfy.samplers.sampler_object("dpmpp_2m"), sigmas, seed=0, disable_pbar=True
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
