"""Reading checkpoints from disk: safetensors first, pickles only with ``weights_only=True``.

Every error names the file, what was expected and what to do, because a user who sees it has usually put a
file from the wrong model into a folder.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping

import torch

logger = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used; the message says which file and what to do."""


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from ``.safetensors`` (preferred) or a pickled ``.bin/.pt`` (weights only).

    On the CPU both are memory-mapped, so reading costs no RAM until a tensor is used, and the pages that are read
    are file cache the system can reclaim: safetensors maps its files itself; zip-format pickles (``torch.save``
    since torch 1.6, e.g. diffusers' ``.bin``) are loaded with ``mmap=True``; older pickles are read into memory.
    The mapping is private: writing into a tensor never changes the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: '{path}'.")
    if path.endswith(SAFE_SUFFIXES):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"'{path}' is not a readable safetensors file ({exc}). It may be truncated or corrupt: "
                "download it again and compare its size with the source."
            ) from exc
    if path.endswith(PICKLE_SUFFIXES):
        try:
            mmap = torch.device(device).type == "cpu" and zipfile.is_zipfile(path)
            sd = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
            raise CheckpointError(
                f"'{path}' could not be loaded as a weights-only PyTorch file ({type(exc).__name__}: {exc}). "
                "It may be truncated, corrupt, or contain code objects; prefer a .safetensors copy."
            ) from exc
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"'{path}' does not hold a flat dict of tensors; it is not a weights file.")
        return dict(sd)
    raise CheckpointError(f"'{path}' has an unknown extension; expected one of {SAFE_SUFFIXES + PICKLE_SUFFIXES}.")


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Put ``state_dict`` into ``module`` without a second copy; return (missing keys, unexpected keys).

    Each tensor is first cast to the dtype and device of the module's tensor of the same name (a no-op when they
    already match), then assigned (``load_state_dict(assign=True)``): a module built with ``torch.empty`` weights
    ends up holding the loaded tensors themselves, memory-mapped ones included, instead of copies of them.
    """
    own = module.state_dict(keep_vars=True)
    cast = {k: v.to(device=own[k].device, dtype=own[k].dtype) if k in own else v for k, v in state_dict.items()}
    result = module.load_state_dict(cast, strict=False, assign=True)
    return list(result.missing_keys), list(result.unexpected_keys)


def find_weights_file(folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> str:
    """The weights file of a diffusers model folder: ``<stem>.safetensors`` first, then ``<stem>.bin``."""
    folder = os.fspath(folder)
    for suffix in (".safetensors", ".bin"):
        candidate = os.path.join(folder, stem + suffix)
        if os.path.isfile(candidate):
            return candidate
    sharded = [f for f in sorted(os.listdir(folder)) if f.startswith(stem) and f.endswith(".index.json")]
    if sharded:
        raise CheckpointError(
            f"'{folder}' holds a sharded checkpoint ({sharded[0]}); save it as one file "
            f"({stem}.safetensors) to use it here."
        )
    raise CheckpointError(
        f"No weights in '{folder}': expected '{stem}.safetensors' (or '{stem}.bin') next to config.json."
    )


MAX_JSON_BYTES = 16 * 2**20  # config files are kilobytes; a bigger one is not a config


def _check_json_size(size: int, source: str) -> None:
    if size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{source} is {size / 2**20:.0f} MiB; a config is a few kilobytes (limit {MAX_JSON_BYTES >> 20} MiB). "
            "Replace it with the config.json of the model it belongs to."
        )


def parse_json(text: str | bytes, source: str) -> dict:
    """A JSON object from ``text`` (a config file or a safetensors metadata entry), with errors naming ``source``."""
    _check_json_size(len(text), source)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source} is not valid JSON ({exc}). Replace it with the original file.") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{source} is nested too deeply to be a config. Replace it with the original.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} should hold a JSON object, got a {type(data).__name__}.")
    return data


def load_json(path: str | os.PathLike) -> dict:
    """Read a config.json (at most 16 MiB), with an error that names the file."""
    path = os.fspath(path)
    try:
        _check_json_size(os.path.getsize(path), f"'{path}'")  # before reading it
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"Missing config file '{path}'.") from exc
    except OSError as exc:
        raise CheckpointError(f"Cannot read '{path}' ({exc}).") from exc
    return parse_json(text, f"'{path}'")


def _fmt(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    hint: str = "",
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys (nanoGPT-style check)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs expected {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [
        f"{source} does not match the expected layout ({len(state_dict)} tensors in file, {len(expected)} expected)."
    ]
    if mismatched:
        parts.append(f"Shape mismatches: {_fmt(mismatched, 3)}.")
    if missing:
        parts.append(f"Missing keys: {_fmt(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys: {_fmt(unexpected)}.")
    if hint:
        parts.append(hint)
    raise CheckpointError(" ".join(parts))


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the tensors that hold NaN/±Inf (one of them makes every output NaN)."""
    bad = []
    for key, value in state_dict.items():
        if value.is_floating_point():
            n = int((~torch.isfinite(value)).sum())
            if n:
                bad.append(f"{key} ({n} of {value.numel()} values)")
    if bad:
        raise CheckpointError(
            f"{source} has NaN/Inf weights in {len(bad)} tensor(s): {_fmt(bad, 3)}. The file is corrupt or was "
            "saved from a diverged training run; download it again or use another checkpoint."
        )


