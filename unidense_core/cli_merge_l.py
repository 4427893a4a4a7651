"""``python -m unidense_core merge-l-depth``: depth from an image with FLUX.1-dev + MERGE-L converters.

Kept apart from ``cli.py`` (one function to register the subcommand, one to run it) so the per-method CLI can
take it over unchanged.
"""

from __future__ import annotations

import argparse

COMMAND = "merge-l-depth"


def add_merge_l_parser(sub) -> argparse.ArgumentParser:
    """Register ``merge-l-depth`` on an argparse subparsers object."""
    p = sub.add_parser(COMMAND, help="depth with FLUX.1-dev + MERGE-L converters (local folders only)")
    p.add_argument("--flux", required=True, help="local diffusers folder of FLUX.1-dev (transformer/, vae/, ...)")
    p.add_argument("--converters", required=True, help="depth_converters folder of merge-large-depth-v1 (or its root)")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="output 16-bit PNG (0 = near)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="official: bf16")
    p.add_argument("--empty-prompt", help="saved CLIP+T5 embedding of '' (else CLIP-L and T5 are loaded)")
    p.add_argument("--save-empty-prompt", help="write the empty prompt's embedding here for next time")
    p.add_argument("--raw", help="also save the float depth as .npy")
    p.add_argument("--resize-to-input", action="store_true", help="resize back from the size floored to 16 px")
    return p


def run_merge_l(args: argparse.Namespace) -> int:
    """Run ``merge-l-depth`` with parsed arguments."""
    import numpy as np
    import torch
    from PIL import Image

    from .io.prompt_embeddings import save_prompt_embedding
    from .merge.flux_pipeline import MergeFluxPipeline

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    pipe = MergeFluxPipeline.from_folders(
        args.flux,
        args.converters,
        empty_prompt_path=args.empty_prompt,
        device=args.device,
        dtype=dtype,
        load_text_encoders=args.empty_prompt is None,
    )
    if args.save_empty_prompt:
        ctx, pooled = pipe.encode_prompt("")
        save_prompt_embedding(args.save_empty_prompt, ctx, prompt="", encoder="clip_l+t5xxl (512)", pooled=pooled)
    g = torch.Generator().manual_seed(args.seed)
    image = Image.open(args.image).convert("RGB")
    depth = pipe.estimate_depth(image, args.steps, generator=g, resize_to_input=args.resize_to_input)[0].cpu()
    if args.raw:
        np.save(args.raw, depth.numpy())
    Image.fromarray((depth.clamp(0, 1).numpy() * 65535).astype(np.uint16)).save(args.out)
    print(f"wrote {args.out}")
    return 0
