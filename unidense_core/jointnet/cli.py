"""JointNet subcommands: ``jointnet-generate`` (text → RGB-D), ``jointnet-inpaint`` (image → depth, depth → image,
editing) and ``panorama`` (text → 360° RGB-D panorama)."""

from __future__ import annotations

import argparse

from ..dense.outputs import write_outputs
from ..dense.readout import quantile_normalize
from ..io.cli_args import (
    DTYPES,
    add_common_arguments,
    add_subcommand,
    generator,
    progress_bar,
    read_gray_tensor,
    read_latents,
    read_rgb_tensor,
)
from ..tiling.panorama import PanoramaConfig, check_canvas, preset
from .inpaint import MODES
from .panorama import PANORAMA_HEIGHT, PANORAMA_WIDTH, JointNetPanoramaPipeline, check_offsets, numpy_offsets

FOLDERS = """
folders (nothing is downloaded):
  --jointnet  an official JointNet folder with unet/ and jointnet/ (rgbd_finetune_sd21b for generation and panoramas,
              rgbd_inpaint_sd21b for inpainting), unzipped from docs-assets.developer.apple.com/ml-research/models/
              iclr24-jointnet/<name>.zip
  --sd21      a local copy of huggingface.co/stabilityai/stable-diffusion-2-1-base (vae/, text_encoder/, tokenizer/)
Depth output: channel 0 of the decoded depth image, relative disparity in [0, 1], 1 = near (--normalize: the official
1%/99% quantile stretch).
"""


def add_cli(subparsers) -> None:
    """Register ``jointnet-generate``, ``jointnet-inpaint`` and ``panorama``."""
    g = add_subcommand(
        subparsers,
        "jointnet-generate",
        "text -> RGB + depth with JointNet",
        "Joint RGB-D generation (Zhang et al., ICLR 2024) as the official jointnet_pipeline.py: DDIM with SD2.1-base's "
        "schedule, 50 steps, CFG 7.5 against the negative (empty) prompt, 512×512, N(0, I) on 8 channels.\n" + FOLDERS,
    )
    _common(g, 512, 512)
    g.add_argument("--latents", help="starting noise [1,8,H/8,W/8] as .npy (else drawn from --seed)")
    g.set_defaults(run=run_generate)

    i = add_subcommand(
        subparsers,
        "jointnet-inpaint",
        "image -> depth, depth -> image, RGB-D editing with JointNet",
        "Channel-wise inpainting as the official jointnet_inpaint_pipeline.py: rgb2j keeps the image and generates "
        "the depth, j2rgb the reverse, custom uses --mask-rgb/--mask-depth (white = generate). Inputs are used at "
        "their size (multiples of 8; official 512×512); depth images are disparity, near = bright (16-bit PNGs "
        "read / 65535). DDIM 50 steps, CFG 7.5, strength 1.\n" + FOLDERS,
    )
    _common(i, None, None)
    i.add_argument("--preset", choices=MODES[:2] + ("custom",), default="rgb2j", help="what to generate")
    i.add_argument("--image", help="RGB input (rgb2j, custom)")
    i.add_argument("--depth", help="depth input, near = bright (j2rgb, custom)")
    i.add_argument("--mask-rgb", help="custom: grey mask of the image, white = generate")
    i.add_argument("--mask-depth", help="custom: grey mask of the depth, white = generate")
    i.add_argument("--strength", type=float, default=1.0, help="denoising strength (official 1.0)")
    i.add_argument("--depth-near-dark", action="store_true", help="the depth input has near = dark: invert it")
    i.set_defaults(run=run_inpaint)

    p = add_subcommand(
        subparsers,
        "panorama",
        "text -> 360° RGB-D panorama with JointNet (tiled)",
        "RGB-D panorama as the official jointnetpano_pipeline.py: 512×2048, DDIM 50 steps, CFG 7.5, square tiles "
        "(window = canvas height) every 32 latent px with horizontal wrap, one random offset in [0, 32) for all tiles "
        "per step, the whole canvas as an extra tile of weight 5 for the first 40% of the steps, linear edge weights "
        "over 8 latent px, decoding with 8 latent px of circular padding. The official offsets come from numpy's "
        "global RNG: give them with --offsets or --numpy-seed to reproduce an official run.\n" + FOLDERS,
    )
    _common(p, PANORAMA_HEIGHT, PANORAMA_WIDTH)
    p.add_argument("--latents", help="starting noise [1,8,H/8,W/8] as .npy (else drawn from --seed)")
    offsets = p.add_mutually_exclusive_group()
    offsets.add_argument("--offsets", help="comma-separated tile offsets, one per step, each in [0, stride)")
    offsets.add_argument("--numpy-seed", type=int, help="offsets as the official run after numpy.random.seed(N)")
    p.add_argument("--stride", type=int, default=32, help="latent px between tiles (official 32)")
    p.add_argument("--window", type=int, default=0, help="tile side in latent px; 0 = canvas height (official)")
    p.add_argument("--view-batch-size", type=int, default=8, help="tiles per model call (official 8)")
    p.add_argument("--full-canvas-fraction", type=float, default=0.4, help="steps with the whole-canvas tile")
    p.add_argument("--full-canvas-weight", type=float, default=5.0, help="weight of the whole-canvas tile")
    p.add_argument("--boundary", type=int, default=8, help="linear edge ramp of the tile weights, latent px")
    p.add_argument("--no-random-offset", action="store_true", help="keep the tiles fixed (MultiDiffusion)")
    p.set_defaults(run=run_panorama)


