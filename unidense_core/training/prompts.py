"""Prompt embeddings during training: the empty prompt from a saved file, captions through a frozen text encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..io.checkpoints import require_subfolder
from ..io.prompt_embeddings import load_prompt_embedding


class PromptBank:
    """Embeds a batch of prompts: "" from ``empty`` [1,T,C] (no encoder needed), others with the CLIP encoder."""

    def __init__(
        self,
        empty: torch.Tensor,
        text_encoder: nn.Module | None = None,
        tokenizer: object | None = None,
        empty_mask: torch.Tensor | None = None,
    ):
        if empty.ndim != 3 or empty.shape[0] != 1:
            raise ValueError(f"The empty prompt embedding must be [1,T,C], got {tuple(empty.shape)}.")
        self.empty, self.empty_mask = empty, empty_mask
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    def to(self, device: torch.device, dtype: torch.dtype) -> PromptBank:
        self.empty = self.empty.to(device, dtype)
        if self.empty_mask is not None:
            self.empty_mask = self.empty_mask.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B,T,C] for the prompts (official CLIP use: padded to max length, last hidden state, no mask)."""
        if all(p == "" for p in prompts):
            return self.empty.expand(len(prompts), -1, -1)
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "The data has captions but no text encoder is loaded; give the base folder with text_encoder/ and "
                "tokenizer/, or train without captions (empty prompt)."
            )
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.empty.device)
        out = self.text_encoder(ids)[0].to(self.empty.dtype)
        if out.shape[1:] != self.empty.shape[1:]:
            raise ValueError(
                f"The text encoder gives {tuple(out.shape[1:])} but the empty prompt is {tuple(self.empty.shape[1:])}."
            )
        return out


def encode_empty_clip(text_encoder: nn.Module, tokenizer) -> torch.Tensor:
    """CLIP embedding of "" padded to the tokenizer's max length [1,77,C] (DMP's ``uncond_embeds``)."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(next(text_encoder.parameters()).device))[0]


def load_prompt_bank(base_dir: str, empty_prompt_path: str | None, hint: str) -> PromptBank:
    """The empty prompt from a saved file, or CLIP + tokenizer from the base folder (kept for captions)."""
    if empty_prompt_path is not None:
        ctx, _mask, _ = load_prompt_embedding(empty_prompt_path)
        return PromptBank(ctx)
    from transformers import CLIPTextModel, CLIPTokenizer

    enc_dir = require_subfolder(base_dir, "text_encoder", hint)
    tok_dir = require_subfolder(base_dir, "tokenizer", hint)
    encoder = CLIPTextModel.from_pretrained(enc_dir, local_files_only=True).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    return PromptBank(encode_empty_clip(encoder, tokenizer), encoder, tokenizer)
