"""DMP in a real ComfyUI: LoRA on a ComfyUI SD 1.x MODEL, the sampler node and the SAMPLER path, read-outs.

The ComfyUI MODEL is ComfyUI's own SD15 UNet holding the weights of a tiny diffusers UNet (SD 1.x block layout),
so every result is compared with the core path (diffusers + peft, official update equations).
Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import copy
import importlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from unidense_core.dmp import sampler as dmp
from unidense_core.dmp.lora import apply_lora_peft, save_lora_attn_procs
from unidense_core.tiny import random_dmp_lora, tiny_sd_unet

H = W = 8  # latent side (64 px)
from comfy_tiny import comfy_sd15_from_diffusers  # noqa: E402

SD_SCALE = 0.18215  # SD 1.x latent scale (ComfyUI's process_latent_in)
LORA_FILE = "dmp/depth-tiny/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    comfy.folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    unet = tiny_sd_unet()
    lora = random_dmp_lora(unet, scale=0.3)
    save_lora_attn_procs(lora, folder / "dmp" / "depth-tiny")  # the official layout, unchanged
    base = comfy_sd15_from_diffusers(comfy, unet)
    peft_unet = apply_lora_peft(copy.deepcopy(unet), lora)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, 5, 32, generator=g)
    ctx_u = torch.randn(1, 5, 32, generator=g)
    image_raw = torch.randn(2, 4, H, W, generator=g)  # what VAEEncode returns (unscaled)
    lora_model = comfy.node("UniDense_LoadDMPLora").execute(base, LORA_FILE, 1.0)[0]
    return dict(
        comfy=comfy,
        folder=folder,
        unet=unet,
        lora=lora,
        base=base,
        peft_unet=peft_unet,
        ctx=ctx,
        ctx_u=ctx_u,
        image_raw=image_raw,
        lora_model=lora_model,
        memo={},
    )


def run_node(env, model=None, steps=5, variant="standard", cfg=1.0, negative=None, latent=None):
    latent = {"samples": env["image_raw"]} if latent is None else latent
    model = env["lora_model"] if model is None else model
    node = env["comfy"].node("UniDense_DeterministicInterpolationSampler")
    return node.execute(model, [[env["ctx"], {}]], latent, steps, variant, cfg, negative)[0]["samples"]


def core_reference(env, steps=5, variant="standard", guidance=1.0):
    """The core path: diffusers UNet + peft LoRA + the official update equations, in SD-scaled latents (cached)."""
    key = ("core", steps, variant, guidance)
    if key not in env["memo"]:
        neg = env["ctx_u"] if guidance != 1.0 else None
        fn = dmp.unet_velocity_fn(env["peft_unet"], env["ctx"], neg, guidance)
        env["memo"][key] = dmp.sample_dmp(fn, env["image_raw"] * SD_SCALE, steps, variant) / SD_SCALE
    return env["memo"][key]


def counting(env, model):
    """A clone of ``model`` that counts UNet (diffusion model) evaluations."""
    import comfy.patcher_extension as pe

    calls = []

    def wrapper(executor, *args, **kwargs):
        calls.append(args[0].shape[0])
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "count", wrapper)
    return m, calls


def comfy_sd():
    return importlib.import_module("comfy.sd")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------------------------------------


def test_nodes_register_with_tooltips(comfy):
    for node_id in (
        "UniDense_LoadDMPLora",
        "UniDense_DeterministicInterpolationSampler",
        "UniDense_DMPSampler",
        "UniDense_DMPSigmas",
        "UniDense_DMPDepthReadout",
        "UniDense_DMPNormalsReadout",
        "UniDense_DMPImageReadout",
        "UniDense_ProcessingResolution",
    ):
        info = comfy.node(node_id).GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"] == "UniDense/DMP"
        for section in info["input"].values():
            for name, spec in section.items():
                assert spec[1].get("tooltip"), (node_id, name)
    inputs = comfy.node("UniDense_DeterministicInterpolationSampler").GET_NODE_INFO_V1()["input"]
    assert "seed" not in inputs["required"] and "negative" in inputs["optional"]
    assert inputs["required"]["steps"][1]["default"] == 5


@pytest.mark.parametrize("variant", ["standard", "oracle"])
def test_node_matches_core_peft_path(env, variant):
    """Same LoRA file -> same prediction through ComfyUI (weight patches) and the core (peft on diffusers)."""
    ours = run_node(env, variant=variant)
    ref = core_reference(env, variant=variant)
    assert ours.shape == (2, 4, H, W)
    assert rel_err(ours, ref) < 1e-4
    no_lora = dmp.sample_dmp(dmp.unet_velocity_fn(env["unet"], env["ctx"]), env["image_raw"] * SD_SCALE, 5, variant)
    assert rel_err(no_lora / SD_SCALE, ref) > 100 * rel_err(ours, ref)  # the LoRA matters far above the tolerance


def test_cfg_matches_core(env):
    ours = run_node(env, cfg=2.0, negative=[[env["ctx_u"], {}]])
    ref = core_reference(env, guidance=2.0)
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(run_node(env), ref) > 1e-2  # guidance changes the result


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_exactly_steps_unet_evaluations(env, steps):
    m, calls = counting(env, env["lora_model"])
    run_node(env, model=m, steps=steps)
    assert len(calls) == steps and set(calls) == {2}  # one batched call per step, batch 2
    if steps == 5:
        m, calls = counting(env, env["lora_model"])
        run_node(env, model=m, steps=steps, cfg=2.0, negative=[[env["ctx_u"], {}]])
        assert len(calls) == steps and set(calls) == {4}  # cond + uncond in one call


def test_sampler_custom_advanced_equals_node_and_vp_loop(env):
    comfy = env["comfy"]
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    noise = nodes["DisableNoise"]().get_noise()[0]
    guider = nodes["BasicGuider"]().get_guider(env["lora_model"], [[env["ctx"], {}]])[0]
    for variant in ("standard", "oracle"):
        sampler = comfy.node("UniDense_DMPSampler").execute(variant)[0]
        sigmas = comfy.node("UniDense_DMPSigmas").execute(5)[0]
        torch.testing.assert_close(
            sigmas, torch.tensor([5.1344, 2.2929, 1.1682, 0.5741, 0.0413, 0.0292]), atol=1e-4, rtol=0
        )
        out = nodes["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, {"samples": env["image_raw"]})
        samples = out[0]["samples"]
        assert rel_err(samples, run_node(env, variant=variant)) < 1e-6  # same code path, same numbers
        assert rel_err(samples, core_reference(env, variant=variant)) < 1e-4


def test_sampler_path_rejects_eps_model_and_noise(env):
    comfy = env["comfy"]
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    sampler = comfy.node("UniDense_DMPSampler").execute("standard")[0]
    sigmas = comfy.node("UniDense_DMPSigmas").execute(5)[0]
    latent = {"samples": env["image_raw"]}
    eps_guider = nodes["BasicGuider"]().get_guider(env["base"], [[env["ctx"], {}]])[0]
    with pytest.raises(ValueError, match="v-prediction"):
        nodes["SamplerCustomAdvanced"]().sample(
            nodes["DisableNoise"]().get_noise()[0], eps_guider, sampler, sigmas, latent
        )
    guider = nodes["BasicGuider"]().get_guider(env["lora_model"], [[env["ctx"], {}]])[0]
    noise = nodes["RandomNoise"]().get_noise(0)[0]
    with pytest.raises(ValueError, match="DisableNoise"):
        nodes["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, latent)


def test_eps_base_is_sampled_as_v_prediction(env):
    """The node treats the model as v-prediction whatever the base's own type (here an EPS SD15)."""
    ms = importlib.import_module("comfy.model_sampling")
    assert not isinstance(env["base"].get_model_object("model_sampling"), ms.V_PREDICTION)
    stock, _ = comfy_sd().load_lora_for_models(env["base"], None, load_file(env["folder"] / LORA_FILE), 1.0, 0)
    assert rel_err(run_node(env, model=stock), core_reference(env)) < 1e-4


