"""Depth estimators the evaluation and batch-inference commands can run, behind one small interface.

An :class:`Estimator` takes images [B,3,H,W] in [0, 1] with one seed per image and returns [B,H,W] at the input
size. Each image is predicted with a generator seeded by its own seed, so results do not depend on how a folder
is split across processes. ``ESTIMATORS`` maps a name to its command-line options and its builder; a method adds
itself there (DMP's builder uses the core sampler until ``dmp/pipeline.py`` lands; switching is one line).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dense.readout import dmp_depth
from ..dmp.sampler import DEFAULT_STEPS as DMP_STEPS
from ..dmp.sampler import sample_dmp, unet_velocity_fn


class Estimator(Protocol):
    name: str
    kind: str  # "depth" (near = small) or "disparity" (near = large): the evaluation aligns in that space
    unit_scale: float  # the value written as 1.0 in a 16-bit PNG (1 for outputs in [0, 1]; 8 for DMP metres)

    def predict(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor: ...

    def settings(self) -> dict[str, Any]: ...


def ensemble(members: list[torch.Tensor], affine: bool = True) -> torch.Tensor:
    """Combine N predictions [H,W] [I]: align each by least squares to the pixel-wise median (affine-invariant
    outputs), then take the median. MERGE's official code has no ensembling; this mirrors Marigold's idea simply."""
    if len(members) == 1:
        return members[0]
    stack = torch.stack([m.double() for m in members])  # [N,H,W]
    ref = stack.median(dim=0).values
    if affine:
        aligned = []
        for m in stack:
            a = torch.stack([m.flatten(), torch.ones_like(m.flatten())], 1)
            x = torch.linalg.lstsq(a, ref.flatten()[:, None]).solution
            aligned.append((a @ x).view_as(m))
        stack = torch.stack(aligned)
    return stack.median(dim=0).values.to(members[0].dtype)


def resize_to(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[B,C,H,W] or [B,H,W] to ``size`` (bilinear/bicubic, align_corners False)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = x[:, None] if x.ndim == 3 else x
    y = F.interpolate(y.float(), size=size, mode=mode, align_corners=False)
    return y[:, 0] if x.ndim == 3 else y


def shorter_side_size(h: int, w: int, side: int, multiple: int) -> tuple[int, int]:
    """(H, W) with the shorter side = ``side`` (aspect kept), both rounded to ``multiple``."""
    s = side / min(h, w)
    return max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple)


@dataclass
class MergeEstimator:
    """MERGE-B through :class:`~unidense_core.merge.pipeline.MergePipeline` (official: 20 steps, 512 bins)."""

    pipe: Any
    steps: int = 20
    ensemble_size: int = 1
    resolution_binning: bool = True
    name: str = "merge"
    kind: str = "depth"
    unit_scale: float = 1.0

    def predict(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for img, seed in zip(images, seeds, strict=True):
            members = [
                self.pipe.estimate_depth(
                    img[None],
                    self.steps,
                    generator=torch.Generator().manual_seed(seed + 1_000_003 * m),
                    resolution_binning=self.resolution_binning,
                )
                .depth[0]
                .cpu()
                for m in range(self.ensemble_size)
            ]
            out.append(ensemble(members))
        return torch.stack(out)

    def settings(self) -> dict[str, Any]:
        res = "nearest PixArt-α 512 aspect bin (official)" if self.resolution_binning else "native (multiple of 16)"
        return {
            "steps": self.steps,
            "ensemble_size": self.ensemble_size,
            "resolution": res,
            "sampler": "DPM-Solver++ 2M",
        }


@dataclass
class JointNetEstimator:
    """JointNet image → depth: channel-wise inpainting ``rgb2j`` (official 50 DDIM steps, 512×512)."""

    pipe: Any
    prompt_embeds: torch.Tensor
    steps: int = 50
    guidance_scale: float = 1.0
    size: tuple[int, int] = (512, 512)
    ensemble_size: int = 1
    name: str = "jointnet"
    kind: str = "disparity"
    unit_scale: float = 1.0

    def predict(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for img, seed in zip(images, seeds, strict=True):
            x = resize_to(img[None], self.size, "bilinear").clamp(0, 1)
            members = []
            for m in range(self.ensemble_size):
                res = self.pipe.inpaint(
                    prompt_embeds=self.prompt_embeds,
                    image=x,
                    preset="rgb2j",
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    generator=torch.Generator().manual_seed(seed + 1_000_003 * m),
                )
                members.append(resize_to(res.depth.cpu(), tuple(img.shape[-2:]))[0])
            out.append(ensemble(members))
        return torch.stack(out)

    def settings(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "ensemble_size": self.ensemble_size,
            "resolution": f"{self.size[1]}×{self.size[0]} (official), resized back bilinear",
            "sampler": "DDIM, channel-wise inpainting rgb2j",
        }


@torch.no_grad()
def dmp_predict_depth(
    unet: nn.Module,
    vae: nn.Module,
    context: torch.Tensor,
    images: torch.Tensor,
    steps: int = DMP_STEPS,
    target_scale: float = 8.0,
    seed: int = 0,
) -> torch.Tensor:
    """DMP depth (official ``Pipeline.__call__`` with a ``-notext`` LoRA): image latent sampled from the VAE
    posterior, the deterministic DDIM from it, mean of the decoded channels, × ``target_scale`` (0: min-max)."""
    dtype = next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    sf = vae.config.scaling_factor
    dist = vae.encode((images * 2 - 1).to(device, dtype)).latent_dist
    g = torch.Generator().manual_seed(seed)
    z_x = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device, dtype)) * sf  # [B,4,h,w]
    z = sample_dmp(unet_velocity_fn(unet, context.to(device, dtype)), z_x, steps)
    decoded = vae.decode(z / sf).sample.float()  # [B,3,H,W]
    return dmp_depth(decoded / 2 + 0.5, target_scale)


@dataclass
class DMPEstimator:
    """DMP depth with a ``-notext`` LoRA (official: 5 steps, shorter side 512 bicubic, resized back bicubic)."""

    unet: nn.Module
    vae: nn.Module
    context: torch.Tensor
    steps: int = DMP_STEPS
    target_scale: float = 8.0
    shorter_side: int = 512
    ensemble_size: int = 1
    name: str = "dmp"
    kind: str = "depth"
    unit_scale: float = field(default=8.0)

    def __post_init__(self) -> None:
        self.unit_scale = self.target_scale if self.target_scale > 0 else 1.0

    def predict(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for img, seed in zip(images, seeds, strict=True):
            h, w = img.shape[-2:]
            size = shorter_side_size(h, w, self.shorter_side, 8) if self.shorter_side else (h, w)
            x = resize_to(img[None], size, "bicubic").clamp(0, 1)
            members = [
                resize_to(
                    dmp_predict_depth(self.unet, self.vae, self.context, x, self.steps, self.target_scale, seed + m),
                    (h, w),
                    "bicubic",
                )[0].cpu()
                for m in range(self.ensemble_size)
            ]
            out.append(ensemble(members, affine=self.target_scale <= 0))
        return torch.stack(out)

    def settings(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "ensemble_size": self.ensemble_size,
            "target_scale": self.target_scale,
            "resolution": f"shorter side {self.shorter_side} (official), bicubic back",
            "sampler": "deterministic DDIM from the image latent",
        }


# ----------------------------------------------------------------------------------------------------------
# Registry: command-line options and builders


@dataclass(frozen=True)
class EstimatorSpec:
    add_args: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace, torch.device], Estimator]


def _merge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MERGE (--method merge)")
    g.add_argument("--pixart", help="local diffusers folder of PixArt-XL-2-512x512")
    g.add_argument("--converters", help="depth_converters folder (or repo root / .safetensors)")
    g.add_argument("--no-binning", action="store_true", help="predict at the image's own size (multiple of 16)")


def _merge_build(args: argparse.Namespace, device: torch.device) -> Estimator:
    from ..merge.pipeline import MergePipeline

    _require(args, "merge", ("pixart", "converters"))
    pipe = MergePipeline.from_folders(
        args.pixart,
        args.converters,
        empty_prompt_path=args.empty_prompt,
        device=device,
        load_text_encoder=args.empty_prompt is None,
    )
    return MergeEstimator(pipe, args.steps or 20, args.ensemble, not args.no_binning)


def _jointnet_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("JointNet (--method jointnet)")
    g.add_argument("--jointnet", help="JointNet folder with unet/ and jointnet/ (rgbd_inpaint_sd21b)")
    g.add_argument("--sd21", help="local diffusers folder of stable-diffusion-2-1-base (VAE, CLIP, scheduler)")
    g.add_argument("--guidance", type=float, default=1.0, help="CFG scale (with the empty prompt CFG is a no-op)")


def _jointnet_build(args: argparse.Namespace, device: torch.device) -> Estimator:
    from ..io.prompt_embeddings import load_prompt_embedding
    from ..jointnet.pipeline import JointNetPipeline

    _require(args, "jointnet", ("jointnet", "sd21"))
    pipe = JointNetPipeline.from_folders(args.jointnet, args.sd21, device, load_text_encoder=args.empty_prompt is None)
    ctx = load_prompt_embedding(args.empty_prompt)[0] if args.empty_prompt else pipe.encode_prompt("")
    return JointNetEstimator(pipe, ctx.to(device), args.steps or 50, args.guidance, ensemble_size=args.ensemble)


def _dmp_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DMP (--method dmp)")
    g.add_argument("--sd", help="local diffusers folder of stable-diffusion-v1-4 (UNet, VAE, CLIP)")
    g.add_argument("--lora", help="DMP LoRA folder (e.g. ckpt/depth-hypersim-notext) or file")
    g.add_argument("--target-scale", type=float, default=8.0, help="metres per unit of the LoRA (0: min-max)")


def _dmp_build(args: argparse.Namespace, device: torch.device) -> Estimator:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..dmp.lora import apply_lora_peft, load_lora
    from ..io.checkpoints import require_subfolder
    from ..io.prompt_embeddings import load_prompt_embedding

    _require(args, "dmp", ("sd", "lora"))
    hint = "Expected a diffusers folder of CompVis/stable-diffusion-v1-4."
    unet = UNet2DConditionModel.from_pretrained(require_subfolder(args.sd, "unet", hint), local_files_only=True)
    unet = apply_lora_peft(unet, load_lora(args.lora)).to(device).eval()
    vae = AutoencoderKL.from_pretrained(require_subfolder(args.sd, "vae", hint), local_files_only=True).to(device)
    if args.empty_prompt:
        ctx = load_prompt_embedding(args.empty_prompt)[0]
    else:
        from transformers import CLIPTextModel, CLIPTokenizer

        from ..training.prompts import encode_empty_clip

        enc = CLIPTextModel.from_pretrained(require_subfolder(args.sd, "text_encoder", hint), local_files_only=True)
        tok = CLIPTokenizer.from_pretrained(require_subfolder(args.sd, "tokenizer", hint), local_files_only=True)
        ctx = encode_empty_clip(enc, tok)
    return DMPEstimator(
        unet, vae, ctx.to(device), args.steps or DMP_STEPS, args.target_scale, ensemble_size=args.ensemble
    )


ESTIMATORS: dict[str, EstimatorSpec] = {
    "merge": EstimatorSpec(_merge_args, _merge_build),
    "jointnet": EstimatorSpec(_jointnet_args, _jointnet_build),
    "dmp": EstimatorSpec(_dmp_args, _dmp_build),  # swap the builder for dmp/pipeline.py when it lands
}


def _require(args: argparse.Namespace, method: str, names: Sequence[str]) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n, None)]
    if missing:
        raise ValueError(f"--method {method} needs {', '.join(missing)}.")


def add_estimator_args(p: argparse.ArgumentParser) -> None:
    """Options shared by all estimators, then each estimator's own group."""
    p.add_argument("--method", choices=sorted(ESTIMATORS), help="which estimator to run")
    p.add_argument("--steps", type=int, default=0, help="sampling steps (0 = the method's official default)")
    p.add_argument("--ensemble", type=int, default=1, help="predictions per image, combined by an aligned median")
    p.add_argument("--empty-prompt", help="saved embedding of the empty prompt (else the text encoder is loaded)")
    for spec in ESTIMATORS.values():
        spec.add_args(p)


def build_estimator(args: argparse.Namespace, device: torch.device) -> Estimator:
    if args.method not in ESTIMATORS:
        raise ValueError(f"--method must be one of {sorted(ESTIMATORS)}, got {args.method!r}.")
    if args.ensemble < 1:
        raise ValueError(f"--ensemble must be at least 1, got {args.ensemble}.")
    return ESTIMATORS[args.method].build(args, device)


def load_image(path: str) -> torch.Tensor:
    """An image file -> [3,H,W] float in [0, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
