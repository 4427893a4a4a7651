"""Batch inference over a folder of images or a video file, sharded across ``accelerate`` processes and machines.

A video's frame i is named ``<video stem>/frame_<i:06d>`` and handled as an image of that name: each process decodes
the stream in order (PyAV, FFmpeg's binding, which ComfyUI installs too) and keeps only its own frames, so memory holds
one batch of frames whatever the video's length.

Image i of the sorted list belongs to process i mod N, so each output is written by exactly one process. Outputs mirror
the input tree (``<output>/<relative path>`` + ``.npy``, ``.png`` or ``.exr``), are written atomically (temporary file,
then rename), and an existing output is skipped, so a killed run is resumed by running the same command again. Every
image has its own seed (from its relative path), so results do not depend on the number of processes.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..io.depth_files import IMAGE_SUFFIXES, atomic_write, is_partial, write_depth_npy, write_depth_png16
from .estimators import Estimator, load_image

if TYPE_CHECKING:
    import torch

FORMATS = ("npy", "png16", "exr")
SUFFIX = {"npy": ".npy", "png16": ".png", "exr": ".exr"}


def list_images(root: str) -> list[str]:
    """Image files under ``root`` (relative paths, sorted; hidden and partial files skipped)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Input folder not found: '{root}'.")
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    if not found:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under '{root}'.")
    return found


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


def is_video(path: str) -> bool:
    """A video file (by suffix) given as the input instead of a folder."""
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def frame_name(video: str, index: int) -> str:
    """The relative name of frame ``index`` (its outputs go to ``<output>/<video stem>/frame_<index>.<ext>``)."""
    return os.path.join(os.path.splitext(os.path.basename(video))[0], f"frame_{index:06d}.png")


def _require_av():
    try:
        import av
    except ImportError as exc:
        raise ImportError(
            "Reading a video needs PyAV (`pip install av`; ComfyUI's own requirements include it). Or extract the "
            "frames into a folder of images and give that folder as --input."
        ) from exc
    return av


def count_frames(video: str) -> int:
    """Frames in the video's first stream (decoded when the container does not say)."""
    av = _require_av()
    try:
        with av.open(video) as container:
            if not container.streams.video:
                raise ValueError(f"'{video}' has no video stream.")
            stream = container.streams.video[0]
            n = stream.frames or sum(1 for _ in container.decode(stream))
    except av.FFmpegError as exc:
        raise ValueError(f"'{video}' is not a video FFmpeg can read ({exc}); give a video file or a folder.") from exc
    if n == 0:
        raise ValueError(f"'{video}' has no frames.")
    return n


def video_frames(video: str, wanted: Callable[[int], bool]) -> Iterator[tuple[int, torch.Tensor]]:
    """Decode ``video`` in order; yield (index, [3,H,W] float in [0, 1]) for the frames ``wanted(index)`` accepts."""
    import torch

    av = _require_av()
    with av.open(video) as container:
        if not container.streams.video:
            raise ValueError(f"'{video}' has no video stream.")
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if wanted(i):
                arr = frame.to_ndarray(format="rgb24")
                yield i, torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def list_inputs(source: str) -> list[str]:
    """The relative names of a folder's images, or of a video's frames."""
    if is_video(source):
        return [frame_name(source, i) for i in range(count_frames(source))]
    return list_images(source)


def output_path(out_dir: str, rel: str, fmt: str) -> str:
    return os.path.join(out_dir, os.path.splitext(rel)[0] + SUFFIX[fmt])


def image_seed(seed: int, rel: str) -> int:
    """A per-image seed from the run seed and the image's relative path (stable across runs and platforms)."""
    return (seed * 1_000_003 + zlib.crc32(rel.replace(os.sep, "/").encode())) % (2**31)


def remove_partial_files(out_dir: str) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    for dirpath, _dirs, files in os.walk(out_dir):
        for f in files:
            if is_partial(f):
                os.remove(os.path.join(dirpath, f))
                removed += 1
    return removed


@dataclass
class BatchStats:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    assigned: int = 0


def write_prediction(path: str, depth: np.ndarray, fmt: str, unit_scale: float) -> str:
    """Write one prediction atomically: float32 ``.npy`` or EXR unchanged, or a 16-bit PNG of ``depth / unit_scale``
    (values outside [0, unit_scale] are refused, never clipped: such outputs belong in npy or exr)."""
    if fmt == "npy":
        return write_depth_npy(path, depth)
    if fmt == "exr":
        from ..io.exr import write_exr

        values = np.ascontiguousarray(depth, dtype=np.float32)
        return atomic_write(path, lambda tmp: write_exr(tmp, values))
    unit = depth / unit_scale
    low, high = float(np.nanmin(unit)), float(np.nanmax(unit))
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"'{path}': the prediction spans {low * unit_scale:.4g}..{high * unit_scale:.4g}, outside the 16-bit "
            f"PNG's range 0..{unit_scale:g}; a PNG would clip it. Use --format npy or exr for raw values."
        )
    return write_depth_png16(path, unit, unit_scale)


def run_batch(
    estimator: Estimator,
    input_dir: str,
    output_dir: str,
    fmt: str = "npy",
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
    on_written: Callable[[str], None] | None = None,
) -> BatchStats:
    """Predict this process's share of ``input_dir`` (a folder of images or a video file) into ``output_dir``;
    finished outputs are skipped."""
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    rank, procs = shard
    mine = list_inputs(input_dir)[rank::procs]
    stats = BatchStats(assigned=len(mine))
    todo = []
    for rel in mine:
        if os.path.isfile(output_path(output_dir, rel, fmt)):
            stats.skipped.append(rel)
            if progress is not None:
                progress(1)
        else:
            todo.append(rel)
    for chunk, images in _batches(input_dir, todo, batch_size):
        if len({tuple(x.shape) for x in images}) > 1:  # different sizes: one at a time
            preds = [
                estimator.predict(x[None], [image_seed(seed, rel)])[0] for x, rel in zip(images, chunk, strict=True)
            ]
        else:
            preds = list(estimator.predict(torch.stack(images), [image_seed(seed, rel) for rel in chunk]))
        for rel, pred in zip(chunk, preds, strict=True):
            path = write_prediction(
                output_path(output_dir, rel, fmt), pred.float().cpu().numpy(), fmt, estimator.unit_scale
            )
            stats.written.append(rel)
            if on_written is not None:
                on_written(path)
            if progress is not None:
                progress(1)
    return stats


def _batches(source: str, todo: list[str], size: int) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """(names, images) in groups of ``size``: image files loaded per group, or a video's wanted frames as decoded."""
    if not is_video(source):
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            yield chunk, [load_image(os.path.join(source, rel)) for rel in chunk]
        return
    if not todo:
        return
    index = {frame_name(source, i): i for i in range(count_frames(source))}
    wanted = {index[rel] for rel in todo}
    names, images = [], []
    for i, frame in video_frames(source, wanted.__contains__):
        names.append(frame_name(source, i))
        images.append(frame)
        if len(names) == size:
            yield names, images
            names, images = [], []
    if names:
        yield names, images
