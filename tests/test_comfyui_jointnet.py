"""JointNet in a real ComfyUI: the 8-channel MODEL, parity with the core forward, channel inpainting in stock samplers.

Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import logging
import os

import pytest
import torch
from comfy_tiny import comfy_vae

from unidense_core.jointnet.inpaint import channel_mask, masked_condition
from unidense_core.jointnet.model import load_jointnet, save_jointnet
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet, tiny_sd21_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads

H = W = 8  # latent side
SCALE = 0.18215
NODE_IDS = (
    "UniDense_JointNetLoader",
    "UniDense_ChannelInpaintRGBD",
    "UniDense_SplitRGBDLatent",
    "UniDense_JoinRGBDLatent",
    "UniDense_JointNetDepthDecode",
)


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    root = tmp_path_factory.mktemp("jointnet_models")
    comfy.folder_paths.add_model_folder_path("jointnet", str(root), is_default=True)
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=3), root / "rgbd_finetune", safe_serialization=False)
    save_jointnet(random_jointnet(TINY_SD21_UNET, True, seed=5), root / "rgbd_inpaint")
    loader = comfy.node("UniDense_JointNetLoader")
    return dict(
        comfy=comfy,
        root=root,
        gen=loader.execute("rgbd_finetune", "fp32")[0],
        inp=loader.execute("rgbd_inpaint", "fp32")[0],
        core_gen=load_jointnet(root / "rgbd_finetune"),
        core_inp=load_jointnet(root / "rgbd_inpaint"),
    )


def cond(seed=0):
    return [[torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def joint_eps(comfy, model, x, t, ctx):
    """What BaseModel._apply_model hands the network: the RGB UNet's forward, through the model's wrappers."""
    import comfy.patcher_extension as pe

    comfy.model_management.load_models_gpu([model, *model.get_nested_additional_models()])
    options = {"wrappers": pe.copy_nested_dicts(model.wrappers)}
    with torch.no_grad():
        return model.model.diffusion_model(x, t, context=ctx, transformer_options=options)


def ksampler(comfy, model, latent, positive, negative, sampler="euler", steps=3, cfg=7.5, denoise=1.0, callback=None):
    """The stock KSampler path (nodes.common_ksampler minus the preview), with an optional x0 callback."""
    z = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(z, 0)
    return comfy.sample.sample(
        model,
        noise,
        steps,
        cfg,
        sampler,
        "ddim_uniform",
        positive,
        negative,
        z,
        denoise=denoise,
        noise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=True,
        seed=0,
    )


# ----------------------------------------------------------------------------------------------------------
# Registration and loading


def test_nodes_register_with_tooltips(comfy):
    for node_id in NODE_IDS:
        info = comfy.node(node_id).GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"] == "UniDense/JointNet"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def _jointnet_module():
    import sys

    return next(m for k, m in sys.modules.items() if k.endswith("nodes.jointnet") and hasattr(m, "jointnet_models"))


def test_loader_lists_folders_and_errors(env):
    comfy, root = env["comfy"], env["root"]
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), root / "zips" / "rgbd_other")  # nested zip layout
    names = _jointnet_module().jointnet_models()
    assert {"rgbd_finetune", "rgbd_inpaint", "zips/rgbd_other"} <= set(names)
    loader = comfy.node("UniDense_JointNetLoader")
    with pytest.raises(FileNotFoundError, match="rgbd_finetune_sd21b.zip"):
        loader.execute("missing_model", "auto")
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), root / "plain")
    tiny_sd21_unet().save_pretrained(root / "plain" / "unet", safe_serialization=True)
    with pytest.raises(ValueError, match=r"no 'jointnet_\*' exchange weights"):
        loader.execute("plain", "auto")


def test_both_branches_follow_model_management(env):
    comfy, m = env["comfy"], env["inp"]
    (depth,) = m.get_additional_models()
    assert isinstance(depth, comfy.model_patcher.ModelPatcher)
    comfy.model_management.load_models_gpu([m, *m.get_nested_additional_models()])
    loaded = {id(lm.model) for lm in comfy.model_management.current_loaded_models}
    assert id(m) in loaded and id(depth) in loaded
    assert m.model.jointnet_exchange.jointnet_masked_latent_conv is not None  # RGB exchange is the RGB model's
    fp16 = comfy.node("UniDense_JointNetLoader").execute("rgbd_inpaint", "fp16")[0]
    d16 = fp16.get_additional_models()[0].model
    assert fp16.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float16
    assert d16.diffusion_model.input_blocks[0][0].weight.dtype == torch.float16
    assert d16.jointnet_exchange.jointnet_mid_block.weight.dtype == torch.float16


# ----------------------------------------------------------------------------------------------------------
# The joint forward


@pytest.mark.parametrize("size", [(8, 8), (9, 12)])
def test_joint_forward_equals_core(env, size):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 8, *size, generator=g), torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([537.0, 81.0])
    ours = joint_eps(env["comfy"], env["gen"], x, t, ctx)
    with torch.no_grad():
        ref = torch.cat([env["core_gen"](x[i : i + 1], t[i], ctx[i : i + 1]) for i in range(2)])
    assert ours.shape == (2, 8, *size)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_masked_latent_forward_equals_core(env):
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 8, H, W, generator=g), torch.randn(2, 5, 32, generator=g)
    m_rgb = (torch.rand(2, 1, H, W, generator=g) > 0.5).float()
    z0 = torch.randn(2, 8, H, W, generator=g)
    masked = masked_condition(m_rgb, z0[:, :4], 1 - m_rgb, z0[:, 4:])
    t = torch.tensor([300.0, 300.0])
    ours = joint_eps(env["comfy"], env["inp"], torch.cat([x, masked], 1), t, ctx)  # c_concat comes last
    plain = joint_eps(env["comfy"], env["inp"], x, t, ctx)
    with torch.no_grad():
        ref = env["core_inp"](x, torch.tensor(300), ctx, masked)
        ref_plain = env["core_inp"](x, torch.tensor(300), ctx)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, ref_plain, rtol=1e-4, atol=1e-4)


def test_config_norm_groups_and_eps_are_carried(env):
    """ComfyUI's UNetModel hard-codes GroupNorm(32) and eps 1e-5; a config with other values must load and match the
    diffusers branches (16 channels cannot even be split into 32 groups)."""
    comfy, root = env["comfy"], env["root"]
    cfg = dict(TINY_SD21_UNET, block_out_channels=(16, 32), attention_head_dim=(1, 2), norm_num_groups=8, norm_eps=1e-3)
    save_jointnet(random_jointnet(cfg, True, seed=9), root / "groups8")
    model = comfy.node("UniDense_JointNetLoader").execute("groups8", "fp32")[0]
    norms = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 for m in norms)
    assert {m.eps for m in norms} == {1e-3, 1e-6}  # ResNets/output: the config's eps; attention: 1e-6 (diffusers)
    g = torch.Generator().manual_seed(6)
    x, ctx = torch.randn(1, 8, H, W, generator=g), torch.randn(1, 5, 32, generator=g)
    ours = joint_eps(comfy, model, x, torch.tensor([400.0]), ctx)
    with torch.no_grad():
        ref = load_jointnet(root / "groups8")(x, torch.tensor(400), ctx)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# 8-channel latents in stock sampling


def test_empty_latent_is_widened_and_sampled(env):
    comfy, m = env["comfy"], env["gen"]
    assert m.get_model_object("latent_format").latent_channels == 8
    assert m.get_model_object("latent_format").scale_factor == pytest.approx(SCALE)
    empty = comfy.nodes.NODE_CLASS_MAPPINGS["EmptyLatentImage"]().generate(64, 64, 1)[0]
    assert empty["samples"].shape[1] == 4  # ComfyUI's empty latent: widened by fix_empty_latent_channels
    (out,) = comfy.nodes.common_ksampler(m, 0, 2, 7.5, "euler", "ddim_uniform", cond(), cond(1), empty)
    assert out["samples"].shape == (1, 8, H, W) and torch.isfinite(out["samples"]).all()
    import latent_preview

    preview = latent_preview.Latent2RGBPreviewer(m.model.latent_format.latent_rgb_factors)
    assert preview.decode_latent_to_preview(out["samples"] * SCALE).size == (W, H)  # RGB half, no crash


def test_wrong_channel_counts_are_clear_errors(env):
    comfy, m = env["comfy"], env["gen"]
    plain = {"samples": torch.randn(1, 4, H, W)}  # e.g. a VAEEncode result fed to the joint model
    with pytest.raises(ValueError, match=r"got a 4-channel latent.*8-channel RGB-D"):
        ksampler(comfy, m, plain, cond(), cond(1), steps=1)
    c = cond()
    c[0][1]["noise_concat"] = torch.zeros(1, 10, H, W)
    with pytest.raises(ValueError, match="Only the inpainting model takes a conditioning"):
        ksampler(comfy, m, {"samples": torch.zeros(1, 8, H, W)}, c, c, steps=1)


# ----------------------------------------------------------------------------------------------------------
# Channel inpainting through stock samplers


def inpaint(env, model_key, preset, latent, **kw):
    node = env["comfy"].node("UniDense_ChannelInpaintRGBD")
    return node.execute(env[model_key], cond(), cond(1), preset, rgbd_latent={"samples": latent}, **kw).args


@pytest.mark.parametrize("model_key", ["inp", "gen"])
@pytest.mark.parametrize("preset", ["rgb2j", "j2rgb", "custom"])
@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_kept_channels_are_bit_identical_through_stock_sampler(env, model_key, preset, sampler):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 8, H, W, generator=g)
    kw = {}
    if preset == "custom":
        mask = torch.zeros(1, 8 * H, 8 * W)
        mask[:, 16:40, 8:48] = 1  # pixel-size region: regenerate it in both modalities
        kw = dict(rgb_mask=mask, depth_mask=mask)
    model, pos, neg, latent = inpaint(env, model_key, preset, z, **kw)
    x0s = []
    out = ksampler(env["comfy"], model, latent, pos, neg, sampler, callback=lambda i, x0, x, n: x0s.append(x0.clone()))
    keep = channel_mask(*_masks(preset, kw)) < 0.5
    for i, x0 in enumerate(x0s):  # every step's denoised value keeps the known channels (model space)
        assert torch.equal(x0[keep], (latent["samples"] * SCALE)[keep]), f"step {i}"
    assert torch.equal(out[keep], latent["samples"][keep])  # the result is the input, bit for bit
    assert (out[~keep] - latent["samples"][~keep]).abs().max() > 0.05  # the rest was generated
    if preset == "rgb2j":
        assert torch.equal(out[:, :4], z[:, :4])


def _masks(preset, kw):
    from unidense_core.jointnet.inpaint import latent_mask, preset_masks

    if preset != "custom":
        return preset_masks(preset, 1, (H, W))
    return latent_mask(kw["rgb_mask"], (H, W)), latent_mask(kw["depth_mask"], (H, W))


def test_masked_latent_conditioning_reaches_the_joint_forward(env):
    import comfy.patcher_extension as pe

    z = torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(3))
    model, pos, neg, latent = inpaint(env, "inp", "rgb2j", z)
    m_rgb, m_d = torch.zeros(1, 1, H, W), torch.ones(1, 1, H, W)
    expected = masked_condition(m_rgb, z[:, :4] * SCALE, m_d, torch.zeros(1, 4, H, W))
    assert torch.equal(pos[0][1]["noise_concat"], expected) and torch.equal(neg[0][1]["noise_concat"], expected)
    seen = []

    def spy(executor, x, *args, **kwargs):
        seen.append(x[:, 8:].clone())
        return executor(x, *args, **kwargs)

    spied = model.clone()
    spied.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    ksampler(env["comfy"], spied, latent, pos, neg, steps=2)
    assert seen and all(s.shape[1] == 10 and torch.equal(s, expected.expand_as(s)) for s in seen)


def test_generation_model_preset_is_the_documented_fallback(env, caplog):
    z = torch.randn(1, 8, H, W)
    with caplog.at_level(logging.WARNING):
        _, pos, _, latent = inpaint(env, "gen", "rgb2j", z)
    assert "RePaint blend alone" in caplog.text and "noise_concat" not in pos[0][1]
    assert latent["noise_mask"].shape == (1, 1, H, W) and latent["noise_mask"].all()


def test_channel_inpaint_bad_inputs(env):
    comfy = env["comfy"]
    node = comfy.node("UniDense_ChannelInpaintRGBD")
    z = torch.randn(1, 8, H, W)
    with pytest.raises(ValueError, match="needs the JointNet MODEL"):
        node.execute(comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), "cpu", "cpu"), cond(), cond(), "rgb2j")
    with pytest.raises(ValueError, match=r"rgb_mask is 30×30, but it must be 64×64 or 8×8 \(the size"):
        inpaint(env, "inp", "custom", z, rgb_mask=torch.ones(1, 30, 30))
    with pytest.raises(ValueError, match="needs rgb_mask and/or depth_mask"):
        inpaint(env, "inp", "custom", z)
    with pytest.raises(ValueError, match="a plain latent"):
        inpaint(env, "inp", "rgb2j", torch.randn(1, 4, H, W))
    with pytest.raises(ValueError, match="preset 'rgb2j' needs the image"):
        node.execute(env["inp"], cond(), cond(), "rgb2j", vae=None, depth=torch.rand(1, 64, 64, 3))
    with pytest.raises(ValueError, match="needs the vae"):
        node.execute(env["inp"], cond(), cond(), "rgb2j", image=torch.rand(1, 64, 64, 3))
    vae = comfy_vae(comfy)
    with pytest.raises(ValueError, match="multiples of 8"):
        node.execute(env["inp"], cond(), cond(), "rgb2j", vae=vae, image=torch.rand(1, 60, 64, 3))
    with pytest.raises(ValueError, match=r"rgb_mask is 32×32, but it must be 64×64 or 8×8"):
        node.execute(
            env["inp"], cond(), cond(), "custom", vae=vae, image=torch.rand(1, 64, 64, 3),
            depth=torch.rand(1, 64, 64, 3), rgb_mask=torch.ones(1, 32, 32),
        )  # fmt: skip
    with pytest.raises(ValueError, match="No depth was given, but its mask keeps part of it"):
        node.execute(
            env["inp"],
            cond(),
            cond(),
            "custom",
            vae=vae,
            image=torch.rand(1, 64, 64, 3),
            rgb_mask=torch.ones(1, 64, 64),
        )
    # the input MODEL is never changed
    assert "denoise_mask_function" not in env["inp"].model_options


def test_image_inputs_are_encoded_with_the_vae(env):
    comfy = env["comfy"]
    vae = comfy_vae(comfy)
    image, depth = torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3)
    node = comfy.node("UniDense_ChannelInpaintRGBD")
    _, _, _, latent = node.execute(env["inp"], cond(), cond(), "rgb2j", vae=vae, image=image).args
    assert torch.equal(latent["samples"][:, :4], vae.encode(image)) and not latent["samples"][:, 4:].any()
    _, _, _, latent = node.execute(env["inp"], cond(), cond(), "j2rgb", vae=vae, depth=depth, depth_near_white=False)
    assert torch.equal(latent["samples"][:, 4:], vae.encode(1 - depth)) and not latent["samples"][:, :4].any()


# ----------------------------------------------------------------------------------------------------------
# Latent helpers and the depth read-out


def test_split_join_and_depth_decode(env, tmp_path):
    import numpy as np
    from PIL import Image

    comfy = env["comfy"]
    z = {"samples": torch.randn(2, 8, H, W), "batch_index": [3, 4]}
    rgb, depth = comfy.node("UniDense_SplitRGBDLatent").execute(z).args
    assert torch.equal(rgb["samples"], z["samples"][:, :4]) and depth["batch_index"] == [3, 4]
    (joined,) = comfy.node("UniDense_JoinRGBDLatent").execute(rgb, depth).args
    assert torch.equal(joined["samples"], z["samples"])
    with pytest.raises(ValueError, match="joint RGB-D latent already"):
        comfy.node("UniDense_JoinRGBDLatent").execute(joined, depth)
    with pytest.raises(ValueError, match="nothing to split"):
        comfy.node("UniDense_SplitRGBDLatent").execute(rgb)
    vae = comfy_vae(comfy)
    dec = comfy.node("UniDense_JointNetDepthDecode")
    image, raw = dec.execute(vae, z, True, "none").args
    ref = vae.decode(z["samples"][:, 4:])[..., 0]
    torch.testing.assert_close(raw, ref)
    torch.testing.assert_close(image[..., 1], raw)  # disparity shown as is: near = white
    image_dark, raw4 = dec.execute(vae, depth, False, "none").args  # a 4-channel depth latent works too
    torch.testing.assert_close(raw4, raw)
    torch.testing.assert_close(image_dark[..., 0], 1 - raw)
    q, _ = dec.execute(vae, z, True, "quantile").args
    assert q.min() == 0 and q.max() == 1
    comfy.folder_paths.set_output_directory(str(tmp_path))
    (first,) = comfy.node("UniDense_SaveDepth16").execute(raw, "jn/depth", False).args
    saved = np.array(Image.open(os.path.join(tmp_path, first)))
    assert saved.dtype == np.uint16 and np.array_equal(saved, np.round(raw[0].detach().clamp(0, 1).numpy() * 65535))
