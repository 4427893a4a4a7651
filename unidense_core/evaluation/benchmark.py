"""Evaluate depth on a dataset (Marigold layouts or a plain pair folder) from a folder of predictions or by running an
estimator, image by image as Marigold's ``eval.py`` (optionally sharded over accelerate processes).

Predictions are looked up as ``<predictions>/<image path without suffix>.npy`` (or ``.exr``, or ``.png``, 16-bit, scaled
by its ``unidense:scale`` text chunk), which is what ``python -m unidense_core infer`` writes, then under Marigold's own
names (``pred_<…>.npy``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..dense.datasets import RGBDSet
from .batch import image_seed
from .estimators import Estimator, resize_to
from .metrics import evaluate_prediction

MARIGOLD_NAME_MODE = {"hypersim": "rgb_i_d", "nyu": "rgb_id"}  # every other dataset: "id"


def marigold_prediction_name(rgb_rel: str, dataset: str) -> str:
    """Marigold's ``get_pred_name`` with the ``.npy`` suffix, in the image's folder."""
    base = os.path.basename(rgb_rel)
    mode = MARIGOLD_NAME_MODE.get(dataset, "id")
    if mode == "rgb_id":
        name = "pred_" + base.split("_")[1]
    elif mode == "rgb_i_d":
        name = "pred_" + "_".join(base.split("_")[1:])
    else:
        name = "pred_" + base
    return os.path.join(os.path.dirname(rgb_rel), os.path.splitext(name)[0] + ".npy")


def find_prediction(pred_dir: str, rgb_rel: str, dataset: str) -> str | None:
    stem = os.path.splitext(rgb_rel)[0]
    for candidate in (stem + ".npy", stem + ".exr", stem + ".png", marigold_prediction_name(rgb_rel, dataset)):
        path = os.path.join(pred_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_prediction(path: str) -> np.ndarray:
    """A prediction file -> float64 [H,W]: ``.npy`` and EXR as is; a 16-bit PNG as code / 65535 × its stored scale."""
    if path.endswith(".exr"):
        from ..io.depth_files import read_exr_depth

        return read_exr_depth(path).astype(np.float64)
    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False).squeeze()
        if arr.ndim != 2:
            raise ValueError(f"Prediction '{path}' has shape {arr.shape}; expected one [H,W] map.")
        return arr.astype(np.float64)
    from PIL import Image

    with Image.open(path) as img:
        scale = float(img.info.get("unidense:scale", 1.0))
        arr = np.asarray(img)
    if arr.dtype == np.uint8 or arr.ndim != 2:
        raise ValueError(f"Prediction '{path}' must be a 16-bit greyscale PNG (or .npy); got {arr.dtype} {arr.shape}.")
    return arr.astype(np.float64) / 65535.0 * scale


def alignment_for(kind: str, requested: str) -> str:
    """``auto``: disparity-space alignment for disparity predictions (JointNet), depth-space otherwise."""
    if requested != "auto":
        return requested
    return "least_square_disparity" if kind == "disparity" else "least_square"


def evaluate_dataset(
    rgbd: RGBDSet,
    predictions: str | None = None,
    estimator: Estimator | None = None,
    alignment: str = "auto",
    align_max_res: int | None = None,
    limit: int | None = None,
    resize_predictions: bool = False,
    processing_res: int = 0,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-image metrics (×100) of this process's shard; errors name the image (missing or mis-sized prediction,
    ground truth without a valid pixel)."""
    if (predictions is None) == (estimator is None):
        raise ValueError("Give either a predictions folder or an estimator to run.")
    if predictions is not None and not os.path.isdir(predictions):
        raise FileNotFoundError(f"Predictions folder not found: '{predictions}'.")
    layout = rgbd.layout
    space = alignment_for(estimator.kind if estimator else "depth", alignment)
    max_res = align_max_res if align_max_res is not None else layout.align_max_res
    indices = list(range(len(rgbd)))[: limit or None]
    if predictions is not None:
        missing = [
            rgbd.pairs[i].rgb for i in indices if find_prediction(predictions, rgbd.pairs[i].rgb, rgbd.kind) is None
        ]
        if missing:
            shown = ", ".join(f"'{m}'" for m in missing[:10]) + (
                f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
            )
            raise FileNotFoundError(
                f"{len(missing)} image(s) have no prediction in '{predictions}': {shown}. Expected "
                "'<image path without suffix>.npy' (or .exr / .png), as `python -m unidense_core infer` writes."
            )
    rows = []
    rank, procs = shard
    for i in indices[rank::procs]:
        sample = rgbd.read(i)
        gt_size = sample.depth.shape
        if estimator is not None:
            image = torch.from_numpy(sample.rgb.copy()).permute(2, 0, 1).float()[None] / 255.0  # [1,3,H,W]
            if processing_res:
                image = resize_to(image, _longer_side(gt_size, processing_res), "bilinear").clamp(0, 1)
            pred = estimator.predict(image, [image_seed(seed, rgbd.pairs[i].rgb)])  # as `infer` seeds it
            pred = resize_to(pred.float(), gt_size, "bilinear")[0].numpy()
        else:
            path = find_prediction(predictions, sample.name, rgbd.kind)
            pred = read_prediction(path)
            if pred.shape != gt_size:
                if not resize_predictions:
                    raise ValueError(
                        f"Prediction '{path}' is {pred.shape[1]}×{pred.shape[0]} but the ground truth of "
                        f"'{sample.name}' is {gt_size[1]}×{gt_size[0]}; predict at the ground truth's size or pass "
                        "--resize-predictions (bilinear)."
                    )
                pred = resize_to(torch.from_numpy(pred)[None], gt_size, "bilinear")[0].numpy()
        if not sample.valid.any():
            raise ValueError(f"'{sample.name}' has no valid ground-truth pixel in the evaluation region.")
        try:
            metrics, fit = evaluate_prediction(
                pred, sample.depth, sample.valid, layout.min_depth, layout.max_depth, space, max_res
            )
        except ValueError as exc:
            raise ValueError(f"'{sample.name}': {exc}") from exc
        rows.append(
            {
                "name": sample.name,
                **metrics,
                "scale": fit.scale if fit else "",
                "shift": fit.shift if fit else "",
                "index": i,
            }
        )
        if progress is not None:
            progress(1)
    return rows


