"""JointNet panorama pipeline against the official ``jointnetpano_pipeline.py`` loop written with diffusers' own
DDIMScheduler (per-view-batch scheduler states, CFG interleaved per tile), on official-format folders."""

import copy

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from unidense_core.jointnet.model import save_jointnet
from unidense_core.jointnet.panorama import JointNetPanoramaPipeline, check_offsets, numpy_offsets
from unidense_core.tiling.panorama import draw_offsets, preset
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet, write_sd_folder

pytestmark = pytest.mark.usefixtures("one_thread")

H, W, STEPS = 64, 256, 4  # latent 8×32: 8 tiles of 8×8 every 4 latent px, wrapping
CONFIG = preset("jointnet_pano", stride=4, boundary=2, view_batch_size=3, full_canvas_fraction=0.5)
OFFSETS = [3, 0, 1, 2]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pano")
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=21), str(root / "rgbd_finetune_sd21b"))
    write_sd_folder(str(root / "sd21"))
    return str(root / "rgbd_finetune_sd21b"), str(root / "sd21")


@pytest.fixture(scope="module")
def pipe(folders):
    return JointNetPanoramaPipeline.from_folders(*folders)


def official_views(height, width, window, stride):
    """get_views(circular_padding=True, add_full_image=True) in latent px."""
    rows = (height - window) // stride + 1 if height > window else 1
    cols = width // stride if width > window else 1
    views = [((i // cols) * stride, (i // cols) * stride + window, (i % cols) * stride, (i % cols) * stride + window)
             for i in range(rows * cols)]  # fmt: skip
    return views + [(0, height, 0, width)]


@torch.no_grad()
def official_panorama(model, sd21, prompt, latents, offsets, guidance=7.5, vbs=3, frac=0.5, strength=5, size=2):
    tok, te = CLIPTokenizer.from_pretrained(f"{sd21}/tokenizer"), CLIPTextModel.from_pretrained(f"{sd21}/text_encoder")

    def embed(text):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return te(ids.input_ids)[0]

    prompt_embeds = torch.cat([embed(""), embed(prompt)])  # _encode_prompt with CFG: [uncond, cond]
    scheduler = DDIMScheduler.from_pretrained(sd21, subfolder="scheduler")
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma
    lh, lw = latents.shape[-2:]
    views = official_views(lh, lw, lh, CONFIG.stride)
    views_batch = [views[:-1][i : i + vbs] for i in range(0, len(views) - 1, vbs)] + [views[-1:]]
    status = [copy.deepcopy(scheduler.__dict__)] * len(views_batch)
    value, count = torch.zeros_like(latents), torch.zeros_like(latents)
    for i, t in enumerate(scheduler.timesteps):
        count.zero_()
        value.zero_()
        off = offsets[i]  # official: numpy.random.randint(view_stride)
        for j, batch in enumerate(views_batch):
            full = batch[-1][3] - batch[-1][2] == lw
            if full and i > int(STEPS * frac):
                continue
            crops = []
            for h0, h1, w0, w1 in batch:
                w0, w1 = w0 + off, w1 + off
                if w1 > lw:
                    crops.append(torch.cat([latents[:, :, h0:h1, w0:], latents[:, :, h0:h1, : w1 - lw]], dim=-1))
                else:
                    crops.append(latents[:, :, h0:h1, w0:w1])
            z = torch.cat(crops)
            scheduler.__dict__.update(status[j])
            lmi = scheduler.scale_model_input(z.repeat_interleave(2, dim=0), t)
            eps = model(lmi, t, torch.cat([prompt_embeds] * len(batch)))  # official denoise(): both branches
            eps = eps[::2] + guidance * (eps[1::2] - eps[::2])
            stepped = scheduler.step(eps, t, z).prev_sample
            status[j] = copy.deepcopy(scheduler.__dict__)
            for tile, (h0, h1, w0, w1) in zip(stepped.chunk(len(batch)), batch, strict=True):
                w0, w1 = w0 + off, w1 + off
                if full:
                    weight = torch.full_like(tile, strength)
                else:
                    pos = torch.arange(lh, dtype=tile.dtype) + 0.5
                    ramp = (lh / 2 - (pos - lh / 2).abs()).clamp(0, size) / size
                    weight = ramp[None, :].repeat(lh, 1)[None, None].repeat(*tile.shape[:2], 1, 1)
                tile = tile * weight
                if w1 > lw:
                    value[:, :, h0:h1, w0:] += tile[:, :, h0:h1, : lw - w0]
                    value[:, :, h0:h1, : w1 - lw] += tile[:, :, h0:h1, lw - w0 :]
                    count[:, :, h0:h1, w0:] += weight[:, :, h0:h1, : lw - w0]
                    count[:, :, h0:h1, : w1 - lw] += weight[:, :, h0:h1, lw - w0 :]
                else:
                    value[:, :, h0:h1, w0:w1] += tile
                    count[:, :, h0:h1, w0:w1] += weight
        latents = torch.where(count > 0, value / count, value)
    vae = AutoencoderKL.from_pretrained(f"{sd21}/vae")

    def decode(z, padding=8):  # official decode_latents with circular padding, then postprocess
        z = z / vae.config.scaling_factor
        z = torch.cat((z[..., -padding:], z, z[..., :padding]), dim=-1)
        return (vae.decode(z).sample[..., 8 * padding : -8 * padding] / 2 + 0.5).clamp(0, 1)

    return latents, decode(latents[:, :4]), decode(latents[:, 4:])[:, 0]


def test_panorama_matches_the_official_loop_with_given_offsets(pipe, folders):
    noise = torch.randn(1, 8, H // 8, W // 8, generator=torch.Generator().manual_seed(5))
    seen = []
    ours = pipe.panorama(
        "a beach",
        H,
        W,
        STEPS,
        config=CONFIG,
        offsets=OFFSETS,
        latents=noise,
        callback=lambda i, t, z: seen.append(int(t)),
    )
    ref_latents, ref_image, ref_depth = official_panorama(pipe.model, folders[1], "a beach", noise, OFFSETS)
    assert seen == [751, 501, 251, 1]
    torch.testing.assert_close(ours.latents, ref_latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.image, ref_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.depth, ref_depth, rtol=0, atol=1e-5)
    assert ours.image.shape == (1, 3, H, W) and ours.depth.shape == (1, H, W)
    still = pipe.panorama("a beach", H, W, STEPS, config=CONFIG, offsets=[0] * STEPS, latents=noise)
    assert (still.latents - ours.latents).abs().max() > 1e-3  # the offsets are used


def test_generator_draws_noise_then_offsets(pipe):
    kw = dict(prompt="a beach", height=H, width=W, num_inference_steps=STEPS, config=CONFIG)
    a = pipe.panorama(generator=torch.Generator().manual_seed(9), **kw)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(1, 8, H // 8, W // 8, generator=g)
    b = pipe.panorama(latents=noise, offsets=draw_offsets(STEPS, CONFIG.stride, g), **kw)
    assert torch.equal(a.latents, b.latents)
    c = pipe.panorama(generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(a.latents, c.latents)


def test_numpy_offsets_are_the_official_stream():
    np.random.seed(123)
    official = [np.random.randint(32) for _ in range(50)]
    assert numpy_offsets(50, 32, 123) == official


def test_bad_offsets_and_sizes(pipe):
    with pytest.raises(ValueError, match="one offset per step: 4 steps but 3 offsets"):
        check_offsets([1, 2, 3], 4, CONFIG)
    with pytest.raises(ValueError, match=r"integers in \[0, 4\)"):
        check_offsets([1, 2, 4, 0], 4, CONFIG)
    with pytest.raises(ValueError, match="multiple of the stride"):
        pipe.panorama(prompt_embeds=torch.zeros(1, 77, 32), height=64, width=200, config=CONFIG)
    with pytest.raises(ValueError, match="latents have shape"):
        pipe.panorama("x", H, W, STEPS, config=CONFIG, latents=torch.zeros(1, 8, 8, 8))
