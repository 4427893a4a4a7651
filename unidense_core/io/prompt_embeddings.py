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
from .checks import check_finite

FORMAT = "unidense.prompt_embedding.v1"
MAKE_ONE = (
    "Save one with the 'UniDense Save Prompt Embedding' node or `unidense_core.io.prompt_embeddings."
    "save_prompt_embedding`."
)


def _check_embedding(
    context: torch.Tensor, mask: torch.Tensor | None, source: str, pooled: torch.Tensor | None = None
) -> None:
    """context [B,T,C] floating, non-empty and finite; mask [B,T] of 0/1 with at least one real token per row;
    pooled [B,P] floating and finite."""
    if context.ndim != 3 or not context.is_floating_point() or 0 in context.shape:
        raise ValueError(
            f"{source}: context must be a non-empty floating-point [batch, tokens, channels] tensor, got "
            f"{context.dtype} {tuple(context.shape)}."
        )
    check_finite(context, f"{source}: context", "BTC")
    if pooled is not None:
        if pooled.ndim != 2 or pooled.shape[0] != context.shape[0] or not pooled.is_floating_point():
            raise ValueError(
                f"{source}: pooled must be a floating-point [batch, channels] tensor with batch {context.shape[0]}, "
                f"got {pooled.dtype} {tuple(pooled.shape)}."
            )
        check_finite(pooled, f"{source}: pooled", "BP")
    if mask is None:
        return
    if tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(
            f"{source}: mask shape {tuple(mask.shape)} must be [batch, tokens] = {tuple(context.shape[:2])}."
        )
    if mask.is_floating_point():
        check_finite(mask, f"{source}: mask", "BT")
    if not torch.isin(mask, torch.tensor([0, 1], dtype=mask.dtype)).all():
        raise ValueError(f"{source}: mask must hold only 0 (padding) and 1 (real token).")
    empty = (mask == 0).all(dim=1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{source}: mask marks no real token in batch entry {empty[0]}; at least one is needed.")


def save_prompt_embedding(
    path: str | os.PathLike,
    context: torch.Tensor,
    mask: torch.Tensor | None = None,
    prompt: str = "",
    encoder: str = "",
    overwrite: bool = False,
    pooled: torch.Tensor | None = None,
) -> str:
    """Write ``context`` (and its token mask, and a pooled vector) to ``path`` (.safetensors); never replaces a
    different file silently.

    If ``path`` exists it is left alone when it already holds this embedding, replaced when ``overwrite`` is set,
    and otherwise refused with a ``ValueError`` that says so.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"Prompt embeddings are saved as .safetensors; got '{path}'.")
    _check_embedding(context, mask, "the embedding to save", pooled)
    tensors = {"context": context.detach().to("cpu").contiguous()}
    if mask is not None:
        tensors["mask"] = mask.detach().to("cpu", torch.int64).contiguous()
    if pooled is not None:
        tensors["pooled"] = pooled.detach().to("cpu").contiguous()
    if os.path.exists(path) and not overwrite:
        if _holds(path, tensors):
            return path  # the same embedding is already there: nothing to write, nothing lost
        raise ValueError(
            f"'{path}' already exists and holds another embedding. Choose another filename, or turn on overwrite "
            "to replace it."
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        save_file(tensors, path, metadata={"format": FORMAT, "prompt": prompt, "encoder": encoder})
    except OSError as exc:
        raise RuntimeError(f"Could not write '{path}' ({exc}). Check the folder's permissions and free space.") from exc
    return path


def _holds(path: str, tensors: dict[str, torch.Tensor]) -> bool:
    try:
        old = load_state_dict(path)
    except CheckpointError:
        return False
    return old.keys() == tensors.keys() and all(
        old[k].dtype == v.dtype and old[k].shape == v.shape and torch.equal(old[k], v) for k, v in tensors.items()
    )


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a saved prompt embedding, checked: finite, non-empty, a 0/1 mask."""
    from safetensors import safe_open

    if not path.endswith(".safetensors"):
        raise CheckpointError(f"'{path}' is not a .safetensors file; prompt embeddings are. {MAKE_ONE}")
    sd = load_state_dict(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "context" not in sd:
        raise CheckpointError(f"'{path}' is not a saved prompt embedding (no 'context' tensor). {MAKE_ONE}")
    try:
        _check_embedding(sd["context"], sd.get("mask"), f"'{path}'", sd.get("pooled"))
    except ValueError as exc:
        raise CheckpointError(f"{exc} The file is damaged or not a prompt embedding. {MAKE_ONE}") from exc
    return sd, meta


def load_prompt_embedding(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, str]]:
    """-> (context [B,T,C], mask [B,T] or None, metadata), checked: finite, non-empty, a 0/1 mask."""
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


def load_clip_text_encoder(
    encoder_dir: str, tokenizer_dir: str, device: str | torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, object]:
    """A local CLIP text encoder (eval mode, on ``device`` in ``dtype``) and its tokenizer, never from a hub."""
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = CLIPTextModel.from_pretrained(encoder_dir, torch_dtype=dtype, local_files_only=True)
    return encoder.to(device).eval(), CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
