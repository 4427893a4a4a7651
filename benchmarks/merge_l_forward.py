"""MERGE-L cost at FLUX width: one depth-mode forward over one generation forward, measured and computed.

Random weights at FLUX.1-dev's width (3072, 24 heads × 128) with a few blocks: by default 1 double + 2 single
blocks (FLUX.1-dev's 19 : 38 proportion) and 1 group per stage, so each converter runs before every base block of
its group, as in the real model (one converter pass per base block). ~4 GB in fp32. The two forwards are timed
alternately in one run and the ratio of medians is reported, next to the FLOP ratio of this configuration and of
the full FLUX.1-dev at 512² and 1024².
    python benchmarks/merge_l_forward.py [--double 1 --single 2] [--img-tokens 256 --txt-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unidense_core.merge.flux_converters import FluxConverterConfig, MergeFluxConverters  # noqa: E402
from unidense_core.merge.flux_forward import MergeFluxTransformer  # noqa: E402
from unidense_core.tiny import FLUX_DEV  # noqa: E402

D = 3072


def block_flops(tokens: int) -> float:
    """Multiply-adds ×2 of one FLUX block on ``tokens`` tokens: 12·D² per token in the linears (a double block
    sends each token through one stream: qkv 3D², proj D², MLP 8D²; a single block: linear1 7D², linear2 5D²),
    plus attention 4·S²·D."""
    return 2 * 12 * D * D * tokens + 4 * tokens * tokens * D


def forward_flops(n_double: int, n_single: int, img: int, txt: int) -> tuple[float, float]:
    """(generation, depth) FLOPs of the transformer blocks; depth adds one in-dual converter (image tokens) per
    double block and one converter (joint sequence) per single block."""
    gen = (n_double + n_single) * block_flops(img + txt)
    return gen, gen + n_double * block_flops(img) + n_single * block_flops(img + txt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--img-tokens", type=int, default=256, help="packed image tokens (256 = 256² px)")
    ap.add_argument("--txt-tokens", type=int, default=128, help="T5 tokens (official: 512; 2:1 as at 512² px)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**dict(FLUX_DEV, num_layers=args.double, num_single_layers=args.single)).eval()
    conv = MergeFluxConverters(FluxConverterConfig(num_single_layers=1)).eval()
    model = MergeFluxTransformer(flux, conv)
    side = int(args.img_tokens**0.5)
    h, w = 2 * side, 2 * (args.img_tokens // side)
    z, z_img = torch.randn(1, 16, h, w), torch.randn(1, 16, h, w)
    ctx, pooled = torch.randn(1, args.txt_tokens, 4096), torch.randn(1, 768)
    sigma, g = torch.tensor([0.5]), torch.tensor([3.5])
    gen, dep = [], []
    with torch.no_grad():
        model(z, sigma, ctx, pooled, "generate", guidance=g)  # warm-up
        model(z, sigma, ctx, pooled, "depth", image_latent=z_img)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(z, sigma, ctx, pooled, "generate", guidance=g)
            t1 = time.perf_counter()
            model(z, sigma, ctx, pooled, "depth", image_latent=z_img)
            t2 = time.perf_counter()
            gen.append(t1 - t0)
            dep.append(t2 - t1)
    gm, dm = statistics.median(gen), statistics.median(dep)
    n_flux = sum(p.numel() for p in flux.parameters())
    n_conv = sum(p.numel() for p in conv.parameters())
    bench_gen, bench_dep = forward_flops(args.double, args.single, h * w // 4, args.txt_tokens)
    print(f"{args.double} double + {args.single} single FLUX blocks at width {D} ({n_flux / 1e6:.0f} M params), ")
    print(f"converters 1 group per stage ({n_conv / 1e6:.0f} M); {h * w // 4} image + {args.txt_tokens} text tokens, "
          f"threads {torch.get_num_threads()}, repeats {args.repeats}")  # fmt: skip
    print(f"generation forward {gm * 1e3:.0f} ms, depth forward {dm * 1e3:.0f} ms (medians)")
    print(
        f"measured depth / generation = {dm / gm:.3f}; FLOP ratio of this configuration = {bench_dep / bench_gen:.3f}"
    )
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    with torch.device("meta"):
        p_double = sum(p.numel() for p in FluxTransformerBlock(D, 24, 128).parameters())
        p_single = sum(p.numel() for p in FluxSingleTransformerBlock(D, 24, 128).parameters())
    touched = 19 * p_double + 38 * p_single
    print(
        f"full FLUX.1-dev: block parameters touched per step x{(touched + 57 * p_single) / touched:.3f} "
        f"(19 in-dual + 38 converter passes of a {p_single / 1e6:.1f} M single block; a double block is "
        f"{p_double / 1e6:.1f} M but sends each token through one of its two streams)"
    )
    for px, img in ((512, 1024), (1024, 4096)):
        fg, fd = forward_flops(19, 38, img, 512)
        print(f"full FLUX.1-dev at {px}² ({img} image + 512 text tokens): FLOP ratio {fd / fg:.3f}")


if __name__ == "__main__":
    main()
