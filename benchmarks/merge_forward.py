"""MERGE-B cost at PixArt-XL size: one depth-mode forward over one generation forward (goal <= 1.5).

Random weights at the real shapes (28 blocks, d=1152; 14 converters), a small latent, CPU. The two forwards are
timed alternately in one run and the ratio of medians is reported (the machine is shared; absolute times vary).
    python benchmarks/merge_forward.py [--latent 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unidense_core.merge.converters import ConverterConfig, MergeConverters  # noqa: E402
from unidense_core.merge.forward import MergePixArtTransformer  # noqa: E402
from unidense_core.tiny import PIXART_XL_512  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px, 256 tokens)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    fixed = PixArtTransformer2DModel(**PIXART_XL_512).eval()
    conv = MergeConverters(ConverterConfig()).eval()
    model = MergePixArtTransformer(fixed, conv)
    n_fixed = sum(p.numel() for p in fixed.parameters())
    n_conv = sum(p.numel() for p in conv.parameters())
    b, s = 1, args.latent
    z, z_img = torch.randn(b, 4, s, s), torch.randn(b, 4, s, s)
    ctx, mask = torch.randn(b, 8, 4096), torch.ones(b, 8, dtype=torch.int64)
    t = torch.tensor([500])
    gen, dep = [], []
    with torch.no_grad():
        model(z, t, ctx, mask, mode="generate")  # warm-up
        model(z, t, ctx, mask, mode="depth", image_latent=z_img)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(z, t, ctx, mask, mode="generate")
            t1 = time.perf_counter()
            model(z, t, ctx, mask, mode="depth", image_latent=z_img)
            t2 = time.perf_counter()
            gen.append(t1 - t0)
            dep.append(t2 - t1)
    g, d = statistics.median(gen), statistics.median(dep)
    print(f"PixArt-XL params {n_fixed / 1e6:.1f} M, converters {n_conv / 1e6:.1f} M ({100 * n_conv / n_fixed:.1f}%)")
    print(f"latent {s}x{s} ({(s // 2) ** 2} tokens), threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"generation forward {g * 1e3:.0f} ms, depth forward {d * 1e3:.0f} ms (medians)")
    print(f"depth / generation = {d / g:.3f}  (goal <= 1.5; converters add ~6/14 of a block's FLOPs per block)")


if __name__ == "__main__":
    main()
