"""``python -m unidense_core evaluate …`` and ``… infer …`` (both run under ``accelerate launch`` as well).

    python -m unidense_core evaluate --dataset nyu --root /data/nyuv2 \\
        --split data_split/nyu/labeled/filename_list_test.txt --predictions preds/nyu --out results/nyu
    accelerate launch -m unidense_core evaluate --dataset nyu --root … --split … --method merge \\
        --pixart PixArt-XL-2-512x512 --converters merge-base-depth-v1 --empty-prompt empty.safetensors --out …
    accelerate launch -m unidense_core infer --method merge --pixart … --converters … \\
        --input images/ --output depth/ --format png16
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from ..dense.datasets import FOLDER, LAYOUTS
from .batch import FORMATS
from .estimators import add_estimator_args, build_estimator
from .metrics import ALIGNMENTS

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    """Register ``evaluate`` and ``infer``."""
    ev = subparsers.add_parser(
        "evaluate",
        help="depth metrics (Marigold protocol, ×100) on NYUv2/KITTI/ETH3D/ScanNet/DIODE or a pair folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--dataset", required=True, choices=sorted([*LAYOUTS, FOLDER]), help="dataset layout")
    ev.add_argument("--root", required=True, help="dataset folder (or .tar) the split file's paths are relative to")
    ev.add_argument("--split", help="the official split file (data_split/… of Marigold / MERGE); not for 'folder'")
    ev.add_argument("--predictions", help="folder of predictions (.npy or 16-bit .png) mirroring the image paths")
    ev.add_argument("--out", required=True, help="where per_image.csv, metrics.csv/.json/.md go")
    ev.add_argument(
        "--alignment",
        default="auto",
        choices=("auto", *ALIGNMENTS),
        help="least-squares scale+shift space (auto: disparity for JointNet, depth otherwise)",
    )
    ev.add_argument("--align-max-res", type=int, help="alignment resolution (default: the dataset's, ETH3D 1024)")
    ev.add_argument("--processing-res", type=int, default=0, help="resize inputs' longer side before predicting")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images")
    ev.add_argument("--resize-predictions", action="store_true", help="resize mis-sized predictions (bilinear)")
    ev.add_argument("--png-scale", type=float, default=1000.0, help="plain folders: 16-bit PNG units per metre")
    ev.add_argument("--min-depth", type=float, default=0.0, help="plain folders: valid depth is > this (m)")
    ev.add_argument("--max-depth", type=float, default=float("inf"), help="plain folders: valid depth is < this (m)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add_estimator_args(ev)
    ev.set_defaults(run=run_evaluate)

    inf = subparsers.add_parser(
        "infer",
        help="depth for every image of a folder, sharded over accelerate processes, resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inf.add_argument("--input", required=True, help="folder of images (searched recursively) or a video file")
    inf.add_argument("--output", required=True, help="output folder (mirrors the input tree)")
    inf.add_argument(
        "--format", default="npy", choices=FORMATS, help="float .npy, 16-bit PNG or 32-bit float EXR (OpenEXR)"
    )
    inf.add_argument("--batch-size", type=int, default=1, help="images per call (same-size images only)")
    inf.add_argument("--seed", type=int, default=0, help="run seed; each image's seed comes from its path")
    inf.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add_estimator_args(inf)
    inf.set_defaults(run=run_infer)


def _state(cpu: bool):
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def run_evaluate(a: argparse.Namespace) -> int:
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from ..dense.datasets import RGBDSet
    from .benchmark import alignment_for, evaluate_dataset, settings_record
    from .report import write_report

    if (a.predictions is None) == (a.method is None):
        raise ValueError("Give --predictions FOLDER or --method NAME (with its model options), not both or neither.")
    state = _state(a.cpu)
    rgbd = RGBDSet(a.dataset, a.root, a.split, png_scale=a.png_scale, min_depth=a.min_depth, max_depth=a.max_depth)
    estimator = build_estimator(a, state.device) if a.method else None
    total = min(len(rgbd), a.limit or len(rgbd))
    bar = tqdm(
        total=len(range(state.process_index, total, state.num_processes)),
        desc="evaluate",
        disable=not state.is_local_main_process,
    )
    rows = evaluate_dataset(
        rgbd,
        a.predictions,
        estimator,
        a.alignment,
        a.align_max_res,
        a.limit,
        a.resize_predictions,
        a.processing_res,
        a.seed,
        (state.process_index, state.num_processes),
        bar.update,
    )
    bar.close()
    rows = sorted(gather_object(rows), key=lambda r: r["index"]) if state.num_processes > 1 else rows
    if state.is_main_process:
        space = alignment_for(estimator.kind if estimator else "depth", a.alignment)
        settings = settings_record(rgbd, space, a.align_max_res, estimator, a.predictions, a.processing_res)
        paths = write_report(a.out, [{k: v for k, v in r.items() if k != "index"} for r in rows], settings)
        with open(paths["md"], encoding="utf-8") as f:
            print(f.read())
    state.wait_for_everyone()
    return 0


def run_infer(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .batch import list_inputs, remove_partial_files, run_batch

    if a.method is None:
        raise ValueError("infer needs --method (merge, jointnet or dmp) and its model options.")
    state = _state(a.cpu)
    if state.is_main_process:
        removed = remove_partial_files(a.output) if os.path.isdir(a.output) else 0
        if removed:
            logger.info("removed %d partial file(s) of an interrupted run", removed)
    state.wait_for_everyone()
    estimator = build_estimator(a, state.device)
    mine = len(list_inputs(a.input)[state.process_index :: state.num_processes])
    bar = tqdm(
        total=mine,
        desc=f"infer [{state.process_index + 1}/{state.num_processes}]",
        disable=not state.is_local_main_process,
    )
    t0 = time.perf_counter()
    stats = run_batch(
        estimator,
        a.input,
        a.output,
        a.format,
        a.seed,
        (state.process_index, state.num_processes),
        a.batch_size,
        bar.update,
    )
    bar.close()
    print(
        f"process {state.process_index}: wrote {len(stats.written)}, skipped {len(stats.skipped)} finished, "
        f"of {stats.assigned} assigned ({time.perf_counter() - t0:.2f} s)",
        flush=True,
    )
    state.wait_for_everyone()
    return 0