def test_deterministic_batched_and_input_untouched(env):
    a, b = run_node(env), run_node(env)
    assert torch.equal(a, b)
    single = run_node(env, latent={"samples": env["image_raw"][1:]})
    assert rel_err(a[1:], single) < 1e-4 and rel_err(a[:1], single) > 1e-2
    base = env["base"]
    assert not base.patches and not base.object_patches and base.model_options == {"transformer_options": {}}
    lm = env["lora_model"]
    assert len(lm.patches) == 128 and list(lm.object_patches) == ["model_sampling"]


def test_progress_and_cancel(env):
    comfy = env["comfy"]
    mm = comfy.model_management
    updates = []

    def hook(value, total, preview, node_id=None):
        updates.append((value, total))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        run_node(env, steps=5)
        assert updates == [(i, 5) for i in range(1, 6)]

        def cancel(value, total, preview, node_id=None):
            mm.interrupt_current_processing(True)  # the user presses Cancel during step 1

        comfy.utils.set_progress_bar_global_hook(cancel)
        m, calls = counting(env, env["lora_model"])
        with pytest.raises(mm.InterruptProcessingException):
            run_node(env, model=m, steps=5)
        assert len(calls) == 1
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_stock_lora_loader_measured(env):
    """What ComfyUI's own LoRA loader does with each layout (comfyui.md §5 claims it maps neither)."""
    comfy = env["comfy"]
    official = load_file(env["folder"] / LORA_FILE)
    assert len(official) == 256
    layouts = {
        "official": official,
        "official_unet_prefix": {f"unet.{k}": v for k, v in official.items()},
        "peft_unet_prefix": {},
        "peft_bare": {},
        "peft_base_model": {},
    }
    for name, m in env["lora"].modules.items():
        for prefix, key in (("unet.", "peft_unet_prefix"), ("", "peft_bare"), ("base_model.model.", "peft_base_model")):
            layouts[key][f"{prefix}{name}.lora_A.weight"] = m.down
            layouts[key][f"{prefix}{name}.lora_B.weight"] = m.up
    counts = {
        k: len(comfy_sd().load_lora_for_models(env["base"], None, sd, 1.0, 0)[0].patches) for k, sd in layouts.items()
    }
    assert counts == {
        "official": 128,  # the attention-processor keys ARE mapped (…processor.to_q, …processor.to_out)
        "official_unet_prefix": 128,
        "peft_unet_prefix": 0,  # peft attention keys are not
        "peft_bare": 0,
        "peft_base_model": 0,
    }
    # where the stock loader works, it gives the same weights as ours
    comfy.model_management.load_models_gpu([comfy_sd().load_lora_for_models(env["base"], None, official, 1.0, 0)[0]])
    stock = {k: v.clone() for k, v in env["base"].model.diffusion_model.state_dict().items()}
    comfy.model_management.load_models_gpu([env["lora_model"]])
    ours = env["base"].model.diffusion_model.state_dict()
    assert all(torch.allclose(stock[k], ours[k], atol=1e-6) for k in stock)


