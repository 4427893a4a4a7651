"""JointNet channel-wise inpainting and generation loops (core): masks, presets, RePaint blend, official loop parity."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from unidense_core.dense.readout import depth_to_uint16, quantile_normalize, save_depth_png16
from unidense_core.jointnet.inpaint import (
    as_mask,
    channel_mask,
    join_rgbd,
    latent_mask,
    masked_condition,
    preset_masks,
    split_rgbd,
)
from unidense_core.jointnet.pipeline import (
    SD21_BASE_SCHEDULER,
    JointNetPipeline,
    ddim_inpaint,
    guided_eps,
)
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet, tiny_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads

H = W = 64  # pixels; latent 8×8
STEPS = 3


@pytest.fixture(scope="module")
def models():
    return {
        "inp": random_jointnet(TINY_SD21_UNET, True, seed=11),
        "gen": random_jointnet(TINY_SD21_UNET, False, seed=13),
    }


def sched():
    return DDIMScheduler.from_config(SD21_BASE_SCHEDULER)


def embeds(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, 32, generator=g), torch.randn(b, 5, 32, generator=g)


def region_masks(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    m_rgb = torch.zeros(b, 1, 8, 8)
    m_rgb[..., 2:6, 1:5] = 1
    m_d = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).float()
    return m_rgb, m_d


class Spy:
    """Records what the loop feeds the model; delegates to it."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.latent_channels = model.latent_channels

    def __call__(self, z, t, ctx, masked=None):
        self.calls.append((z.clone(), t))
        return self.model(z, t, ctx, masked)


# ----------------------------------------------------------------------------------------------------------
# Masks and presets


def test_presets_channel_mask_and_masked_condition():
    m_rgb, m_d = preset_masks("rgb2j", 2, (8, 8))
    assert not m_rgb.any() and m_d.all()
    m_rgb, m_d = preset_masks("j2rgb", 1, (8, 8))
    assert m_rgb.all() and not m_d.any()
    m_rgb, m_d = region_masks(2)
    cm = channel_mask(m_rgb, m_d)
    assert cm.shape == (2, 8, 8, 8)
    assert torch.equal(cm[:, :4], m_rgb.expand(-1, 4, -1, -1)) and torch.equal(cm[:, 4:], m_d.expand(-1, 4, -1, -1))
    z = torch.randn(2, 8, 8, 8)
    mc = masked_condition(m_rgb, z[:, :4], m_d, z[:, 4:])
    ref = torch.cat([m_rgb, (m_rgb < 0.5) * z[:, :4], m_d, (m_d < 0.5) * z[:, 4:]], 1)  # official prepare_mask_latents
    assert torch.equal(mc, ref)
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_masks("rgb2depth", 1, (8, 8))


def test_latent_mask_is_official_binarise_then_nearest():
    g = torch.Generator().manual_seed(0)
    pixel = torch.rand(2, 1, 64, 48, generator=g)
    ref = pixel.clone()
    ref[ref < 0.5], ref[ref >= 0.5] = 0, 1  # prepare_mask_and_masked_image
    ref = F.interpolate(ref, size=(8, 6))  # prepare_mask_latents (default mode: nearest)
    assert torch.equal(latent_mask(pixel[:, 0], (8, 6)), ref)  # ComfyUI-style [B,H,W] input
    assert torch.equal(latent_mask(ref, (8, 6)), ref)  # already latent-sized: only binarised
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        as_mask(pixel * 3, "mask_rgb")
    with pytest.raises(ValueError, match="mask_depth must be"):
        as_mask(torch.zeros(1, 2, 8, 8), "mask_depth")


def test_join_and_split_check_channels():
    rgb, depth = torch.randn(2, 4, 8, 8), torch.randn(1, 4, 8, 8)
    joint = join_rgbd(rgb, depth)
    assert joint.shape == (2, 8, 8, 8) and torch.equal(split_rgbd(joint)[1][1], depth[0])
    with pytest.raises(ValueError, match="joint RGB-D latent already"):
        join_rgbd(joint, depth)
    with pytest.raises(ValueError, match="a plain latent: nothing to split"):
        split_rgbd(rgb)
    with pytest.raises(ValueError, match="rgb latent is"):
        join_rgbd(rgb, torch.randn(2, 4, 8, 6))


