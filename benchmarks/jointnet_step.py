"""JointNet cost at SD2.1-base size: one joint RGB-D step over one single-UNet step (goal <= 2.1).

Random weights at the real shapes (two SD2.1-base UNets, 865.9 M parameters each, plus the exchange convs and the
inpainting model's masked-latent conv), a small latent, CPU. The single step is the RGB branch's own UNet (same
weights). Both are timed alternately in one run and the ratio of medians is reported (the machine is shared;
absolute times vary).
    python benchmarks/jointnet_step.py [--latent 16] [--repeats 5] [--batch 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unidense_core.jointnet.model import SD21_BASE_UNET, ExchangeConfig, JointNetRGBD, build_branch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128 px)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2, help="2 = one CFG step (uncond + cond)")
    ap.add_argument("--threads", type=int, default=1, help="1 is steadiest on a shared machine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ex = ExchangeConfig.from_unet_config({**SD21_BASE_UNET, "has_masked_latent_input": True})
    model = JointNetRGBD(build_branch(SD21_BASE_UNET, ex), build_branch(SD21_BASE_UNET, ex)).eval()
    single = model.rgb.unet
    n_unet = sum(p.numel() for p in single.parameters())
    n_ex = sum(p.numel() for p in model.rgb.exchange.parameters())
    b, s = args.batch, args.latent
    z = torch.randn(b, 8, s, s)
    masked = torch.cat([torch.ones(b, 1, s, s), torch.randn(b, 4, s, s), torch.zeros(b, 5, s, s)], dim=1)
    ctx, t = torch.randn(b, 77, 1024), torch.tensor(501)
    one, joint = [], []
    with torch.no_grad():
        single(z[:, :4], t, ctx)  # warm-up
        model(z, t, ctx, masked)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            single(z[:, :4], t, ctx)
            t1 = time.perf_counter()
            model(z, t, ctx, masked)
            t2 = time.perf_counter()
            one.append(t1 - t0)
            joint.append(t2 - t1)
    o, j = statistics.median(one), statistics.median(joint)
    print(f"SD2.1-base UNet params {n_unet / 1e6:.1f} M, exchange per branch {n_ex / 1e6:.2f} M (with masked conv)")
    print(f"latent {b}x8x{s}x{s}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"single-UNet step {o * 1e3:.0f} ms, joint step {j * 1e3:.0f} ms (medians)")
    print(f"joint / single = {j / o:.3f}  (goal <= 2.1; two UNets plus 1x1 exchange convs on the skips)")


if __name__ == "__main__":
    main()
