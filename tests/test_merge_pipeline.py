"""Standalone MERGE pipeline on tiny diffusers models: official loop, one model for both jobs."""

import pytest
import torch

from unidense_core.io.prompt_embeddings import load_prompt_embedding, save_prompt_embedding
from unidense_core.merge.converters import save_converters
from unidense_core.merge.pipeline import MergePipeline
from unidense_core.tiny import tiny_converters, tiny_pixart, tiny_vae


@pytest.fixture(scope="module")
def pipe():
    g = torch.Generator().manual_seed(3)
    empty = (torch.randn(1, 6, 32, generator=g), torch.tensor([[1, 0, 0, 0, 0, 0]]))
    return MergePipeline(tiny_pixart(), tiny_converters(), tiny_vae(), empty_prompt=empty)


def official_loop(pipe, image, steps, seed, z=None, z_img=None):
    """The official merge_process loop written out with diffusers' scheduler (reference)."""
    from diffusers import DPMSolverMultistepScheduler

    g = torch.Generator().manual_seed(seed)
    x = image * 2 - 1
    if z_img is None:
        z_img = pipe.vae.encode(x).latent_dist.sample(g) * 0.18215
    if z is None:
        z = torch.randn(z_img.shape, generator=g)
    ctx, mask = pipe.empty_prompt
    sched = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=1e-4, beta_end=0.02, algorithm_type="dpmsolver++", lower_order_final=True
    )
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = pipe.model(z, t.expand(1), ctx, mask, mode="depth", image_latent=z_img)
        z = sched.step(out.chunk(2, dim=1)[0], t, z).prev_sample
    img = pipe.vae.decode(z / 0.18215).sample
    return (img / 2 + 0.5).clamp(0, 1).mean(dim=1)


def test_depth_matches_official_loop(pipe):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = pipe.estimate_depth(
        image, num_inference_steps=3, generator=torch.Generator().manual_seed(7), resolution_binning=False
    ).depth
    ref = official_loop(pipe, image, 3, 7)
    assert ours.shape == (1, 64, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert 0 <= ours.min() and ours.max() <= 1


def test_given_latents_and_image_latents_are_used(pipe):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kw = dict(num_inference_steps=2, resolution_binning=False)
    a = pipe.estimate_depth(image, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.depth, pipe.estimate_depth(image, generator=torch.Generator().manual_seed(4), **kw).depth)
    g = torch.Generator().manual_seed(4)  # the official order: posterior sample, then the starting noise
    z_img = pipe.vae.encode(image * 2 - 1).latent_dist.sample(g) * 0.18215
    noise = torch.randn(z_img.shape, generator=g)
    b = pipe.estimate_depth(image, latents=noise, image_latents=z_img, **kw)
    assert torch.equal(b.depth, a.depth) and torch.equal(b.latents, a.latents)
    other = torch.randn(z_img.shape, generator=torch.Generator().manual_seed(8))
    c = pipe.estimate_depth(None, latents=other, image_latents=z_img, **kw)  # no image: the latent's size
    torch.testing.assert_close(c.depth, official_loop(pipe, image, 2, 0, z=other, z_img=z_img), rtol=1e-5, atol=1e-5)
    assert (c.depth - a.depth).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"latents has shape \(1, 4, 4, 4\), expected \[1,4,8,8\]"):
        pipe.estimate_depth(image, latents=torch.zeros(1, 4, 4, 4), **kw)


def test_official_timesteps(pipe):
    s = pipe.make_scheduler()
    s.set_timesteps(20)
    assert s.timesteps.tolist()[:3] == [999, 949, 899] and s.timesteps.tolist()[-1] == 50


def test_binning_resizes_back(pipe):
    image = torch.rand(1, 3, 40, 72)  # not a multiple of 16: needs the bins
    depth = pipe.estimate_depth(
        image, num_inference_steps=1, resolution_binning=True, generator=torch.Generator().manual_seed(0)
    ).depth
    assert depth.shape == (1, 40, 72)
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe.estimate_depth(image, num_inference_steps=1, resolution_binning=False)


def test_generation_is_the_stock_pipeline(pipe):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    ctx = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, 4, dtype=torch.int64)
    kw = dict(height=64, width=64, num_inference_steps=2, guidance_scale=1.0, resolution_binning=False)
    ours = pipe.generate(prompt_embeds=ctx, prompt_mask=mask, generator=torch.Generator().manual_seed(1), **kw).image
    stock = PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=pipe.vae,
        transformer=tiny_pixart(),
        scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler_config),
    )
    ref = stock(
        prompt_embeds=ctx,
        prompt_attention_mask=mask,
        negative_prompt=None,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
        use_resolution_binning=False,
    ).images
    assert torch.equal(ours, ref)


def test_prompt_embedding_roundtrip(tmp_path):
    ctx, mask = torch.randn(1, 5, 8), torch.tensor([[1, 1, 0, 0, 0]])
    save_prompt_embedding(tmp_path / "e.safetensors", ctx, mask, prompt="", encoder="t5")
    c2, m2, meta = load_prompt_embedding(tmp_path / "e.safetensors")
    assert torch.equal(c2, ctx) and torch.equal(m2, mask) and meta["encoder"] == "t5"


def test_from_folders_reports_missing_parts(tmp_path):
    from unidense_core.io.checkpoints import CheckpointError

    save_converters(tiny_converters(), tmp_path / "conv")
    with pytest.raises(CheckpointError, match="transformer"):
        MergePipeline.from_folders(str(tmp_path / "pixart"), str(tmp_path / "conv"), empty_prompt_path="x")
