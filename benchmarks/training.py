"""Training step cost with gradient checkpointing off and on: optimizer steps per second and peak memory.

Each recipe's training module (frozen base + trainable part, the official loss) at a small size, random weights,
random latents; one process per setting, so the peak resident memory (CPU) or ``max_memory_allocated`` (CUDA)
belongs to that setting alone. Reported: steps/s and the peak memory above the state before the first step, and
the on/off ratios (checkpointing trades time for activation memory). Peak memory = the largest resident size
(CPU) or allocation (CUDA) above the models, i.e. activations + gradients + AdamW state.
    python benchmarks/training.py [--method merge dmp jointnet] [--steps 6] [--batch 4] [--latent 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(method: str, latent: int, batch: int):
    """(recipe, inputs) at a small but not tiny size: activations dominate the memory."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    from unidense_core.tiny import TINY_PIXART, TINY_SD21_UNET, TINY_SD_UNET, BlockAutoencoder, randomize_
    from unidense_core.training.prompts import PromptBank

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    z = lambda c=4: torch.randn(batch, c, latent, latent, generator=g)  # noqa: E731
    t = torch.randint(0, 1000, (batch,), generator=g)
    valid = torch.ones(batch, 1, latent, latent, dtype=torch.bool)
    if method == "merge":
        from unidense_core.training.merge_recipe import MergeRecipe

        cfg = dict(TINY_PIXART, num_attention_heads=4, attention_head_dim=64, num_layers=8, cross_attention_dim=256)
        base = randomize_(PixArtTransformer2DModel(**cfg), 0, 0.02)
        ctx = torch.randn(1, 8, 32)
        r = MergeRecipe(base, BlockAutoencoder(), (ctx, torch.ones(1, 8, dtype=torch.long)))
        inputs = dict(image_latent=z(), depth_latent=z(), timesteps=t, noise=z(), context=ctx.expand(batch, -1, -1),
                      context_mask=torch.ones(batch, 8, dtype=torch.long), valid_latent=valid)  # fmt: skip
        return r, inputs
    ctx = torch.randn(1, 8, 32)
    if method == "dmp":
        from unidense_core.training.dmp_recipe import DMPRecipe

        unet = randomize_(UNet2DConditionModel(**dict(TINY_SD_UNET, block_out_channels=(64, 128, 128, 128))), 0, 0.05)
        r = DMPRecipe(unet, BlockAutoencoder(), PromptBank(ctx))
        return r, dict(
            image_latent=z(), target_latent=z(), timesteps=t, context=ctx.expand(batch, -1, -1), valid_latent=valid
        )
    from unidense_core.jointnet.train import jointnet_from_unet
    from unidense_core.training.jointnet_recipe import JointNetRecipe

    unet = randomize_(UNet2DConditionModel(**dict(TINY_SD21_UNET, block_out_channels=(64, 128))), 0, 0.05)
    r = JointNetRecipe(jointnet_from_unet(unet), BlockAutoencoder(), PromptBank(ctx))
    return r, dict(
        rgb_latent=z(), depth_latent=z(), timesteps=t, noise=z(8), context=ctx.expand(batch, -1, -1), valid_latent=valid
    )


def child(method: str, checkpointing: bool, steps: int, batch: int, latent: int) -> dict:
    torch.set_num_threads(1)
    recipe, inputs = build(method, latent, batch)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe.place(device, torch.float32)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if checkpointing:
        recipe.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(recipe.trainable_parameters(), lr=1e-4)
    recipe.module.train()

    def step():
        loss = recipe.module(**inputs)
        loss.backward()
        opt.step()
        opt.zero_grad()

    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else rss_mb()
    step()  # warm-up: allocates gradients and the optimizer state (the same with and without checkpointing)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "steps_per_s": steps / elapsed,
        "peak_mb": peak - base,
        "trainable": recipe.trainable_count(),
        "device": device.type,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", nargs="+", default=["merge", "dmp", "jointnet"], choices=["merge", "dmp", "jointnet"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, ckpt = args.child.split(":")
        print(json.dumps(child(method, ckpt == "on", args.steps, args.batch, args.latent)))
        return
    print(
        f"batch {args.batch}, latent {args.latent}x{args.latent}, {args.steps} timed steps, 1 thread, 1 process per row"
    )
    for method in args.method:
        res = {}
        for ckpt in ("off", "on"):
            cmd = [sys.executable, __file__, "--child", f"{method}:{ckpt}", "--steps", str(args.steps),
                   "--batch", str(args.batch), "--latent", str(args.latent)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            res[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[ckpt]
            print(f"{method:9s} checkpointing {ckpt:3s}: {r['steps_per_s']:.2f} steps/s, peak {r['peak_mb']:.0f} MB "
                  f"above the model ({r['device']}, {r['trainable'] / 1e6:.2f} M trainable)")  # fmt: skip
        print(f"{method:9s} on/off: speed x{res['on']['steps_per_s'] / res['off']['steps_per_s']:.2f}, "
              f"peak memory x{res['on']['peak_mb'] / max(res['off']['peak_mb'], 1e-6):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