def _longer_side(size: Sequence[int], res: int) -> tuple[int, int]:
    """Marigold's processing resolution: the longer side becomes ``res`` (aspect kept, multiples of 8)."""
    h, w = size
    s = res / max(h, w)
    return max(8, round(h * s / 8) * 8), max(8, round(w * s / 8) * 8)


def settings_record(
    rgbd: RGBDSet,
    alignment: str,
    align_max_res: int | None,
    estimator: Estimator | None,
    predictions: str | None,
    processing_res: int,
) -> dict[str, Any]:
    """What the numbers were computed with (written above the table)."""
    layout = rgbd.layout
    rec: dict[str, Any] = {
        "dataset": rgbd.kind,
        "root": rgbd.root,
        "split": rgbd.split or "(all pairs of the folder)",
        "depth range (m)": f"{layout.min_depth:g} – {layout.max_depth:g}",
        "crop / mask": ", ".join(
            x
            for x in (
                "KITTI benchmark crop" if layout.kb_crop else "",
                layout.eval_crop or "",
                "mask file" if layout.mask_from_file else "",
            )
            if x
        )
        or "none",
        "alignment": alignment,
        "alignment max resolution": align_max_res or layout.align_max_res or "full",
    }
    if estimator is not None:
        rec["method"] = estimator.name
        rec.update(estimator.settings())
        rec["processing resolution"] = processing_res or "the method's own"
    else:
        rec["predictions"] = predictions
    return rec
