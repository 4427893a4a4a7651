"""DMP subcommand: ``dmp`` (depth, normals or an image task from SD 1.4 + an official DMP LoRA folder)."""

from __future__ import annotations

import argparse

from ..dense.outputs import write_outputs
from ..io.cli_args import DTYPES, add_common_arguments, add_subcommand, generator, progress_bar, read_rgb
from .pipeline import PROCESSING_RESOLUTION, TASKS, DMPPipeline
from .sampler import DEFAULT_STEPS, OFFICIAL_GUIDANCE, VARIANTS


def add_cli(subparsers) -> None:
    """Register ``dmp``."""
    p = add_subcommand(
        subparsers,
        "dmp",
        "depth / normals / image tasks with DMP (SD 1.4 + task LoRA)",
        "DMP (Lee et al., CVPR 2024) as the official Pipeline.__call__: shorter side -> 512 (bicubic), image "
        "latent sampled from the VAE posterior, 5 deterministic DDIM steps in v-prediction starting from the image "
        "latent (t = 801, 601, 401, 201, 1), decode, read-out, bicubic resize back. -notext checkpoints: no "
        "--prompt (empty prompt, no CFG). Captioned checkpoints: --prompt with a caption of the image and CFG 2.\n"
        "Outputs: depth (relative, min-max per image, 0 = near; metres with --target-scale, 8 for the paper's "
        "bedroom depth model), normals (unit vectors + the normal map), image (albedo, shading, segmentation).\n\n"
        "folders (nothing is downloaded):\n"
        "  --sd14  a local copy of huggingface.co/CompVis/stable-diffusion-v1-4 (unet/, vae/, text_encoder/, "
        "tokenizer/)\n"
        "  --lora  an official DMP checkpoint folder (e.g. depth-hypersim-notext/) from the Google Drive folder linked "
        "in github.com/shinying/dmp",
    )
    p.add_argument("--sd14", required=True, help="local diffusers folder of CompVis/stable-diffusion-v1-4")
    p.add_argument("--lora", required=True, help="official DMP checkpoint folder (or its LoRA file)")
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--task", choices=TASKS, default="depth", help="what the LoRA predicts (its read-out)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps, 1-20 (official 5)")
    p.add_argument("--variant", choices=VARIANTS, default="standard", help="standard DDIM (official) or oracle")
    p.add_argument("--prompt", help="caption for captioned checkpoints (official: a BLIP-2 caption); omit for -notext")
    p.add_argument("--cfg", type=float, default=OFFICIAL_GUIDANCE, help="guidance with --prompt (official 2)")
    p.add_argument(
        "--processing-resolution",
        type=int,
        default=PROCESSING_RESOLUTION,
        help="shorter side during processing in px (official 512); 0 = the image's own size",
    )
    p.add_argument(
        "--target-scale", type=float, default=0.0, help="depth: metres = value × scale (8: bedroom model); 0 = min-max"
    )
    add_common_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    image = read_rgb(args.image)
    pipe = DMPPipeline.from_folders(args.sd14, args.lora, device=args.device, dtype=DTYPES[args.dtype])
    with progress_bar(args.steps, f"DMP {args.task}") as step:
        out = pipe(
            image,
            task=args.task,
            num_inference_steps=args.steps,
            variant=args.variant,
            prompt=args.prompt,
            guidance_scale=args.cfg,
            processing_resolution=args.processing_resolution,
            target_scale=args.target_scale,
            generator=generator(args),
            callback=step,
        )
    return write_outputs(out, args.out)
