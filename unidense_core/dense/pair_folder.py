"""A plain folder of RGB-D pairs: ``rgb/`` + ``depth/`` (+ optional ``mask/`` and ``caption/``), matched by name.

Layout (sub-folders may nest; a pair shares its relative path without the suffix)::

    root/rgb/kitchen/0001.png        image (png/jpg/...)
    root/depth/kitchen/0001.png      16-bit PNG (units per metre set by the user, default mm) or float .npy/.npz
    root/mask/kitchen/0001.png       optional: non-zero = valid (besides depth > 0 and finite)
    root/caption/kitchen/0001.txt    optional: a prompt (JointNet trains with captions)

Folder names accepted: ``rgb|image|images``, ``depth|depths``, ``mask|masks|valid``, ``caption|captions|prompt``.
Images without depth, depth without images and names with two files are all reported by name at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..io.depth_files import DEPTH_SUFFIXES, IMAGE_SUFFIXES

RGB_DIRS = ("rgb", "image", "images")
DEPTH_DIRS = ("depth", "depths")
MASK_DIRS = ("mask", "masks", "valid")
CAPTION_DIRS = ("caption", "captions", "prompt", "prompts")
LAYOUT_HINT = (
    "A pair folder holds 'rgb/' (images) and 'depth/' (16-bit PNG in millimetres or float .npy in metres) with the "
    "same relative names, plus optional 'mask/' (non-zero = valid) and 'caption/' (.txt)."
)


@dataclass(frozen=True)
class Pair:
    """One pair's files, relative to the dataset root."""

    rgb: str
    depth: str
    extra: str | None = None  # validity mask (plain folders, DIODE)
    caption: str | None = None  # a .txt prompt (plain folders)


def _find(root: str, names: tuple[str, ...]) -> str | None:
    for n in names:
        if os.path.isdir(os.path.join(root, n)):
            return n
    return None


def _index(root: str, sub: str, suffixes: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """{relative stem: relative path} of files with ``suffixes`` under root/sub, and stems with several files."""
    found: dict[str, str] = {}
    dupes = []
    base = os.path.join(root, sub)
    for dirpath, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            if f.startswith("."):
                continue  # hidden and partial files
            stem, suffix = os.path.splitext(f)
            if suffix.lower() not in suffixes:
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            key = os.path.relpath(os.path.join(dirpath, stem), base)
            if key in found:
                dupes.append(f"'{found[key]}' and '{rel}'")
            found[key] = rel
    return found, dupes


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def scan_pair_folder(root: str) -> list[Pair]:
    """All pairs of a plain folder, sorted by name; missing partners and duplicates raise, naming the files."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Pair folder not found: '{root}'. {LAYOUT_HINT}")
    rgb_dir, depth_dir = _find(root, RGB_DIRS), _find(root, DEPTH_DIRS)
    if rgb_dir is None or depth_dir is None:
        lacking = " and ".join(
            f"{'/'.join(d)}/" for d, got in ((RGB_DIRS, rgb_dir), (DEPTH_DIRS, depth_dir)) if not got
        )
        raise FileNotFoundError(f"'{root}' has no {lacking} sub-folder. {LAYOUT_HINT}")
    rgbs, d1 = _index(root, rgb_dir, IMAGE_SUFFIXES)
    depths, d2 = _index(root, depth_dir, DEPTH_SUFFIXES)
    mask_dir, caption_dir = _find(root, MASK_DIRS), _find(root, CAPTION_DIRS)
    masks, d3 = _index(root, mask_dir, IMAGE_SUFFIXES + (".npy", ".npz")) if mask_dir else ({}, [])
    captions, d4 = _index(root, caption_dir, (".txt",)) if caption_dir else ({}, [])
    problems = []
    if d1 or d2 or d3 or d4:
        problems.append(f"names with more than one file: {_names(d1 + d2 + d3 + d4)}")
    no_depth = sorted(set(rgbs) - set(depths))
    no_rgb = sorted(set(depths) - set(rgbs))
    if no_depth:
        problems.append(f"{len(no_depth)} image(s) without depth: {_names([rgbs[k] for k in no_depth])}")
    if no_rgb:
        problems.append(f"{len(no_rgb)} depth file(s) without image: {_names([depths[k] for k in no_rgb])}")
    stray_masks = sorted(set(masks) - set(rgbs))
    if stray_masks:
        problems.append(f"{len(stray_masks)} mask(s) without image: {_names([masks[k] for k in stray_masks])}")
    if problems:
        raise ValueError(f"Pair folder '{root}' is inconsistent: " + "; ".join(problems) + ". " + LAYOUT_HINT)
    if not rgbs:
        raise ValueError(f"Pair folder '{root}' holds no pairs. {LAYOUT_HINT}")
    return [Pair(rgbs[k], depths[k], masks.get(k), captions.get(k)) for k in sorted(rgbs)]
