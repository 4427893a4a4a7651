"""What a training recipe is: the frozen base and the trainable part, how a batch becomes the loss's inputs, how the
result is saved in the official layout and how it predicts depth for validation.

The loop (``training/loop.py``) is generic; a method adds a :class:`Recipe` subclass and registers it in
``RECIPES``. MERGE-L (FLUX) adds one the same way: its own converter init, flow-matching inputs and save layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .data import generator, mix_seed


@dataclass(frozen=True)
class OfficialSettings:
    """A method's published training hyper-parameters (the CLI's defaults); ``[?]`` items are marked in notes."""

    learning_rate: float
    lr_scheduler: str  # diffusers.optimization.get_scheduler name
    lr_warmup_steps: int
    batch_size: int  # per process
    processes: int  # the official run's GPU count (effective batch = batch_size × processes × accumulation)
    gradient_accumulation: int
    max_steps: int
    mixed_precision: str
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    flip_p: float = 0.5
    seed: int = 42
    notes: str = ""

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.processes * self.gradient_accumulation


def encode_latents(vae: nn.Module, pixels: torch.Tensor, seeds: Sequence[int], stream: int) -> torch.Tensor:
    """``vae.encode(x).latent_dist.sample() · scaling_factor`` with one generator per sample (its own seed)."""
    dist = vae.encode(pixels).latent_dist
    mean, std = dist.mean, dist.std  # [B,4,h,w]
    eps = torch.stack([torch.randn(mean.shape[1:], generator=generator(mix_seed(s, stream))) for s in seeds])
    return (mean + std * eps.to(mean.device, mean.dtype)) * vae.config.scaling_factor


def sample_timesteps(seeds: Sequence[int], stream: int, num_train_timesteps: int, device) -> torch.Tensor:
    """t ~ U{0, …, T−1} per sample from its own generator (official: ``torch.randint(0, T, (bsz,))``)."""
    t = [int(torch.randint(0, num_train_timesteps, (1,), generator=generator(mix_seed(s, stream)))) for s in seeds]
    return torch.tensor(t, dtype=torch.long, device=device)


def fingerprint_modules(modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Identity of the frozen base: parameter count, shapes digest and a value checksum per module (trainable
    tensors inside it, such as a LoRA, are left out)."""
    out = {}
    for name, mod in modules.items():
        shapes = hashlib.sha256()
        total, checksum = 0, 0.0
        trainable = {n for n, p in mod.named_parameters() if p.requires_grad}
        for key, p in mod.state_dict().items():
            if key in trainable:
                continue
            shapes.update(f"{key}:{tuple(p.shape)};".encode())
            total += p.numel()
            if p.is_floating_point():
                checksum += float(p.detach().float().abs().sum())
        out[name] = {"parameters": total, "shapes": shapes.hexdigest()[:16], "abs_sum": round(checksum, 3)}
    return out


class Recipe:
    """Base class of the method recipes. Subclasses build ``self.module`` (the nn.Module accelerate prepares; its
    ``forward(**inputs)`` returns the loss) and implement the hooks below."""

    name: ClassVar[str] = ""
    official: ClassVar[OfficialSettings]
    prediction_kind: ClassVar[str] = "depth"  # what predict() returns: "depth" (near small) or "disparity"
    size_multiple: ClassVar[int] = 8  # image sides must be multiples of this
    result_name: ClassVar[str] = ""  # folder written by save()
    inference_steps: ClassVar[int] = 20  # the official sampling steps (validation default)

    module: nn.Module
    vae: nn.Module

    def target(self, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[1,H,W] metres + validity -> the normalised target image [1,H,W] the VAE encodes (×3 channels)."""
        raise NotImplementedError

    def inputs(self, batch: dict, device: torch.device) -> dict[str, Any]:
        """A collated batch -> keyword arguments of ``self.module.forward`` (no gradients; per-sample randomness)."""
        raise NotImplementedError

    def frozen(self) -> dict[str, nn.Module]:
        """The frozen base modules (cast to the mixed-precision dtype; fingerprinted for resume checks)."""
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        """Images [B,3,H,W] in [0, 1] -> [B,H,W] prediction of kind ``prediction_kind`` (validation)."""
        raise NotImplementedError

    def save(self, folder: str) -> str:
        """Write the trained part in the official layout under ``folder``; returns the path a loader takes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings worth recording with a run (recipe options)."""
        return {}

    # Shared -------------------------------------------------------------------------------------------------

    def place(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        """Move everything to ``device``; frozen modules in ``weight_dtype``, trainable parameters in fp32
        (the official scripts' ``cast_training_params``)."""
        self.module.to(device)
        self.vae.to(device, weight_dtype)
        for mod in self.frozen().values():
            mod.to(device, weight_dtype)
        for p in self.trainable_parameters():
            p.data = p.data.float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """name -> tensor of every trainable parameter (what a checkpoint stores)."""
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Put a checkpoint's trainable tensors back; a different set of names or shapes raises, naming them."""
        own = dict(self.module.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        shapes = [
            f"{n}: {tuple(state[n].shape)} vs {tuple(own[n].shape)}"
            for n in sorted(expected & set(state))
            if tuple(state[n].shape) != tuple(own[n].shape)
        ]
        if missing or unexpected or shapes:
            detail = "; ".join(
                part
                for part in (
                    f"missing {missing[:3]}" if missing else "",
                    f"unexpected {unexpected[:3]}" if unexpected else "",
                    f"shape mismatches {shapes[:3]}" if shapes else "",
                )
                if part
            )
            raise ValueError(
                f"The checkpoint {source} does not fit this {self.name} run ({detail}): it was trained with another "
                "base model or other recipe options. Resume with the same base and options, or start a new run."
            )
        with torch.no_grad():
            for n in expected:
                own[n].copy_(state[n].to(own[n].device, own[n].dtype))

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint_modules(self.frozen())

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def frozen_count(self) -> int:
        return sum(p.numel() for m in self.frozen().values() for p in m.parameters())


def official_dict(settings: OfficialSettings) -> dict[str, Any]:
    return {**asdict(settings), "effective_batch": settings.effective_batch}
