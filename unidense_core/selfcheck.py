"""End-to-end self-check on tiny models built from configs (random weights: this checks wiring, not quality).

Each check runs one capability through the real code paths (official-format files written and loaded back, the
official samplers) and returns what it verified; ``python -m unidense_core selfcheck`` prints them with timings.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import torch

Check = Callable[[str], list[str]]


def check_merge(workdir: str) -> list[str]:
    """MERGE-B: converters load from the official folder; depth and generation from one PixArt."""
    from .io.prompt_embeddings import load_prompt_embedding, save_prompt_embedding
    from .merge.converters import load_converters, save_converters
    from .merge.pipeline import MergePipeline
    from .tiny import tiny_converters, tiny_pixart, tiny_vae

    done = []
    conv_dir = f"{workdir}/merge-base-depth-v1/depth_converters"
    save_converters(tiny_converters(), conv_dir)
    conv = load_converters(f"{workdir}/merge-base-depth-v1")
    done.append(f"converters loaded from an official-layout folder ({len(conv.state_dict())} tensors, key-checked)")
    g = torch.Generator().manual_seed(0)
    save_prompt_embedding(
        f"{workdir}/empty.safetensors",
        torch.randn(1, 6, 32, generator=g),
        torch.tensor([[1, 0, 0, 0, 0, 0]]),
        prompt="",
        encoder="random T5 stand-in",
    )
    ctx, mask, _ = load_prompt_embedding(f"{workdir}/empty.safetensors")
    fixed = tiny_pixart()
    reference = {k: v.clone() for k, v in fixed.state_dict().items()}
    pipe = MergePipeline(fixed, conv, tiny_vae(), empty_prompt=(ctx, mask))
    image = torch.rand(1, 3, 64, 96, generator=g)
    depth = pipe.estimate_depth(
        image, num_inference_steps=20, generator=torch.Generator().manual_seed(1), resolution_binning=False
    ).depth
    assert depth.shape == (1, 64, 96) and 0 <= depth.min() <= depth.max() <= 1
    done.append(f"depth: 20 DPM-Solver++ steps, 64x96 image -> depth {tuple(depth.shape)} in [0, 1]")
    kw = dict(
        prompt_embeds=ctx,
        prompt_mask=torch.ones_like(mask),
        height=64,
        width=64,
        num_inference_steps=20,
        guidance_scale=1.0,
        resolution_binning=False,
    )
    img1 = pipe.generate(generator=torch.Generator().manual_seed(2), **kw).image
    fresh = MergePipeline(tiny_pixart(), conv, pipe.vae, empty_prompt=(ctx, mask))
    img2 = fresh.generate(generator=torch.Generator().manual_seed(2), **kw).image
    assert torch.equal(img1, img2), "generation with converters loaded must equal the plain model"
    assert all(torch.equal(reference[k], v) for k, v in fixed.state_dict().items())
    done.append("generation after a depth run is bit-identical to a fresh base model; base weights untouched")
    return done


def check_merge_l(workdir: str) -> list[str]:
    """MERGE-L: converters load from the official folder; depth (official schedule) and generation from one FLUX."""
    from .io.prompt_embeddings import read_prompt_embedding, save_prompt_embedding
    from .merge.flux_converters import load_flux_converters, save_flux_converters
    from .merge.flux_pipeline import MergeFluxPipeline
    from .tiny import tiny_flux, tiny_flux_converters, tiny_flux_vae

    save_flux_converters(tiny_flux_converters(), f"{workdir}/merge-large-depth-v1/depth_converters")
    conv = load_flux_converters(f"{workdir}/merge-large-depth-v1")
    done = [f"converters loaded from an official-layout folder ({len(conv.state_dict())} tensors, header-checked)"]
    g = torch.Generator().manual_seed(0)
    ctx, pooled = torch.randn(1, 8, 32, generator=g), torch.randn(1, 16, generator=g)
    save_prompt_embedding(f"{workdir}/flux_empty.safetensors", ctx, prompt="", encoder="stand-in", pooled=pooled)
    e = read_prompt_embedding(f"{workdir}/flux_empty.safetensors")
    pipe = MergeFluxPipeline(tiny_flux(), conv, tiny_flux_vae(), empty_prompt=(e.context, e.pooled))
    depth = pipe.estimate_depth(
        torch.rand(1, 3, 72, 100, generator=g), generator=torch.Generator().manual_seed(1)
    ).depth
    assert depth.shape == (1, 64, 96) and 0 <= depth.min() <= depth.max() <= 1
    done.append("depth: 20 Euler steps on the shifted linspace, 72x100 image -> floored 64x96 depth in [0, 1]")
    kw = dict(prompt_embeds=ctx, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=4)
    img1 = pipe.generate(generator=torch.Generator().manual_seed(2), **kw).image
    fresh = MergeFluxPipeline(tiny_flux(), conv, pipe.vae, empty_prompt=(e.context, e.pooled))
    img2 = fresh.generate(generator=torch.Generator().manual_seed(2), **kw).image
    assert torch.equal(img1, img2), "generation with converters loaded must equal the plain model"
    done.append("generation (stock FluxPipeline) with the converters loaded is bit-identical to the plain FLUX")
    return done


def check_dmp(workdir: str) -> list[str]:
    """DMP: an official-layout LoRA folder loads onto an SD 1.x UNet; the 5-step deterministic sampler."""
    from .dense.readout import dmp_depth
    from .dmp.lora import apply_lora_peft, load_lora, save_lora_attn_procs
    from .dmp.sampler import dmp_schedule, sample_dmp, unet_velocity_fn
    from .tiny import random_dmp_lora, tiny_sd_unet, tiny_vae

    unet = tiny_sd_unet()
    folder = f"{workdir}/dmp/depth-hypersim-notext"
    save_lora_attn_procs(random_dmp_lora(unet), folder)
    lora = load_lora(folder)
    unet = apply_lora_peft(unet, lora)
    done = [f"official attention-processor LoRA folder loaded ({len(lora.modules)} modules) and applied with peft"]
    calls = []
    unet.register_forward_hook(lambda m, a, o: calls.append(int(a[1])))
    vae = tiny_vae()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z_x = vae.encode(image).latent_dist.mode() * 0.18215
    fn = unet_velocity_fn(unet, torch.zeros(1, 4, 32))
    z1 = sample_dmp(fn, z_x, steps=5)
    z2 = sample_dmp(fn, z_x, steps=5)
    assert torch.equal(z1, z2) and calls == list(dmp_schedule(5).timesteps) * 2
    done.append(f"5 deterministic DDIM steps at t = {calls[:5]} from the image latent (no noise, no seed)")
    oracle = sample_dmp(fn, z_x, steps=5, variant="oracle")
    depth = dmp_depth(vae.decode(z1 / 0.18215).sample / 2 + 0.5)
    assert depth.shape == (1, 64, 64) and not torch.equal(oracle, z1)
    done.append("oracle variant runs; depth read-out (mean of channels, normalised) has the image's size")
    return done


def check_jointnet(workdir: str) -> list[str]:
    """JointNet: official unet/ + jointnet/ folders load; joint RGB-D generation; image -> depth keeps the image."""
    from .jointnet.model import load_jointnet, save_jointnet
    from .jointnet.pipeline import JointNetPipeline
    from .tiny import TINY_SD21_UNET, random_jointnet, tiny_vae

    folder = f"{workdir}/jointnet/rgbd_inpaint_sd21b"
    save_jointnet(random_jointnet(TINY_SD21_UNET, has_masked_latent_input=True), folder)
    pipe = JointNetPipeline(load_jointnet(folder), tiny_vae())
    done = ["official unet/ + jointnet/ folders (with the masked-latent conv) loaded, keys and shapes checked"]
    g = torch.Generator().manual_seed(0)
    text, empty = torch.randn(1, 4, 32, generator=g), torch.zeros(1, 4, 32)
    out = pipe.generate(
        prompt_embeds=text,
        negative_prompt_embeds=empty,
        height=64,
        width=64,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(1),
    )
    assert out.image.shape == (1, 3, 64, 64) and out.depth.shape == (1, 64, 64) and out.latents.shape[1] == 8
    done.append("text -> RGB-D: 10 DDIM steps with CFG 7.5 on the 8-channel joint latent")
    image = torch.rand(1, 3, 64, 64, generator=g)
    kept = pipe.inpaint(
        prompt_embeds=text,
        negative_prompt_embeds=empty,
        image=image,
        preset="rgb2j",
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(2),
    )
    z_img = pipe.encode_image(image * 2 - 1, torch.Generator().manual_seed(2))
    assert torch.equal(kept.latents[:, :4], z_img), "rgb2j must keep the image latent exactly"
    done.append("image -> depth (rgb2j): the image latent is kept bit-identical, depth is generated")
    return done


def check_panorama(workdir: str) -> list[str]:
    """Tiled panorama: official tile layout and weights; one whole-canvas tile equals the untiled model; 3D export."""
    from .tiling.panorama import PanoramaConfig, check_canvas, plan_views, preset, tiled_denoise, weight_sum

    cfg = preset("jointnet_pano")
    views = plan_views(64, 256, cfg, offset=5, include_full=True)
    w = weight_sum(64, 256, views, cfg)
    check_canvas(512, 2048, cfg)
    assert (w > 0).all()
    done = [f"official 512x2048 layout: {len(views) - 1} wrapped tiles + the whole canvas, every pixel weighted"]
    from .tiny import tiny_sd21_unet

    unet = tiny_sd21_unet()
    text = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1))

    def denoiser(tiles, group):  # the tiny UNet at t = 500 on a batch of tiles
        return unet(tiles, 500, encoder_hidden_states=text.expand(tiles.shape[0], -1, -1)).sample

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    one_tile = PanoramaConfig(
        window=16, stride=16, circular=False, random_offset=False, full_canvas_fraction=0.0, boundary=0
    )
    with torch.no_grad():
        assert torch.equal(tiled_denoise(denoiser, x, one_tile), denoiser(x, []))
        wide = torch.randn(1, 4, 16, 64, generator=torch.Generator().manual_seed(2))
        out = tiled_denoise(
            denoiser, wide, preset("jointnet_pano", window=16, stride=8), step=0, num_steps=50, offset=3
        )
    assert out.shape == wide.shape
    done.append("one whole-canvas tile equals the untiled UNet exactly; a wrapped 16x64 latent canvas denoises")
    try:
        from .dense.geometry3d import rgbd_to_geometry, save_geometry

        v, c, f = rgbd_to_geometry(torch.rand(32, 64, 3), torch.rand(32, 64) + 0.5, projection="equirectangular")
        path = save_geometry(f"{workdir}/pano.glb", v, c, f, "glb_mesh")
        done.append(f"equirectangular RGB-D -> GLB mesh ({len(v)} vertices, {len(f)} faces) written: {path[-8:]}")
    except ImportError as exc:
        done.append(f"3D export skipped: {exc}")
    return done


CHECKS: dict[str, Check] = {
    "MERGE-B (PixArt-α converters)": check_merge,
    "MERGE-L (FLUX.1-dev converters)": check_merge_l,
    "DMP (SD 1.x + task LoRA)": check_dmp,
    "JointNet (RGB-D, channel inpainting)": check_jointnet,
    "Tiled panorama + 3D export": check_panorama,
}


def run(names: list[str] | None = None) -> int:
    """Run the checks, print what each verified and its time; return the number of failures."""
    torch.manual_seed(0)
    failures = 0
    print("UniDense self-check on tiny RANDOM-weight models built from configs: it verifies wiring, file formats")
    print("and the official algorithms end to end, not output quality. No model is downloaded.\n")
    with tempfile.TemporaryDirectory() as workdir:
        for name, check in CHECKS.items():
            if names and not any(n.lower() in name.lower() for n in names):
                continue
            t0 = time.perf_counter()
            try:
                verified = check(workdir)
            except Exception as exc:  # report every capability, then fail at the end
                failures += 1
                print(f"FAIL {name} ({time.perf_counter() - t0:.1f} s): {type(exc).__name__}: {exc}")
                continue
            print(f"ok   {name} ({time.perf_counter() - t0:.1f} s)")
            for line in verified:
                print(f"     - {line}")
    print(f"\n{'all checks passed' if not failures else f'{failures} check(s) failed'}")
    return failures
