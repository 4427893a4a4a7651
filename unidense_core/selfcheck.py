"""End-to-end self-check on tiny models built from configs (random weights: this checks wiring, not quality).

Each check runs one capability through the real code paths (official-format files written and loaded back, the
official samplers), asserts properties and returns what it verified, with the measured numbers;
``python -m unidense_core selfcheck`` prints them with timings. A check whose optional dependency is missing
raises :class:`Skipped` and is reported as a skip, never as a pass.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable

import torch

from . import __version__

Check = Callable[[str], list[str]]


class Skipped(Exception):
    """A check that could not run here (an optional dependency is missing); the message says how to get it."""


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_merge(workdir: str) -> list[str]:
    """MERGE-B: converters load from the official folder; depth and generation from one PixArt."""
    from .io.prompt_embeddings import load_prompt_embedding, save_prompt_embedding
    from .merge.converters import load_converters, save_converters
    from .merge.pipeline import MergePipeline
    from .tiny import tiny_converters, tiny_pixart, tiny_vae

    written = tiny_converters()
    save_converters(written, f"{workdir}/merge-base-depth-v1/depth_converters")
    conv = load_converters(f"{workdir}/merge-base-depth-v1")
    sd_in, sd_out = written.state_dict(), conv.state_dict()
    assert sd_in.keys() == sd_out.keys() and all(torch.equal(sd_in[k], sd_out[k]) for k in sd_in)
    done = [f"converters: {len(sd_out)} tensors read back from depth_converters/ equal the ones written"]
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
    lo, hi = float(depth.min()), float(depth.max())
    assert depth.shape == (1, 64, 96) and 0 <= lo <= hi <= 1
    done.append(f"depth: 20 DPM-Solver++ steps, 64x96 image -> depth map 64x96 with values in [{lo:.3f}, {hi:.3f}]")
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
    changed = sum(not torch.equal(reference[k], v) for k, v in fixed.state_dict().items())
    assert changed == 0
    done.append(
        f"generation after a depth run equals a fresh base model's: max |diff| = {_maxdiff(img1, img2):g} over "
        f"{img1.numel()} pixel values; {len(reference)} base tensors unchanged"
    )
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
    lo, hi = float(depth.min()), float(depth.max())
    assert depth.shape == (1, 64, 96) and 0 <= lo <= hi <= 1
    done.append(
        f"depth: 20 Euler steps on the shifted linspace, 72x100 image -> depth map floored to 64x96 with values in "
        f"[{lo:.3f}, {hi:.3f}]"
    )
    kw = dict(prompt_embeds=ctx, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=4)
    img1 = pipe.generate(generator=torch.Generator().manual_seed(2), **kw).image
    fresh = MergeFluxPipeline(tiny_flux(), conv, pipe.vae, empty_prompt=(e.context, e.pooled))
    img2 = fresh.generate(generator=torch.Generator().manual_seed(2), **kw).image
    assert torch.equal(img1, img2), "generation with converters loaded must equal the plain model"
    done.append(
        f"generation (stock FluxPipeline) with the converters loaded equals the plain FLUX's: max |diff| = "
        f"{_maxdiff(img1, img2):g} over {img1.numel()} pixel values"
    )
    return done


def check_dmp(workdir: str) -> list[str]:
    """DMP: an official-layout LoRA folder loads onto an SD 1.x UNet; the 5-step deterministic sampler."""
    from .dense.readout import dmp_depth
    from .dmp.lora import apply_lora_peft, load_lora, save_lora_attn_procs
    from .dmp.sampler import dmp_schedule, sample_dmp, unet_velocity_fn
    from .tiny import random_dmp_lora, tiny_sd_unet, tiny_vae

    unet = tiny_sd_unet()
    folder = f"{workdir}/dmp/depth-hypersim-notext"
    written = random_dmp_lora(unet)
    save_lora_attn_procs(written, folder)
    lora = load_lora(folder)
    assert lora.modules.keys() == written.modules.keys() and lora.num_parameters == written.num_parameters
    text = torch.zeros(1, 4, 32)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = unet(x, 500, encoder_hidden_states=text).sample
        unet = apply_lora_peft(unet, lora)
        after = unet(x, 500, encoder_hidden_states=text).sample
    effect = _maxdiff(before, after)
    assert effect > 0
    done = [
        f"LoRA: {len(lora.modules)} attention modules ({lora.num_parameters} parameters) read back from the official "
        f"folder; applied with peft they change the UNet output (max |diff| = {effect:.3g})"
    ]
    calls = []
    unet.register_forward_hook(lambda m, a, o: calls.append(int(a[1])))
    vae = tiny_vae()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        z_x = vae.encode(image).latent_dist.mode() * 0.18215
    fn = unet_velocity_fn(unet, text)
    z1 = sample_dmp(fn, z_x, steps=5)
    z2 = sample_dmp(fn, z_x, steps=5)
    assert torch.equal(z1, z2) and calls == list(dmp_schedule(5).timesteps) * 2
    done.append(
        f"sampler: 5 UNet calls at t = {calls[:5]}, starting from the image latent; two runs equal "
        f"(max |diff| = {_maxdiff(z1, z2):g}: no noise, no seed)"
    )
    oracle = sample_dmp(fn, z_x, steps=5, variant="oracle")
    with torch.no_grad():
        depth = dmp_depth(vae.decode(z1 / 0.18215).sample / 2 + 0.5)
    assert depth.shape == (1, 64, 64) and _maxdiff(oracle, z1) > 0
    done.append(
        f"the oracle variant differs from the standard one (max |diff| = {_maxdiff(oracle, z1):.3g}); "
        f"depth read-out 64x64 in [{float(depth.min()):.3f}, {float(depth.max()):.3f}]"
    )
    return done


def check_jointnet(workdir: str) -> list[str]:
    """JointNet: official unet/ + jointnet/ folders load; joint RGB-D generation; image -> depth keeps the image."""
    from .jointnet.model import load_jointnet, save_jointnet
    from .jointnet.pipeline import JointNetPipeline
    from .tiny import TINY_SD21_UNET, random_jointnet, tiny_vae

    folder = f"{workdir}/jointnet/rgbd_inpaint_sd21b"
    written = random_jointnet(TINY_SD21_UNET, has_masked_latent_input=True)
    save_jointnet(written, folder)
    model = load_jointnet(folder)
    sd_in, sd_out = written.state_dict(), model.state_dict()
    assert sd_in.keys() == sd_out.keys() and all(torch.equal(sd_in[k], sd_out[k]) for k in sd_in)
    assert model.has_masked_latent_input
    pipe = JointNetPipeline(model, tiny_vae())
    done = [f"unet/ + jointnet/ folders: {len(sd_out)} tensors (masked-latent conv included) read back equal"]
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
    done.append(
        "text -> RGB-D: 10 DDIM steps with CFG 7.5 on the 8-channel latent -> 64x64 image and 64x64 depth in "
        f"[{float(out.depth.min()):.3f}, {float(out.depth.max()):.3f}]"
    )
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
    done.append(
        f"image -> depth (rgb2j): the image latent is kept (max |diff| = {_maxdiff(kept.latents[:, :4], z_img):g} "
        f"over {z_img.numel()} values) while the depth latent is generated"
    )
    return done


def check_panorama(workdir: str) -> list[str]:
    """Tiled panorama: official tile layout and weights; one whole-canvas tile equals the untiled model; wrap."""
    from .tiling.panorama import PanoramaConfig, check_canvas, plan_views, preset, tiled_denoise, weight_sum
    from .tiny import tiny_sd21_unet

    cfg = preset("jointnet_pano")
    views = plan_views(64, 256, cfg, offset=5, include_full=True)
    w = weight_sum(64, 256, views, cfg)
    check_canvas(512, 2048, cfg)
    assert (w > 0).all()
    done = [
        f"official 512x2048 layout: {len(views) - 1} wrapped tiles + the whole canvas; every latent pixel has "
        f"weight >= {float(w.min()):.3g}"
    ]
    unet = tiny_sd21_unet()
    text = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1))

    def denoiser(tiles, group):  # the tiny UNet at t = 500 on a batch of tiles
        return unet(tiles, 500, encoder_hidden_states=text.expand(tiles.shape[0], -1, -1)).sample

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    one_tile = PanoramaConfig(
        window=16, stride=16, circular=False, random_offset=False, full_canvas_fraction=0.0, boundary=0
    )
    wrap = preset("jointnet_pano", window=16, stride=8)
    wide = torch.randn(1, 4, 16, 64, generator=torch.Generator().manual_seed(2))
    shift, offset = 13, 3
    with torch.no_grad():
        tiled, untiled = tiled_denoise(denoiser, x, one_tile), denoiser(x, [])
        out = tiled_denoise(denoiser, wide, wrap, step=0, num_steps=50, offset=offset)
        rolled = tiled_denoise(denoiser, torch.roll(wide, shift, -1), wrap, step=0, num_steps=50, offset=offset + shift)
    assert torch.equal(tiled, untiled)
    done.append(f"one whole-canvas tile equals the untiled UNet: max |diff| = {_maxdiff(tiled, untiled):g}")
    seam = _maxdiff(rolled, torch.roll(out, shift, -1))
    assert out.shape == wide.shape and seam < 1e-5
    done.append(
        f"360° wrap: rolling a 16x64 latent canvas by {shift} px (tiles moved with it) rolls the output, max |diff| "
        f"= {seam:.2g}: the seam is treated like any other column"
    )
    return done


def check_export3d(workdir: str) -> list[str]:
    """3D export: an equirectangular RGB-D image -> GLB mesh, read back; vertices lie at the given depth."""
    from .dense.geometry3d import require_trimesh, rgbd_to_geometry, save_geometry

    try:
        trimesh = require_trimesh()
    except ImportError as exc:
        raise Skipped(str(exc)) from exc
    depth = torch.rand(32, 64, generator=torch.Generator().manual_seed(4)) + 0.5
    v, c, f = rgbd_to_geometry(torch.rand(32, 64, 3), depth, projection="equirectangular")
    path = save_geometry(f"{workdir}/pano.glb", v, c, f, "glb_mesh")
    scene = trimesh.load(path, process=False)
    mesh = next(iter(scene.geometry.values())) if isinstance(scene, trimesh.Scene) else scene
    back = torch.as_tensor(mesh.vertices).float()
    err = float((back.norm(dim=-1) - depth.reshape(-1)).abs().max())
    assert back.shape == v.shape and len(mesh.faces) == len(f) and err < 1e-5
    return [
        f"equirectangular 32x64 RGB-D -> GLB mesh read back with {len(back)} vertices and {len(mesh.faces)} faces; "
        f"each vertex's distance from the camera equals its depth (max error {err:.1g})"
    ]


CHECKS: dict[str, Check] = {
    "MERGE-B (PixArt-α converters)": check_merge,
    "MERGE-L (FLUX.1-dev converters)": check_merge_l,
    "DMP (SD 1.x + task LoRA)": check_dmp,
    "JointNet (RGB-D, channel inpainting)": check_jointnet,
    "Tiled panorama": check_panorama,
    "3D export (GLB)": check_export3d,
}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"torch {torch.__version__}"]
    try:
        parts.append(f"diffusers {version('diffusers')}")
    except PackageNotFoundError:  # the checks that need it fail and say so
        parts.append("diffusers missing")
    return ", ".join(parts) + f", Python {platform.python_version()}"


def run(names: list[str] | None = None) -> int:
    """Run the checks, print what each verified and its time; return the number of failures (skips are not)."""
    torch.manual_seed(0)
    counts = {"ok": 0, "skip": 0, "FAIL": 0}
    start = time.perf_counter()
    print(f"UniDense {__version__} self-check ({_versions()})")
    print("Tiny RANDOM-weight models built from configs: it verifies wiring, file formats and the official")
    print("algorithms end to end, not output quality. No model is downloaded.\n")
    with tempfile.TemporaryDirectory() as workdir:
        for name, check in CHECKS.items():
            if names and not any(n.lower() in name.lower() for n in names):
                continue
            t0 = time.perf_counter()
            try:
                verified = check(workdir)
            except Skipped as exc:
                counts["skip"] += 1
                print(f"skip {name} ({time.perf_counter() - t0:.1f} s): {exc}")
                continue
            except Exception as exc:  # report every capability, then fail at the end
                counts["FAIL"] += 1
                print(f"FAIL {name} ({time.perf_counter() - t0:.1f} s): {type(exc).__name__}: {exc}")
                continue
            counts["ok"] += 1
            print(f"ok   {name} ({time.perf_counter() - t0:.1f} s)")
            for line in verified:
                print(f"     - {line}")
    total = time.perf_counter() - start
    ran = sum(counts.values())
    ok, failed, skipped = counts["ok"], counts["FAIL"], counts["skip"]
    print(f"\nResult: {ok} of {ran} checks verified, {failed} failed, {skipped} skipped; {total:.1f} s")
    return counts["FAIL"]