def test_peft_layout_through_the_node(env):
    folder = env["folder"] / "dmp" / "peft-tiny"
    folder.mkdir(parents=True)
    sd = {}
    for name, m in env["lora"].modules.items():
        sd[f"unet.{name}.lora_A.weight"] = m.down
        sd[f"unet.{name}.lora_B.weight"] = (m.up / 2).contiguous()
    save_file(sd, folder / "pytorch_lora_weights.safetensors")
    (folder / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')  # scale 2 · up/2 = the same update
    m = env["comfy"].node("UniDense_LoadDMPLora").execute(env["base"], "dmp/peft-tiny/pytorch_lora_weights.safetensors")
    assert rel_err(run_node(env, model=m[0]), core_reference(env)) < 1e-4


def write_lora(env, name, lora):
    save_lora_attn_procs(lora, env["folder"] / "dmp" / name)
    return f"dmp/{name}/pytorch_lora_weights.safetensors"


def test_lora_for_another_base_lists_keys_and_shapes(env):
    other = random_dmp_lora(tiny_sd_unet(cross_attention_dim=48), source="sd2-like")  # wider cross-attention
    name = write_lora(env, "sd2-like", other)
    with pytest.raises(ValueError) as e:  # CheckpointError (a ValueError) of the pack's own module copy
        env["comfy"].node("UniDense_LoadDMPLora").execute(env["base"], name, 1.0)
    msg = str(e.value)
    assert "attn2.to_k" in msg and "(4, 48)" in msg and "(32, 32)" in msg and "Stable Diffusion 1.x" in msg


def test_lora_matching_nothing_is_an_error(env):
    folder = env["folder"] / "dmp" / "nothing"
    folder.mkdir(parents=True)
    flux_like = {
        "double_blocks.0.img_attn.qkv.lora_A.weight": torch.ones(4, 32),
        "double_blocks.0.img_attn.qkv.lora_B.weight": torch.ones(96, 4),
    }
    save_file(flux_like, folder / "pytorch_lora_weights.safetensors")
    name = "dmp/nothing/pytorch_lora_weights.safetensors"
    with pytest.raises(ValueError, match="matches none"):
        env["comfy"].node("UniDense_LoadDMPLora").execute(env["base"], name, 1.0)
    with pytest.raises(FileNotFoundError, match="shinying/dmp"):
        env["comfy"].node("UniDense_LoadDMPLora").execute(env["base"], "dmp/missing.safetensors", 1.0)


def test_bad_sampler_inputs(env):
    with pytest.raises(ValueError, match="channels"):
        run_node(env, latent={"samples": torch.randn(1, 16, H, W)})
    with pytest.raises(ValueError, match="all zeros"):
        run_node(env, latent={"samples": torch.zeros(1, 4, H, W)})
    for steps in (0, 21):
        with pytest.raises(ValueError, match="steps must be"):
            run_node(env, steps=steps)
    with pytest.raises(ValueError, match="variant"):
        run_node(env, variant="ddpm")
    with pytest.raises(ValueError, match="negative"):
        run_node(env, cfg=2.0)
    not_unet = env["comfy"].model_patcher.ModelPatcher(torch.nn.Module(), torch.device("cpu"), torch.device("cpu"))
    not_unet.model.diffusion_model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not a UNet"):
        env["comfy"].node("UniDense_LoadDMPLora").execute(not_unet, LORA_FILE, 1.0)


def test_depth_readout(env):
    node = env["comfy"].node("UniDense_DMPDepthReadout")
    decoded = torch.rand(2, 16, 24, 3)
    img, raw = node.execute(decoded, 8.0, True, "none")
    torch.testing.assert_close(raw, decoded.mean(-1).clamp(min=0) * 8)
    torch.testing.assert_close(img[..., 0], 1 - decoded.mean(-1))  # near (small depth) = white
    img, raw = node.execute(decoded, 0.0, False, "per_image", torch.rand(2, 32, 48, 3))
    assert raw.shape == (2, 32, 48) and img.shape == (2, 32, 48, 3)
    assert raw.amin().item() >= 0 and abs(raw[0].amax().item() - 1) < 0.05


def test_normals_and_image_readouts(env):
    comfy = env["comfy"]
    decoded = torch.rand(1, 8, 8, 3)
    vis, normals = comfy.node("UniDense_DMPNormalsReadout").execute(decoded, False)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(1, 8, 8))
    assert vis.min() >= 0 and vis.max() <= 1
    _, flipped = comfy.node("UniDense_DMPNormalsReadout").execute(decoded, True)
    torch.testing.assert_close(flipped[..., 1], -normals[..., 1])
    out = comfy.node("UniDense_DMPImageReadout").execute(decoded, "albedo", torch.rand(1, 20, 12, 3))[0]
    assert out.shape == (1, 20, 12, 3)
    assert torch.equal(comfy.node("UniDense_DMPImageReadout").execute(decoded, "shading")[0], decoded)


def test_processing_resolution_node(env):
    node = env["comfy"].node("UniDense_ProcessingResolution")
    image = torch.rand(1, 200, 300, 3)
    assert node.execute(image, 512, "shorter")[0].shape == (1, 512, 768, 3)
    assert node.execute(image, 512, "longer")[0].shape == (1, 344, 512, 3)
    assert node.execute(image, 0, "longer")[0].shape == (1, 200, 304, 3)
