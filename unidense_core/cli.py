"""Command line: ``python -m unidense_core <command>``.

selfcheck                 run every capability end to end on tiny random models (no downloads)
merge-depth               depth from an image with PixArt-α + MERGE converters (local folders only)
merge-generate            text-to-image with the same PixArt-α
train merge|dmp|jointnet  train converters / a LoRA / the depth branch (accelerate; official recipes)
evaluate                  depth metrics on NYUv2, KITTI, ETH3D, ScanNet, DIODE or a pair folder
infer                     depth for a folder of images, sharded over accelerate processes, resumable
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m unidense_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("selfcheck", help="end-to-end check on tiny random models")
    sc.add_argument("only", nargs="*", help="run only checks whose name contains these words")
    for name in ("merge-depth", "merge-generate"):
        p = sub.add_parser(name)
        p.add_argument("--pixart", required=True, help="local diffusers folder of PixArt-XL-2-512x512")
        p.add_argument("--converters", required=True, help="depth_converters folder (or repo root / .safetensors)")
        p.add_argument("--out", required=True, help="output PNG")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")
        if name == "merge-depth":
            p.add_argument("--image", required=True)
            p.add_argument("--empty-prompt", help="saved T5 embedding of '' (else the text encoder is loaded)")
            p.add_argument("--save-empty-prompt", help="write the empty prompt's embedding here for next time")
            p.add_argument("--raw", help="also save the float depth as .npy")
        else:
            p.add_argument("--prompt", required=True)
            p.add_argument("--cfg", type=float, default=4.5)
    # --- train / evaluate / infer: registered by their own modules (unidense_core/training, unidense_core/evaluation)
    from .evaluation.cli import add_cli as add_evaluation_cli
    from .training.cli import add_cli as add_training_cli

    add_training_cli(sub)
    add_evaluation_cli(sub)
    # ---
    args = ap.parse_args(argv)
    if hasattr(args, "func"):
        return args.func(args)
    if args.command == "selfcheck":
        from .selfcheck import run

        return 1 if run(args.only) else 0
    return _run_merge(args)


def _run_merge(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .io.prompt_embeddings import save_prompt_embedding
    from .merge.pipeline import MergePipeline

    depth_mode = args.command == "merge-depth"
    empty = getattr(args, "empty_prompt", None)
    pipe = MergePipeline.from_folders(
        args.pixart,
        args.converters,
        empty_prompt_path=empty,
        device=args.device,
        load_text_encoder=not depth_mode or empty is None,
    )
    g = torch.Generator().manual_seed(args.seed)
    if depth_mode:
        if args.save_empty_prompt:
            ctx, mask = pipe.encode_prompt("")
            save_prompt_embedding(args.save_empty_prompt, ctx, mask, prompt="", encoder="t5-xxl")
        depth = pipe.estimate_depth(Image.open(args.image).convert("RGB"), args.steps, generator=g)[0].cpu()
        if args.raw:
            np.save(args.raw, depth.numpy())
        Image.fromarray((depth.clamp(0, 1).numpy() * 65535).astype(np.uint16)).save(args.out)
    else:
        img = pipe.generate(args.prompt, num_inference_steps=args.steps, guidance_scale=args.cfg, generator=g)[0]
        Image.fromarray((img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(args.out)
    print(f"wrote {args.out}")
    return 0
