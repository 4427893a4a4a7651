"""MERGE subcommands: ``merge-depth`` and ``merge-generate`` (one PixArt-α), ``merge-l-depth`` (FLUX.1-dev); local
folders only."""

from __future__ import annotations

import argparse

from ..dense.outputs import write_outputs
from ..io.cli_args import DTYPES, add_common_arguments, add_subcommand, generator, progress_bar, read_rgb

FOLDERS = """
folders (nothing is downloaded):
  --pixart      a local copy of huggingface.co/PixArt-alpha/PixArt-XL-2-512x512 (transformer/, vae/, scheduler/;
                text_encoder/ + tokenizer/ for prompts)
  --converters  the depth_converters folder of a MERGE-B checkpoint (config.json + diffusion_pytorch_model.safetensors),
                the checkpoint's root, or the .safetensors file
"""


def add_cli(subparsers) -> None:
    """Register ``merge-depth`` and ``merge-generate``."""
    p = add_subcommand(
        subparsers,
        "merge-depth",
        "depth from an image with PixArt-α + MERGE converters",
        "Depth of one image with MERGE-B (Lin et al., NeurIPS 2025), as the official MERGEPixArtPipeline: the nearest "
        "PixArt 512 aspect-ratio bin, the image latent sampled from the VAE posterior, DPM-Solver++ (2M) for 20 "
        "steps from N(0, I), the empty prompt without CFG, bilinear resize back, mean of the decoded channels. "
        "Output: affine-invariant depth in [0, 1], 0 = near.\n" + FOLDERS,
    )
    _folders(p)
    p.add_argument("--image", required=True, help="input image (any size; binned to a PixArt 512 bin)")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps (official 20)")
    p.add_argument("--no-binning", action="store_true", help="run at the image's own size (multiple of 16)")
    p.add_argument("--empty-prompt", help="saved T5 embedding of '' (else text_encoder/ is loaded: ~9 GB)")
    p.add_argument("--save-empty-prompt", help="write the empty prompt's embedding here for later runs")
    add_common_arguments(p)
    p.set_defaults(run=run_depth)

    g = add_subcommand(
        subparsers,
        "merge-generate",
        "text-to-image with the same PixArt-α",
        "Text-to-image with the untouched PixArt-α (diffusers' PixArtAlphaPipeline; the converters stay off): "
        "DPM-Solver++ 20 steps, CFG 4.5 against the empty prompt, 512×512 with resolution binning.\n" + FOLDERS,
    )
    _folders(g)
    text = g.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="the prompt (loads the T5 text encoder)")
    text.add_argument("--prompt-embedding", help="a saved T5 embedding of the prompt (.safetensors)")
    g.add_argument("--empty-prompt", help="saved T5 embedding of '' for CFG (else the text encoder is loaded)")
    g.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps (official 20)")
    g.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance (PixArt-α default 4.5)")
    g.add_argument("--height", type=int, default=512, help="image height in px")
    g.add_argument("--width", type=int, default=512, help="image width in px")
    g.add_argument("--no-binning", action="store_true", help="no resolution binning (needs the 512 model's bins)")
    add_common_arguments(g)
    g.set_defaults(run=run_generate)

    f = add_subcommand(
        subparsers,
        "merge-l-depth",
        "depth from an image with FLUX.1-dev + MERGE-L converters",
        "Depth of one image with MERGE-L (Lin et al., NeurIPS 2025), as the official MERGEFluxPipeline: the image's "
        "own size floored to multiples of 16, its FLUX VAE latent sampled, shifted and scaled, the empty prompt "
        "through CLIP-L (pooled) and T5 (512 tokens), guidance 0, 20 Euler steps on linspace(1, 1/N, N) with FLUX's "
        "resolution-dependent shift, mean of the decoded channels. Output: affine-invariant depth in [0, 1], "
        "0 = near. The official runs use bf16.\n" + FLUX_FOLDERS,
    )
    f.add_argument("--flux", required=True, help="local diffusers folder of FLUX.1-dev (transformer/, vae/, ...)")
    f.add_argument("--converters", required=True, help="MERGE-L depth_converters folder (or its root)")
    f.add_argument("--image", required=True, help="input image (any size; floored to multiples of 16)")
    f.add_argument("--steps", type=int, default=20, help="Euler steps (official 20)")
    f.add_argument("--resize-to-input", action="store_true", help="resize the depth back to the image's size")
    f.add_argument("--empty-prompt", help="saved CLIP+T5 embedding of '' (else CLIP-L and T5 are loaded: ~10 GB)")
    f.add_argument("--save-empty-prompt", help="write the empty prompt's embedding here for later runs")
    add_common_arguments(f)
    f.set_defaults(run=run_flux_depth)