# ----------------------------------------------------------------------------------------------------------
# The inpainting loop


def official_inpaint_loop(model, s, init, m_rgb, m_d, noise, cond, uncond, guidance, steps, strength, masked):
    """The denoising loop of jointnet_inpaint_pipeline.__call__ (steps 5-9), written from the official text."""
    s.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = s.timesteps[t_start * s.order :]
    latents = noise * s.init_noise_sigma if strength == 1.0 else s.add_noise(init, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        lmi = torch.cat([latents] * 2)
        pred = model(lmi, t, torch.cat([uncond, cond]), torch.cat([masked] * 2))
        u, c = pred.chunk(2)
        pred = u + guidance * (c - u)
        latents = s.step(pred, t, latents, return_dict=False)[0]
        proper = init[:1]
        init_mask = torch.cat([m_rgb[:1].repeat(1, 4, 1, 1), m_d[:1].repeat(1, 4, 1, 1)], dim=1)
        if i < len(timesteps) - 1:
            proper = s.add_noise(proper, noise, torch.tensor([timesteps[i + 1]]))
        latents = (1 - init_mask) * proper + init_mask * latents
    return latents


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_loop_matches_official(models, strength):
    model = models["inp"]
    g = torch.Generator().manual_seed(3)
    init, noise = torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 8, 8, 8, generator=g)
    m_rgb, m_d = region_masks()
    masked = masked_condition(m_rgb, init[:, :4], m_d, init[:, 4:])
    cond, uncond = embeds()
    with torch.no_grad():
        ours = ddim_inpaint(
            model, sched(), init, channel_mask(m_rgb, m_d), noise, cond, uncond, 7.5, 6, strength, masked
        )
        ref = official_inpaint_loop(model, sched(), init, m_rgb, m_d, noise, cond, uncond, 7.5, 6, strength, masked)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("preset", ["rgb2j", "j2rgb", "custom"])
def test_kept_channels_are_bit_identical_every_step(models, preset):
    s = sched()
    g = torch.Generator().manual_seed(4)
    init, noise = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 8, 8, generator=g)
    m_rgb, m_d = region_masks(2) if preset == "custom" else preset_masks(preset, 2, (8, 8))
    cm = channel_mask(m_rgb, m_d)
    seen = []
    ddim_inpaint(
        models["inp"],
        s,
        init,
        cm,
        noise,
        *embeds(2),
        7.5,
        STEPS,
        1.0,
        masked_condition(m_rgb, init[:, :4], m_d, init[:, 4:]),
        callback=lambda i, t, z: seen.append(z.clone()),
    )
    keep = cm < 0.5
    ts = s.timesteps
    for i, z in enumerate(seen):
        known = init if i == len(seen) - 1 else s.add_noise(init, noise, ts[i + 1 : i + 2])
        assert torch.equal(z[keep], known[keep]), f"step {i}"
    assert torch.equal(seen[-1][keep], init[keep])
    assert (seen[-1][~keep] - init[~keep]).abs().max() > 0.1  # the generated channels were generated


def test_strength_runs_the_last_steps_from_the_noised_input(models):
    s = sched()
    g = torch.Generator().manual_seed(5)
    init, noise = torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 8, 8, 8, generator=g)
    spy = Spy(models["gen"])
    m_rgb, m_d = preset_masks("rgb2j", 1, (8, 8))
    ddim_inpaint(spy, s, init, channel_mask(m_rgb, m_d), noise, embeds()[0], None, 1.0, 10, 0.45)
    assert [int(t) for _, t in spy.calls] == [int(t) for t in s.timesteps[-4:]]  # int(10 · 0.45) = 4 steps
    assert torch.equal(spy.calls[0][0], s.add_noise(init, noise, s.timesteps[-4:-3]))
    with pytest.raises(ValueError, match="leaves no step"):
        ddim_inpaint(spy, s, init, channel_mask(m_rgb, m_d), noise, embeds()[0], None, 1.0, 10, 0.05)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        ddim_inpaint(spy, s, init, channel_mask(m_rgb, m_d), noise, embeds()[0], None, 1.0, 10, 1.5)