def require_subfolder(root: str | os.PathLike, name: str, hint: str) -> str:
    """``root/name`` of a local diffusers pipeline folder, or an error naming the missing part and what to put there."""
    path = os.path.join(os.fspath(root), name)
    if not os.path.isdir(path):
        raise CheckpointError(f"Missing '{path}'. {hint}")
    return path


def scheduler_config(root: str | os.PathLike, default: Mapping) -> dict:
    """The folder's ``scheduler/scheduler_config.json`` (private ``_`` keys dropped), else a copy of ``default``."""
    path = os.path.join(os.fspath(root), "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return dict(default)
    return {k: v for k, v in load_json(path).items() if not k.startswith("_")}


# Weights file names of a local diffusers / transformers model folder (single file first, then a sharded index).
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")  # fast tokenizer, CLIP BPE, T5 sentencepiece


def require_folder(path: str | os.PathLike, hint: str) -> str:
    """``path`` if it is a folder, else an error that says what the folder should be."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.isfile(path) else "does not exist"
        raise CheckpointError(f"'{path}' {what}. {hint}")
    return path


def require_model_folder(
    root: str | os.PathLike, name: str, hint: str, weights: tuple[str, ...] = DIFFUSERS_WEIGHTS
) -> str:
    """``root/name`` holding ``config.json`` and one of ``weights``; otherwise an error naming the missing file."""
    folder = require_subfolder(require_folder(root, hint), name, hint)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise CheckpointError(f"Missing '{config}'. {hint}")
    if not any(os.path.isfile(os.path.join(folder, w)) for w in weights):
        raise CheckpointError(
            f"No weights in '{folder}': expected '{weights[0]}' (or {', '.join(repr(w) for w in weights[1:])}) "
            f"next to config.json. {hint}"
        )
    return folder


def require_tokenizer_folder(root: str | os.PathLike, name: str, hint: str) -> str:
    """``root/name`` holding a tokenizer (``tokenizer.json``, CLIP's ``vocab.json`` or T5's ``spiece.model``)."""
    folder = require_subfolder(require_folder(root, hint), name, hint)
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise CheckpointError(f"No tokenizer in '{folder}': expected one of {', '.join(TOKENIZER_FILES)}. {hint}")
    return folder


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the weights; truncation is detected."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: '{path}'.")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        ends = [info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"]
        shapes = {k: tuple(info["shape"]) for k, info in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({exc}). It may be truncated or corrupt: "
            "download it again and compare its size with the source."
        ) from exc
    if 8 + n + max(ends, default=0) > size:
        raise CheckpointError(
            f"'{path}' is truncated: its header describes {8 + n + max(ends):,} bytes but the file has {size:,}. "
            "Download it again and compare its size with the source."
        )
    return shapes