FLUX_FOLDERS = """
folders (nothing is downloaded):
  --flux        a local copy of huggingface.co/black-forest-labs/FLUX.1-dev (transformer/, vae/, scheduler/;
                text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/ for prompts)
  --converters  the depth_converters folder of hongk1998/merge-large-depth-v1 (config.json +
                diffusion_pytorch_model.safetensors), or the checkpoint's root
"""


def _folders(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixart", required=True, help="local diffusers folder of PixArt-XL-2-512x512")
    p.add_argument("--converters", required=True, help="MERGE-B depth_converters folder (or root / .safetensors)")


def run_depth(args: argparse.Namespace) -> int:
    from ..io.prompt_embeddings import save_prompt_embedding
    from .pipeline import MergePipeline

    image = read_rgb(args.image)
    pipe = MergePipeline.from_folders(
        args.pixart,
        args.converters,
        empty_prompt_path=args.empty_prompt,
        device=args.device,
        dtype=DTYPES[args.dtype],
        load_text_encoder=args.empty_prompt is None,
    )
    if args.save_empty_prompt:
        ctx, mask = pipe.encode_prompt("")
        save_prompt_embedding(args.save_empty_prompt, ctx, mask, prompt="", encoder="t5-xxl")
        print(f"wrote {args.save_empty_prompt}")
    with progress_bar(args.steps, "MERGE depth") as step:
        out = pipe.estimate_depth(
            image, args.steps, generator(args), resolution_binning=not args.no_binning, callback=step
        )
    return write_outputs(out, args.out)


def run_generate(args: argparse.Namespace) -> int:
    from ..io.prompt_embeddings import load_prompt_embedding
    from .pipeline import MergePipeline

    needs_t5 = args.prompt is not None or (args.cfg > 1 and args.empty_prompt is None)
    embeds = mask = None
    if args.prompt_embedding:
        embeds, mask, _ = load_prompt_embedding(args.prompt_embedding)
    pipe = MergePipeline.from_folders(
        args.pixart,
        args.converters,
        empty_prompt_path=args.empty_prompt,
        device=args.device,
        dtype=DTYPES[args.dtype],
        load_text_encoder=needs_t5,
    )
    if embeds is not None:
        embeds = embeds.to(pipe.device, pipe.dtype)
        mask = None if mask is None else mask.to(pipe.device)
    with progress_bar(args.steps, "PixArt-α") as step:
        out = pipe.generate(
            args.prompt,
            prompt_embeds=embeds,
            prompt_mask=mask,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            generator=generator(args),
            resolution_binning=not args.no_binning,
            callback=step,
        )
    return write_outputs(out, args.out)


def run_flux_depth(args: argparse.Namespace) -> int:
    from ..io.prompt_embeddings import save_prompt_embedding
    from .flux_pipeline import MergeFluxPipeline

    image = read_rgb(args.image)
    pipe = MergeFluxPipeline.from_folders(
        args.flux,
        args.converters,
        empty_prompt_path=args.empty_prompt,
        device=args.device,
        dtype=DTYPES[args.dtype],
        load_text_encoders=args.empty_prompt is None,
    )
    if args.save_empty_prompt:
        ctx, pooled = pipe.encode_prompt("")
        save_prompt_embedding(args.save_empty_prompt, ctx, prompt="", encoder="clip_l+t5xxl (512)", pooled=pooled)
        print(f"wrote {args.save_empty_prompt}")
    with progress_bar(args.steps, "MERGE-L depth") as step:
        out = pipe.estimate_depth(
            image, args.steps, generator(args), resize_to_input=args.resize_to_input, callback=step
        )
    return write_outputs(out, args.out)
