"""TiledPanorama cost on an SD-2.x-base-size UNet (865.9M parameters, the JointNet base; random weights) in ComfyUI.
All figures come from one run:

1. wall time of a panorama with the official settings (jointnet_pano: stride 32, whole canvas for 21 of 50 steps)
   over MultiDiffusion's (stride 8, same window), same model and canvas. Paper (A100, 512×2048, 50 steps, CFG):
   17 s vs 49 s = 0.347; goal <= 1/3. Each kind of model call (a tile, the whole canvas) is timed (best of
   --repeats, because other processes share the CPU), the 50-step totals follow from the call counts of the two
   layouts, and one real sampler step through TiledPanorama checks the prediction (wrapper overhead).
2. peak memory of a tiles-only sampler step at two canvas widths (2048 and 4096 px) with the same view_batch_size
   (must not grow with the width beyond the latents), and of steps that include the whole canvas (one UNet pass on
   the full latent, which grows like an untiled run);
3. time per tile with view_batch_size 1 vs 4.

On a CPU the canvas is reduced to 512×1024 px by default (latent 64×128: window 64 as in the paper; 4 official tiles
vs 16 MultiDiffusion tiles) and CFG is off (one UNet pass per tile; CFG doubles both methods alike). Attention is
PyTorch SDPA (--use-pytorch-cross-attention; ComfyUI's CPU default, sub-quadratic attention, makes the whole-canvas
pass several times slower: --comfy-attention). Use --width 2048 --gpu for the paper's canvas on a GPU.
    COMFYUI_PATH=/path/to/ComfyUI <ComfyUI's python> benchmarks/panorama.py [--width 1024] [--gpu]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ComfyUI's SD2.x UNet config (model_detection.py, SD21): model_channels 320, linear transformer projections.
SD21_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) of this process."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024, help="canvas width in px (paper: 2048); height 512")
    ap.add_argument("--repeats", type=int, default=3, help="timings are the best of this many calls")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use its default device")
    ap.add_argument("--comfy-attention", action="store_true", help="ComfyUI's default attention for the device")
    args = ap.parse_args()
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout and run with ComfyUI's python")
    sys.path.insert(0, comfy_path)
    sys.path.append(ROOT)  # after ComfyUI: its 'nodes' module, not this pack's 'nodes' package
    import comfy.cli_args
    import utils.install_util  # noqa: F401

    comfy.cli_args.args.cpu = not args.gpu
    comfy.cli_args.args.use_pytorch_cross_attention = not args.comfy_attention
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models

    import nodes
    from unidense_core.tiling.panorama import PRESETS, include_full_canvas, plan_views

    assert asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes"))
    tiled = nodes.NODE_CLASS_MAPPINGS["UniDense_TiledPanorama"]
    torch.set_flush_denormal(True)

    # 1. An SD-2.x-base-size UNet with random weights (N(0, 0.02); the values do not change the cost).
    config = comfy.supported_models.SD20(SD21_UNET)
    config.set_inference_dtype(torch.float16 if args.gpu else torch.float32, None)
    model = config.get_model({})
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.02)
    device = mm.get_torch_device()
    base = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    n_params = sum(p.numel() for p in model.diffusion_model.parameters())
    ctx = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(0))
    latent_w = args.width // 8
    print(
        f"UNet {n_params / 1e6:.1f}M params (SD2.x base config, random weights), {device}, "
        f"{torch.get_num_threads()} threads, attention {attention.optimized_attention.__name__}, "
        f"canvas 512×{args.width} px (latent 64×{latent_w}), no CFG"
    )
    mm.load_models_gpu([base])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def call_once(batch: int, width: int) -> float:
        """Wall time of one UNet call on [batch, 4, 64, width] (one model call of a tile batch)."""
        x = torch.randn(batch, 4, 64, width, device=device)
        sigma = torch.full((batch,), 5.0, device=device)
        c = ctx.expand(batch, -1, -1).to(device)
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            model.apply_model(x, sigma, c_crossattn=c)
            sync()
        return time.perf_counter() - t0

    def sampler_steps(m, steps: int, width: int) -> list[float]:
        """Sample with euler through ComfyUI; returns the wall time of each step."""
        shape = (1, 4, 64, width)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        marks = [time.perf_counter()]
        pos = [[ctx, {}]]
        comfy.sample.sample(
            m,
            noise,
            steps,
            1.0,
            "euler",
            "normal",
            pos,
            pos,
            torch.zeros(shape),
            seed=1,
            disable_pbar=True,
            callback=lambda *a: marks.append(time.perf_counter()),
        )
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]

    def patched(preset: str, vbs: int, **custom):
        widgets = dict(window=0, stride=32, circular=True, random_offset=True, full_canvas_fraction=0.4)
        widgets.update(full_canvas_weight=5.0, boundary=8, ramp_axes="x", **custom)
        return tiled.execute(base, preset, view_batch_size=vbs, seed=0, **widgets)[0]

    # 2. Per-call costs, measured in interleaved rounds (best of each) so a busy moment hits all kinds alike.
    call_once(1, 64)  # warm-up
    kinds = {"tile": (1, 64), "tile4": (4, 64), "canvas": (1, latent_w)}
    best = dict.fromkeys(kinds, math.inf)
    for _ in range(args.repeats):
        for kind, (batch, width) in kinds.items():
            best[kind] = min(best[kind], call_once(batch, width))
    t_tile, t_tile4, t_canvas = best["tile"], best["tile4"] / 4, best["canvas"]
    print(
        f"one 64×64 tile: {t_tile:.2f} s (batch 1), {t_tile4:.2f} s per tile in a batch of 4; "
        f"the whole 64×{latent_w} canvas: {t_canvas:.2f} s = {t_canvas / t_tile:.1f} tiles"
    )

    # 3. Official vs MultiDiffusion over 50 steps (view_batch_size 1), from the layouts' call counts.
    def cost_50(preset: str) -> tuple[float, int, int]:
        cfg = PRESETS[preset]
        total, tiles, canvases = 0.0, 0, 0
        for i in range(50):
            views = plan_views(64, latent_w, cfg, include_full=include_full_canvas(i, 50, cfg.full_canvas_fraction))
            n_full = sum(v.is_full for v in views)
            tiles, canvases = tiles + len(views) - n_full, canvases + n_full
            total += (len(views) - n_full) * t_tile + n_full * t_canvas
        return total, tiles, canvases

    official, off_tiles, off_canvases = cost_50("jointnet_pano")
    md, md_tiles, _ = cost_50("multidiffusion")
    print(
        f"50 steps: official {official:.0f} s ({off_tiles} tile + {off_canvases} canvas calls), MultiDiffusion "
        f"{md:.0f} s ({md_tiles} tile calls) -> ratio {official / md:.3f} (paper 17/49 = {17 / 49:.3f}; "
        f"goal <= 0.333); without the canvas calls {off_tiles * t_tile / md:.3f}"
    )
    step = sampler_steps(patched("jointnet_pano", 1), 1, latent_w)[0]  # N = 1: the canvas joins (int(0.4) = 0)
    predicted = latent_w // 32 * t_tile + t_canvas
    print(
        f"check: one official sampler step through TiledPanorama {step:.2f} s vs predicted {predicted:.2f} s "
        f"({100 * (step / predicted - 1):+.1f}%)"
    )
    print(f"view_batch_size 4 vs 1: {t_tile4:.2f} vs {t_tile:.2f} s per tile -> speed-up {t_tile / t_tile4:.2f}×")

    # 4. Peak memory of one sampler step above the loaded model. Tiles only: the paper's canvas and twice its width
    #    (both several tile batches, so the allocator is in the same steady state); with the whole canvas: a UNet
    #    pass on the full latent, which grows with the width like an untiled run.
    print(f"resident after loading the model: {rss_bytes() / 2**30:.2f} GiB")
    grown = {}
    for width_px, frac in ((2048, 0.0), (4096, 0.0), (1024, 0.4), (2048, 0.4)):
        m = patched("custom", 4, full_canvas_fraction=frac)
        before = rss_bytes()
        reset_peak_rss()
        sampler_steps(m, 1, width_px // 8)
        grown[width_px, frac] = peak_rss_bytes() - before
        kind = "with the whole canvas" if frac else "tiles only, vbs 4    "
        print(f"  {kind} 512×{width_px}: peak +{grown[width_px, frac] / 2**20:7.1f} MiB over the loaded model")
    print(
        f"tiles-only growth 2048 -> 4096 px: {(grown[4096, 0.0] - grown[2048, 0.0]) / 2**20:+.1f} MiB (the 2048 px "
        f"of extra latent are {4 * 64 * 256 * 4 / 2**10:.0f} KiB per canvas-sized tensor); with the whole canvas "
        f"1024 -> 2048 px: {(grown[2048, 0.4] - grown[1024, 0.4]) / 2**20:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
