"""What every method's subcommands share: common options, reading images and arrays, a progress bar, writing outputs.

Each method defines its own subcommands next to its pipeline (``<method>/cli.py``); ``unidense_core/cli.py`` only
dispatches and turns expected errors (missing files, bad values) into one-line messages. Outputs are written by
``dense.outputs.write_outputs``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUT_HELP = (
    "output path prefix: writes PREFIX_depth.png (16-bit, round(d·65535)) and PREFIX_depth.npy (raw float32), "
    "PREFIX_image.png for images, PREFIX_normals.npy/.png for normals"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (the official value) and keeps the descriptions' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _wrap(description: str, width: int = 110) -> str:
    """Wrap the description's long paragraphs; indented lines (lists) are kept as written."""
    import textwrap

    lines = []
    for line in description.splitlines():
        lines += [line] if line.startswith(" ") or len(line) <= width else textwrap.wrap(line, width)
    return "\n".join(lines)


def add_subcommand(subparsers, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows the description and every default."""
    return subparsers.add_parser(name, help=summary, description=_wrap(description), formatter_class=HelpFormatter)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--out, --seed, --device, --dtype."""
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the torch generator (noise, posterior samples)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="weights dtype (the official GPU runs use fp16)"
    )


def check_output_folder(prefix: str) -> None:
    """Fail before any model is loaded when the folder of ``--out`` does not exist."""
    folder = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Output folder '{folder}' does not exist; create it first or choose another --out.")


def generator(args: argparse.Namespace) -> torch.Generator:
    """A CPU generator seeded with ``--seed`` (noise is drawn on the CPU, so runs match across devices)."""
    return torch.Generator().manual_seed(args.seed)


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image not found: '{path}'.")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"'{path}' is not an image Pillow can read ({exc}).") from exc
    return img


def read_rgb(path: str):
    """An RGB PIL image from ``path`` (errors name the file)."""
    return _open_image(path).convert("RGB")


def read_rgb_tensor(path: str) -> torch.Tensor:
    """[1,3,H,W] float in [0, 1] from an image file."""
    import numpy as np

    arr = np.asarray(read_rgb(path), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def read_gray_tensor(path: str) -> torch.Tensor:
    """[1,1,H,W] float in [0, 1]: 16-bit PNGs / 65535, 8-bit images / 255 (colour images: their grey level)."""
    import numpy as np

    img = _open_image(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
    else:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.clip(arr, 0, 1))[None, None].contiguous()


def read_latents(path: str) -> torch.Tensor:
    """A latent saved with ``numpy.save`` (``.npy``, no pickles), as a float32 tensor."""
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Latents file not found: '{path}'.")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"'{path}' is not a plain .npy array ({exc}).") from exc
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Callable[..., None]]:
    """A tqdm bar on stderr; yields a step callback ``(i, t, latents) -> None`` for the pipelines."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="step", file=sys.stderr) as bar:
        yield lambda *_: bar.update(1)
