"""Prompt embeddings saved once and reused, so depth estimation need not load a 9 GB T5 each time.

File format: safetensors with ``context`` [B,T,C], optionally ``mask`` [B,T] (1 = real token) and ``pooled`` [B,P]
(a pooled text vector, e.g. FLUX's CLIP-L output), plus string metadata (``prompt``, ``encoder``). Files without
``pooled`` (MERGE-B's T5 embeddings) stay valid. The ComfyUI nodes and the standalone pipelines read and write the
same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .checkpoints import CheckpointError, load_state_dict

FORMAT = "unidense.prompt_embedding.v1"


def save_prompt_embedding(
    path: str | os.PathLike,
    context: torch.Tensor,
    mask: torch.Tensor | None = None,
    prompt: str = "",
    encoder: str = "",
    pooled: torch.Tensor | None = None,
) -> str:
    """Write ``context`` (and its token mask, and a pooled vector) to ``path`` (.safetensors)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"Prompt embeddings are saved as .safetensors; got '{path}'.")
    if context.ndim != 3:
        raise ValueError(f"context must be [batch, tokens, channels], got shape {tuple(context.shape)}.")
    tensors = {"context": context.detach().to("cpu").contiguous()}
    if mask is not None:
        if tuple(mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} must be [batch, tokens] = {tuple(context.shape[:2])}.")
        tensors["mask"] = mask.detach().to("cpu", torch.int64).contiguous()
    if pooled is not None:
        if pooled.ndim != 2 or pooled.shape[0] != context.shape[0]:
            raise ValueError(
                f"pooled must be [batch, channels] with batch {context.shape[0]}, got shape {tuple(pooled.shape)}."
            )
        tensors["pooled"] = pooled.detach().to("cpu").contiguous()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata={"format": FORMAT, "prompt": prompt, "encoder": encoder})
    return path


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    sd = load_state_dict(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "context" not in sd:
        raise CheckpointError(
            f"'{path}' is not a saved prompt embedding (no 'context' tensor); save one with the "
            "'UniDense Save Prompt Embedding' node or `unidense_core.io.prompt_embeddings.save_prompt_embedding`."
        )
    return sd, meta


def load_prompt_embedding(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, str]]:
    """-> (context [B,T,C], mask [B,T] or None, metadata)."""
    sd, meta = _read(os.fspath(path))
    return sd["context"], sd.get("mask"), meta


@dataclass
class PromptEmbedding:
    """A saved prompt: T5-style ``context`` [B,T,C], its ``mask`` [B,T] and a ``pooled`` vector [B,P] if stored."""

    context: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)


def read_prompt_embedding(path: str | os.PathLike) -> PromptEmbedding:
    """Every part of a saved prompt embedding (``pooled`` is None in files written without one)."""
    sd, meta = _read(os.fspath(path))
    return PromptEmbedding(sd["context"], sd.get("mask"), sd.get("pooled"), meta)


def drop_padding(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep only the real tokens of a single padded embedding [1,T,C] (exact for masked cross-attention)."""
    if mask is None:
        return context
    if context.shape[0] != 1:
        raise ValueError("drop_padding takes one embedding at a time (batch 1).")
    return context[:, mask[0].bool()]