def _common(p: argparse.ArgumentParser, height: int | None, width: int | None) -> None:
    p.add_argument("--jointnet", required=True, help="official JointNet folder (unet/ + jointnet/)")
    p.add_argument("--sd21", required=True, help="local diffusers folder of stabilityai/stable-diffusion-2-1-base")
    p.add_argument("--prompt", default="", help="the prompt (official examples use a caption)")
    p.add_argument("--negative-prompt", default="", help="the unconditional prompt (official: empty)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (official 50)")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance (official 7.5)")
    if height is not None:
        p.add_argument("--height", type=int, default=height, help="height in px (multiple of 8)")
        p.add_argument("--width", type=int, default=width, help="width in px (multiple of 8)")
    p.add_argument("--normalize", action="store_true", help="official --normalize: 1%%/99%% quantiles -> 0/1")
    add_common_arguments(p)


def _pipeline(args: argparse.Namespace) -> JointNetPanoramaPipeline:
    return JointNetPanoramaPipeline.from_folders(args.jointnet, args.sd21, device=args.device, dtype=DTYPES[args.dtype])


def _write(out, args: argparse.Namespace) -> int:
    if args.normalize:
        out.depth = quantile_normalize(out.depth)
    return write_outputs(out, args.out)


def _prompt_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        generator=generator(args),
    )


def run_generate(args: argparse.Namespace) -> int:
    latents = read_latents(args.latents) if args.latents else None
    pipe = _pipeline(args)
    with progress_bar(args.steps, "JointNet") as step:
        out = pipe.generate(
            height=args.height, width=args.width, latents=latents, callback=step, **_prompt_kwargs(args)
        )
    return _write(out, args)


def run_inpaint(args: argparse.Namespace) -> int:
    image = read_rgb_tensor(args.image) if args.image else None
    depth = read_gray_tensor(args.depth) if args.depth else None
    masks = {}
    if args.preset == "custom":
        for name in ("mask_rgb", "mask_depth"):
            path = getattr(args, name)
            if path is None:
                raise ValueError(f"--preset custom needs --{name.replace('_', '-')} (white = generate).")
            masks[name] = read_gray_tensor(path)[:, 0]
    elif args.preset == "rgb2j" and image is None:
        raise ValueError("--preset rgb2j (image -> depth) needs --image.")
    elif args.preset == "j2rgb" and depth is None:
        raise ValueError("--preset j2rgb (depth -> image) needs --depth.")
    pipe = _pipeline(args)
    with progress_bar(args.steps, f"JointNet {args.preset}") as step:
        out = pipe.inpaint(
            image=image,
            depth=depth,
            preset=args.preset,
            strength=args.strength,
            depth_near_white=not args.depth_near_dark,
            callback=step,
            **masks,
            **_prompt_kwargs(args),
        )
    return _write(out, args)


def panorama_config(args: argparse.Namespace) -> PanoramaConfig:
    """The panorama tiling from the command line (the official ``jointnet_pano`` preset by default)."""
    return preset(
        "jointnet_pano",
        stride=args.stride,
        window=args.window or None,
        view_batch_size=args.view_batch_size,
        full_canvas_fraction=args.full_canvas_fraction,
        full_canvas_weight=args.full_canvas_weight,
        boundary=args.boundary,
        random_offset=not args.no_random_offset,
    )


def run_panorama(args: argparse.Namespace) -> int:
    config = panorama_config(args)
    offsets = None
    if args.offsets:
        try:
            offsets = [int(v) for v in args.offsets.split(",")]
        except ValueError as exc:
            raise ValueError(f"--offsets must be comma-separated integers, got {args.offsets!r}.") from exc
    elif args.numpy_seed is not None:
        offsets = numpy_offsets(args.steps, config.stride, args.numpy_seed)
    if args.height % 8 or args.width % 8:
        raise ValueError(f"--height and --width must be multiples of 8, got {args.height}×{args.width}.")
    check_canvas(args.height // 8, args.width // 8, config)  # before loading: the errors name the sizes to use
    if offsets is not None:
        check_offsets(offsets, args.steps, config)
    latents = read_latents(args.latents) if args.latents else None
    pipe = _pipeline(args)
    with progress_bar(args.steps, "JointNet panorama") as step:
        out = pipe.panorama(
            height=args.height,
            width=args.width,
            config=config,
            offsets=offsets,
            latents=latents,
            callback=step,
            **_prompt_kwargs(args),
        )
    return _write(out, args)