def test_official_ddim_schedule():
    s = sched()
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(981, 0, -20))  # leading spacing, steps_offset 1
    assert s.final_alpha_cumprod == s.alphas_cumprod[0]  # set_alpha_to_one False


def test_cfg_batches_uncond_then_cond(models):
    spy = Spy(models["gen"])
    z, (cond, uncond) = torch.randn(1, 8, 8, 8), embeds()
    with torch.no_grad():
        eps = guided_eps(spy, z, torch.tensor(500), cond, uncond, 7.5)
        e_u, e_c = models["gen"](z, 500, uncond), models["gen"](z, 500, cond)
    torch.testing.assert_close(eps, e_u + 7.5 * (e_c - e_u), rtol=1e-4, atol=1e-4)  # batch-size fp noise × 7.5


# ----------------------------------------------------------------------------------------------------------
# The standalone pipeline (tiny VAE, prompt embeddings given)


@pytest.fixture(scope="module")
def pipes(models):
    vae = tiny_vae()
    return {k: JointNetPipeline(m, vae) for k, m in models.items()}


def images(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, H, W, generator=g), torch.rand(b, 1, H, W, generator=g)


def test_image_to_depth_keeps_the_image_latent(pipes):
    pipe = pipes["inp"]
    image, _ = images()
    cond, uncond = embeds()
    final = []
    out = pipe.inpaint(
        image=image,
        preset="rgb2j",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(9),
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        callback=lambda i, t, z: final.append(z),
    )
    g = torch.Generator().manual_seed(9)  # official RNG order: image posterior sample first
    z_img = pipe.encode_image(image * 2 - 1, g)
    assert torch.equal(final[-1][:, :4], z_img) and torch.equal(out.latents, final[-1])
    assert out.image.shape == (1, 3, H, W) and out.depth.shape == (1, H, W)
    assert torch.equal(out.depth, out.depth_decoded[:, 0])  # read-out: channel 0
    assert 0 <= out.depth.min() and out.depth.max() <= 1


def test_depth_to_image_keeps_the_depth_latent(pipes):
    pipe = pipes["inp"]
    _, depth = images(seed=1)
    final = []
    pipe.inpaint(
        depth=depth,
        preset="j2rgb",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(2),
        prompt_embeds=embeds()[0],
        negative_prompt_embeds=embeds()[1],
        callback=lambda i, t, z: final.append(z),
    )
    g = torch.Generator().manual_seed(2)
    pipe.encode_image(torch.full((1, 3, H, W), -1.0), g)  # the (black) image input is encoded first
    z_depth = pipe.encode_image(depth.expand(-1, 3, -1, -1) * 2 - 1, g)
    assert torch.equal(final[-1][:, 4:], z_depth)


def test_free_masks_and_bad_inputs(pipes):
    pipe = pipes["inp"]
    image, depth = images()
    cond, uncond = embeds()
    kw = dict(num_inference_steps=2, prompt_embeds=cond, negative_prompt_embeds=uncond)
    m = torch.zeros(1, H, W)
    m[:, 16:40, 8:48] = 1
    out = pipe.inpaint(image=image, depth=depth, mask_rgb=m, mask_depth=m, strength=0.9, **kw)
    assert out.latents.shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"mask_rgb is 32×32 but the input image is 64×64"):
        pipe.inpaint(image=image, depth=depth, mask_rgb=torch.zeros(1, 32, 32), mask_depth=m, **kw)
    with pytest.raises(ValueError, match="needs both `mask_rgb` and `mask_depth`"):
        pipe.inpaint(image=image, depth=depth, mask_rgb=m, **kw)
    with pytest.raises(ValueError, match="`depth` is missing but its mask keeps some of it"):
        pipe.inpaint(image=image, mask_rgb=m, mask_depth=m, **kw)
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe.inpaint(image=image[..., :60], preset="rgb2j", **kw)
    with pytest.raises(ValueError, match="depth is 48×64 but the other input is 64×64"):
        pipe.inpaint(image=image, depth=depth[..., :48], preset="rgb2j", **kw)


