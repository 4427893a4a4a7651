"""DMP sampler overhead at SD 1.x size: time outside the UNet evaluations as a share of the run (goal < 3%).

A diffusers UNet2DConditionModel with the real SD 1.4 config and random weights, a small latent, CPU. Each run of
the 5-step sampler is timed as a whole and the UNet forwards inside it are timed by hooks; the overhead is
(run − UNet time) / run. Paths: the core VP loop (``sample_dmp``), the core σ-space sampler (``sample_interp``, the
SAMPLER contract), and with ``--comfyui`` (needs $COMFYUI_PATH, ComfyUI's Python) the ComfyUI node path on ComfyUI's
own SD15 UNet (CFGGuider machinery included). Median over repeats, printed from one run.
    python benchmarks/dmp_sampler_overhead.py [--latent 32] [--repeats 3] [--comfyui]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unidense_core.dmp import sampler as dmp  # noqa: E402
from unidense_core.tiny import SD14_UNET  # noqa: E402


class UNetTimer:
    """Accumulates the wall time spent inside a module's forward (pre/post hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self.calls = 0
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0


def measure(run, timer: UNetTimer, repeats: int) -> tuple[float, float, int]:
    ratios, totals = [], []
    for _ in range(repeats):
        timer.reset()
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
        ratios.append((total - timer.total) / total)
        totals.append(total)
    return statistics.median(ratios), statistics.median(totals), timer.calls


def comfyui_path(unet, z_x_raw, ctx, steps, repeats):
    """The DeterministicInterpolationSampler node on ComfyUI's own SD15 UNet with the same weights."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("--comfyui needs COMFYUI_PATH (and ComfyUI's Python).")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, path)
    import asyncio

    import comfy.cli_args
    import utils.install_util  # noqa: F401  ComfyUI's 'utils' before comfy/utils.py shadows it

    comfy.cli_args.args.cpu = True
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    from comfy_tiny import comfy_sd15_from_diffusers

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    assert asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes"))
    ns = type("NS", (), {"supported_models": comfy.supported_models, "utils": comfy.utils})()
    ns.model_patcher = comfy.model_patcher
    model = comfy_sd15_from_diffusers(ns, unet)
    node = nodes.NODE_CLASS_MAPPINGS["UniDense_DeterministicInterpolationSampler"]
    timer = UNetTimer(model.model.diffusion_model)
    run = lambda: node.execute(model, [[ctx, {}]], {"samples": z_x_raw}, steps, "standard", 1.0)  # noqa: E731
    run()  # warm-up (loads the model)
    return measure(run, timer, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    ap.add_argument("--steps", type=int, default=dmp.DEFAULT_STEPS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--comfyui", action="store_true", help="also measure the ComfyUI node path")
    args = ap.parse_args()
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD14_UNET).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    s = args.latent
    z_x = torch.randn(1, 4, s, s) * 0.18215 * 5
    ctx = torch.randn(1, 77, 768)
    timer = UNetTimer(unet)
    fn = dmp.unet_velocity_fn(unet, ctx)
    ac = dmp.alphas_cumprod()
    log_sigmas = ((1 - ac) / ac).sqrt().log()

    def denoiser(x, sigma):  # a v-prediction model in σ-space, as ComfyUI's V_PREDICTION wraps one
        t = int((log_sigmas - sigma[0].log()).abs().argmin())
        a = 1 / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        z = x * a.sqrt()
        return a.sqrt() * z - (1 - a).sqrt() * fn(z, t)

    with torch.no_grad():
        fn(z_x, 801)  # warm-up
    results = {
        "core VP loop (sample_dmp)": measure(lambda: dmp.sample_dmp(fn, z_x, args.steps), timer, args.repeats),
        "core σ-space (sample_interp)": measure(
            lambda: dmp.sample_interp(denoiser, z_x, dmp.dmp_sigmas(args.steps)), timer, args.repeats
        ),
    }
    if args.comfyui:
        results["ComfyUI node (CFGGuider + KSAMPLER)"] = comfyui_path(
            unet, z_x / 0.18215, ctx, args.steps, args.repeats
        )
    print(f"SD 1.4 UNet config, random weights: {n_params / 1e6:.1f} M params; latent {s}x{s}, batch 1, fp32 CPU")
    print(f"threads {torch.get_num_threads()}, steps {args.steps}, repeats {args.repeats} (medians)")
    for name, (ratio, total, calls) in results.items():
        print(f"{name}: run {total:.2f} s, {calls} UNet calls, overhead {100 * ratio:.3f}% of the run (goal < 3%)")


if __name__ == "__main__":
    main()
