"""Standalone MERGE-L pipeline on tiny diffusers models: the official loop and schedule, one FLUX for both jobs."""

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from unidense_core.io.prompt_embeddings import read_prompt_embedding, save_prompt_embedding
from unidense_core.merge.flux_converters import save_flux_converters
from unidense_core.merge.flux_pipeline import FLUX_SCHEDULER, MergeFluxPipeline, calculate_shift, official_sigmas
from unidense_core.tiny import tiny_flux, tiny_flux_converters, tiny_flux_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads


@pytest.fixture(scope="module")
def pipe():
    g = torch.Generator().manual_seed(3)
    empty = (torch.randn(1, 7, 32, generator=g), torch.randn(1, 16, generator=g))  # T5 context, CLIP pooled
    return MergeFluxPipeline(tiny_flux(), tiny_flux_converters(), tiny_flux_vae(), empty_prompt=empty)


def official_loop(pipe, image, steps, seed):
    """``MERGEFluxPipeline.merge_process`` written out with diffusers' scheduler, in packed form (reference)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(seed)
    b = image.shape[0]
    vae = pipe.vae
    z_img = (vae.encode(image * 2 - 1).latent_dist.sample(g) - vae.config.shift_factor) * vae.config.scaling_factor
    h, w = z_img.shape[-2:]

    def pack(z):
        return z.view(b, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, 64)

    def unpack(x):
        return x.view(b, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 16, h, w)

    latents = pack(torch.randn(z_img.shape, generator=g))
    ctx, pooled = pipe.empty_prompt
    sched = FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER)
    seq = latents.shape[1]
    mu = seq * (1.15 - 0.5) / (4096 - 256) + 0.5 - 256 * (1.15 - 0.5) / (4096 - 256)  # calculate_shift
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    for t in sched.timesteps:
        # the model is the MERGE-L forward checked against the official formulas in test_merge_l_core.py
        v = pipe.model(unpack(latents), t.expand(b) / 1000, ctx, pooled, mode="depth", image_latent=z_img)
        latents = sched.step(pack(v), t, latents).prev_sample
    img = vae.decode(unpack(latents) / vae.config.scaling_factor + vae.config.shift_factor).sample
    return (img / 2 + 0.5).clamp(0, 1).mean(dim=1)


def test_depth_matches_official_loop(pipe):
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    ours = pipe.estimate_depth(image, num_inference_steps=3, generator=torch.Generator().manual_seed(7)).depth
    ref = official_loop(pipe, image, 3, 7)
    assert ours.shape == (1, 64, 96)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert 0 <= ours.min() and ours.max() <= 1


def test_official_schedule():
    # mu follows the image's packed token count (methods.md §1.3a: a 16×16 packed image gives 0.4675... at 256 px)
    assert calculate_shift(256) == pytest.approx(0.5)
    assert calculate_shift(4096) == pytest.approx(1.15)
    assert calculate_shift(1024) == pytest.approx(0.63, abs=1e-4)  # 512² px
    s = official_sigmas(20, 1024, 1024)
    assert len(s) == 21 and s[0] == 1.0 and s[-1] == 0.0
    t = torch.linspace(1, 0.05, 20, dtype=torch.float64)
    mu = 1.15
    torch.testing.assert_close(s[:-1].double(), np.exp(mu) / (np.exp(mu) + (1 / t - 1)), rtol=0, atol=1e-6)


def test_sizes_are_floored_to_16(pipe):
    image = torch.rand(1, 3, 40, 72)  # -> 32×64, as the official VaeImageProcessor(16) floors
    depth = pipe.estimate_depth(image, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).depth
    assert depth.shape == (1, 32, 64)
    back = pipe.estimate_depth(
        image, num_inference_steps=1, generator=torch.Generator().manual_seed(0), resize_to_input=True
    ).depth
    assert back.shape == (1, 40, 72)
    with pytest.raises(ValueError, match="at least 16"):
        pipe.estimate_depth(torch.rand(1, 3, 12, 64), num_inference_steps=1)


def test_pil_input_uses_the_official_preprocessing(pipe):
    from PIL import Image

    arr = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    kw = dict(num_inference_steps=2, posterior="mode")
    as_pil = pipe.estimate_depth(Image.fromarray(arr), generator=torch.Generator().manual_seed(4), **kw).depth
    tensor = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    as_tensor = pipe.estimate_depth(tensor, generator=torch.Generator().manual_seed(4), **kw).depth
    assert as_pil.shape == (1, 48, 64)
    torch.testing.assert_close(as_pil, as_tensor, rtol=1e-5, atol=1e-5)


def test_generation_is_the_stock_pipeline(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    g = torch.Generator().manual_seed(5)
    ctx, pooled = torch.randn(1, 4, 32, generator=g), torch.randn(1, 16, generator=g)
    kw = dict(height=64, width=64, num_inference_steps=2, guidance_scale=3.5)
    ours = pipe.generate(
        prompt_embeds=ctx, pooled_prompt_embeds=pooled, generator=torch.Generator().manual_seed(1), **kw
    ).image
    stock = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
        vae=pipe.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=tiny_flux(),
    )
    stock.set_progress_bar_config(disable=True)
    ref = stock(
        prompt_embeds=ctx,
        pooled_prompt_embeds=pooled,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
        **kw,
    ).images
    assert torch.equal(ours, ref)


def test_prompt_embedding_with_pooled_roundtrip(tmp_path):
    ctx, pooled = torch.randn(1, 512, 8), torch.randn(1, 6)
    save_prompt_embedding(tmp_path / "e.safetensors", ctx, prompt="", encoder="clip_l+t5xxl", pooled=pooled)
    e = read_prompt_embedding(tmp_path / "e.safetensors")
    assert torch.equal(e.context, ctx) and torch.equal(e.pooled, pooled) and e.mask is None
    # a MERGE-B file (no pooled) stays readable
    save_prompt_embedding(tmp_path / "b.safetensors", ctx[:, :5], torch.ones(1, 5, dtype=torch.int64))
    assert read_prompt_embedding(tmp_path / "b.safetensors").pooled is None
    with pytest.raises(ValueError, match="pooled must be"):
        save_prompt_embedding(tmp_path / "x.safetensors", ctx, pooled=torch.randn(2, 6))


def test_from_folders_reports_missing_parts(tmp_path):
    from unidense_core.io.checkpoints import CheckpointError

    save_flux_converters(tiny_flux_converters(), tmp_path / "conv")
    save_prompt_embedding(tmp_path / "t5only.safetensors", torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="no pooled CLIP vector"):
        MergeFluxPipeline.from_folders(
            str(tmp_path / "flux"), str(tmp_path / "conv"), str(tmp_path / "t5only.safetensors")
        )
    save_prompt_embedding(tmp_path / "e.safetensors", torch.randn(1, 5, 32), pooled=torch.randn(1, 16))
    with pytest.raises(CheckpointError, match="transformer"):
        MergeFluxPipeline.from_folders(str(tmp_path / "flux"), str(tmp_path / "conv"), str(tmp_path / "e.safetensors"))
    with pytest.raises(ValueError, match="empty prompt"):
        MergeFluxPipeline.from_folders(str(tmp_path / "flux"), str(tmp_path / "conv"))


def test_cli_runs_on_local_folders(tmp_path, pipe):
    """``merge-l-depth`` reads official-layout folders and writes a 16-bit depth PNG equal to the API's result."""
    from PIL import Image

    from unidense_core.cli import main

    pipe.transformer.save_pretrained(tmp_path / "flux" / "transformer")
    pipe.vae.save_pretrained(tmp_path / "flux" / "vae")
    save_flux_converters(pipe.converters, tmp_path / "merge-large-depth-v1" / "depth_converters")
    ctx, pooled = pipe.empty_prompt
    save_prompt_embedding(tmp_path / "empty.safetensors", ctx, pooled=pooled)
    arr = (np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    args = ["merge-l-depth", "--flux", str(tmp_path / "flux"), "--converters", str(tmp_path / "merge-large-depth-v1")]
    args += ["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "d")]
    args += ["--empty-prompt", str(tmp_path / "empty.safetensors"), "--steps", "2", "--dtype", "fp32"]
    assert main(args) == 0
    ref = pipe.estimate_depth(Image.fromarray(arr), 2, generator=torch.Generator().manual_seed(0)).depth[0]
    raw = np.load(tmp_path / "d_depth.npy")
    torch.testing.assert_close(torch.from_numpy(raw), ref, rtol=1e-5, atol=1e-5)
    png = np.asarray(Image.open(tmp_path / "d_depth.png"))
    assert png.dtype == np.uint16 and np.array_equal(png, np.round(np.clip(raw, 0, 1) * 65535).astype(np.uint16))


def test_given_latents_and_image_latents_are_used(pipe):
    """``image_latents`` replace the encoded image and ``latents`` the starting noise: the seeded run, reproduced."""
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    seeded = pipe.estimate_depth(image, 2, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    x = VaeImageProcessor(vae_scale_factor=16, vae_latent_channels=16).preprocess(image, height=32, width=48)
    cfg = pipe.vae.config
    z_img = (pipe.vae.encode(x).latent_dist.sample(g) - cfg.shift_factor) * cfg.scaling_factor
    noise = torch.randn(z_img.shape, generator=g)
    again = pipe.estimate_depth(image_latents=z_img, latents=noise, num_inference_steps=2)
    assert torch.equal(again.depth, seeded.depth) and torch.equal(again.latents, seeded.latents)
    other = pipe.estimate_depth(image_latents=z_img, latents=torch.randn_like(noise), num_inference_steps=2)
    assert not torch.allclose(other.depth, seeded.depth)
    assert seeded.depth_kind.startswith("affine-invariant depth")
    with pytest.raises(ValueError, match="latents must have the image latent's shape"):
        pipe.estimate_depth(image_latents=z_img, latents=noise[..., :2], num_inference_steps=1)
    with pytest.raises(ValueError, match="not both"):
        pipe.estimate_depth(image, image_latents=z_img, num_inference_steps=1)