def test_preset_on_generation_model_is_the_documented_fallback(pipes, caplog):
    pipe = pipes["gen"]
    image, _ = images()
    final = []
    with caplog.at_level(logging.WARNING):
        pipe.inpaint(
            image=image,
            preset="rgb2j",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            prompt_embeds=embeds()[0],
            negative_prompt_embeds=embeds()[1],
            callback=lambda i, t, z: final.append(z),
        )
    assert "RePaint blend alone" in caplog.text
    z_img = pipe.encode_image(image * 2 - 1, torch.Generator().manual_seed(0))
    assert torch.equal(final[-1][:, :4], z_img)


def test_generate_is_seeded_and_reads_channel_0(pipes):
    cond, uncond = embeds()
    kw = dict(num_inference_steps=2, prompt_embeds=cond, negative_prompt_embeds=uncond, height=H, width=W)
    a = pipes["gen"].generate(generator=torch.Generator().manual_seed(1), **kw)
    b = pipes["gen"].generate(generator=torch.Generator().manual_seed(1), **kw)
    c = pipes["gen"].generate(generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    assert a.latents.shape == (1, 8, 8, 8) and torch.equal(a.depth, a.depth_decoded[:, 0])
    with pytest.raises(ValueError, match="multiples of 8"):
        pipes["gen"].generate(prompt_embeds=cond, height=60, num_inference_steps=1)
    with pytest.raises(ValueError, match="8-channel RGB-D latent"):
        pipes["gen"].decode(torch.zeros(1, 4, 8, 8))


def test_inpaint_noise_latents_and_image_latents(pipes):
    pipe = pipes["inp"]
    image, depth = images(seed=3)
    m = torch.zeros(1, H, W)
    m[:, 8:40, 16:56] = 1
    kw = dict(
        image=image,
        depth=depth,
        mask_rgb=m,
        mask_depth=1 - m,
        num_inference_steps=STEPS,
        prompt_embeds=embeds()[0],
        negative_prompt_embeds=embeds()[1],
    )
    a = pipe.inpaint(generator=torch.Generator().manual_seed(6), **kw)
    g = torch.Generator().manual_seed(6)  # official order: image posterior, depth posterior, then noise
    z = torch.cat([pipe.encode_image(image * 2 - 1, g), pipe.encode_image(depth.expand(-1, 3, -1, -1) * 2 - 1, g)], 1)
    noise = torch.randn(z.shape, generator=g)
    b = pipe.inpaint(noise=noise, image_latents=z, **kw)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.depth, b.depth)
    # strength < 1: `noise` starts from add_noise(inputs, noise, t_0); the official `latents` start from the tensor
    first, inputs = {}, []
    hook = pipe.model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    try:
        for name in ("noise", "latents"):
            inputs.clear()
            pipe.inpaint(strength=0.5, image_latents=z, guidance_scale=1.0, **{name: noise}, **kw)
            first[name] = inputs[0]
    finally:
        hook.remove()
    s = sched()
    s.set_timesteps(STEPS)
    t0 = s.timesteps[STEPS - int(STEPS * 0.5) :][:1]
    assert torch.equal(first["noise"], s.add_noise(z, noise, t0))
    assert torch.equal(first["latents"], noise)
    with pytest.raises(ValueError, match="not both"):
        pipe.inpaint(noise=noise, latents=noise, **kw)
    with pytest.raises(ValueError, match=r"noise has shape \(1, 8, 4, 4\)"):
        pipe.inpaint(noise=noise[..., :4, :4], **kw)


# ----------------------------------------------------------------------------------------------------------
# Read-out and 16-bit export


def test_quantile_normalize_and_uint16_export(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 16, 12, generator=g) * 0.5 + 0.2
    n = quantile_normalize(d)
    for i in range(2):
        lo, hi = np.quantile(d[i].numpy(), [0.01, 0.99])
        np.testing.assert_allclose(n[i].numpy(), np.clip((d[i].numpy() - lo) / (hi - lo), 0, 1), atol=1e-5)
    codes = depth_to_uint16(torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1]))
    assert codes.to(torch.int32).tolist() == [0, 32768, 65535, 65535, 0]
    path = save_depth_png16(n[0], str(tmp_path / "depth.png"))
    back = np.array(Image.open(path))
    assert back.dtype == np.uint16 and back.shape == (16, 12)
    assert np.array_equal(back, np.round(n[0].numpy() * 65535).astype(np.uint16))
