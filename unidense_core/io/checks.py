"""Checks at the boundary: every tensor a user hands in is finite, non-empty and of the expected layout.

Errors name the input, say what was found (how many bad values and where) and what to do, so nothing turns
silently into NaN, a clamp or a guess further down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _where(index: Sequence[int], layout: str | None) -> str:
    if layout and len(layout) == len(index):
        return ", ".join(f"{axis}={i}" for axis, i in zip(layout, index, strict=True))
    return "index " + str(tuple(int(i) for i in index))


def check_finite(x: torch.Tensor, name: str, layout: str | None = None) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or ±Inf: how many of each, and where the first one is.

    ``layout`` names the axes for the message, e.g. ``"BHWC"`` for an IMAGE or ``"BCHW"`` for latent samples.
    Returns ``x`` unchanged, so the check can wrap an expression.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}.")
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bad.any():
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(bad.sum()) - n_nan
            first = bad.nonzero()[0].tolist()
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite value(s) out of {x.numel()} (NaN: {n_nan}, Inf: {n_inf}); "
                f"the first at {_where(first, layout)}. Repair them upstream (another source image, file or model); "
                "one such value makes the whole result NaN."
            )
    return x


def check_not_empty(x: torch.Tensor, name: str, layout: str | None = None) -> torch.Tensor:
    """Raise ``ValueError`` if any axis of ``x`` has length 0 (an empty batch or a 0-pixel image)."""
    if x.numel() == 0:
        dims = f"{tuple(x.shape)}" + (f" ({layout})" if layout and len(layout) == x.ndim else "")
        raise ValueError(f"{name} is empty: shape {dims}. Connect a non-empty batch with at least one pixel.")
    return x


def check_image(x: torch.Tensor, name: str = "image", channels: Sequence[int] = (1, 3, 4)) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,C]: 4-D, non-empty, ``C`` in ``channels``, finite."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an IMAGE [B,H,W,C], got {shape}.")
    check_not_empty(x, name, "BHWC")
    if x.shape[-1] not in channels:
        raise ValueError(f"{name} must have {' or '.join(map(str, channels))} channels, got {x.shape[-1]}.")
    return check_finite(x, name, "BHWC")


def check_mask(x: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK [B,H,W] (or [H,W]): non-empty, finite (a NaN must never mean 'keep' or 'generate')."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a MASK [B,H,W], got {shape}.")
    layout = "HW" if x.ndim == 2 else "BHW"
    check_not_empty(x, name, layout)
    return check_finite(x, name, layout)


def check_latent(latent: dict, name: str = "latent", channels: Sequence[int] | None = None) -> torch.Tensor:
    """A ComfyUI LATENT dict: ``samples`` [B,C,h,w], non-empty, finite, ``C`` in ``channels`` (if given)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"{name} must be a LATENT (a dict with 'samples'), got {type(latent).__name__}.")
    z = latent["samples"]
    if not isinstance(z, torch.Tensor) or z.ndim != 4:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{name} must hold samples [B,C,h,w], got {shape}.")
    check_not_empty(z, name, "BChw")
    if channels is not None and z.shape[1] not in channels:
        raise ValueError(f"{name} must have {' or '.join(map(str, channels))} channels, got {z.shape[1]}.")
    return check_finite(z, name, "BChw")


def check_choice(value: object, name: str, options: Sequence[object]) -> object:
    """A combo value (ComfyUI 0.3.x does not check V3 combo values sent through the API): one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}.")
    return value


def check_number(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    """A FLOAT/INT widget value: a finite number within [low, high] (ComfyUI's range check lets NaN through)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if low is not None and value < low:
        raise ValueError(
            f"{name} must be at least {low}" + (f" and at most {high}" if high is not None else "") + f", got {value}."
        )
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}.")
    return float(value)


def check_conditioning(cond: object, name: str, context_dim: int | None = None) -> list:
    """A ComfyUI CONDITIONING: a non-empty list of [context [B,T,C], dict], tensors finite, ``C == context_dim``."""
    if not isinstance(cond, list) or not cond:
        got = "an empty list" if isinstance(cond, list) else type(cond).__name__
        raise ValueError(f"{name} must be a CONDITIONING (a text encoder's output), got {got}.")
    for i, entry in enumerate(cond):
        where = f"{name}[{i}]" if len(cond) > 1 else name
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], dict):
            raise ValueError(f"{where} must be a [tensor, dict] pair as text encoders give it.")
        ctx = entry[0]
        if not isinstance(ctx, torch.Tensor) or ctx.ndim != 3:
            shape = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
            raise ValueError(f"{where} must hold a text embedding [B,tokens,channels], got {shape}.")
        check_not_empty(ctx, where, "BTC")
        check_finite(ctx, where, "BTC")
        if context_dim is not None and ctx.shape[-1] != context_dim:
            raise ValueError(
                f"{where} has {ctx.shape[-1]}-wide embeddings but the model takes {context_dim}: it comes from "
                "another text encoder. Encode the prompt with the CLIP of this model's checkpoint."
            )
        for key, value in entry[1].items():
            if isinstance(value, torch.Tensor):
                check_finite(value, f"{where} '{key}'")
    return cond


def check_reference(x: object, name: str = "reference_image") -> tuple[int, int]:
    """An IMAGE used only for its size: 4-D with at least one pixel. Returns (H, W); its values are not read."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an IMAGE [B,H,W,C], got {shape}.")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} is {x.shape[2]}×{x.shape[1]} px; the output is resized to its size, so it needs pixels."
        )
    return int(x.shape[1]), int(x.shape[2])
