"""UniDense from the command line: MERGE, DMP and JointNet on local model folders.

One small dispatcher: every method registers its own subcommands (``<method>/cli.py::add_cli``), and expected errors
(a missing file, a bad value) end the run with a one-line message and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .io.checkpoints import CheckpointError
from .io.cli_args import check_output_folder

EPILOG = """commands:
  selfcheck          run every capability end to end on tiny random models (no downloads)
  merge-depth        depth from an image: PixArt-α + MERGE converters
  merge-generate     text-to-image with the same PixArt-α
  merge-l-depth      depth from an image: FLUX.1-dev + MERGE-L converters
  dmp                depth / normals / image tasks: SD 1.4 + an official DMP LoRA
  jointnet-generate  text -> RGB + depth
  jointnet-inpaint   image -> depth, depth -> image, RGB-D editing
  panorama           text -> 360° RGB-D panorama (JointNet, tiled)
  train              train MERGE converters, a DMP LoRA or JointNet's depth branch (accelerate; official recipes)
  evaluate           depth metrics (Marigold protocol) on NYUv2, KITTI, ETH3D, ScanNet, DIODE or a pair folder
  infer              depth for a folder of images, sharded over accelerate processes, resumable
Models are read from local folders only; `<command> --help` lists the folders and the official defaults."""


def build_parser() -> argparse.ArgumentParser:
    """The parser with every method's subcommands."""
    from .dmp.cli import add_cli as add_dmp
    from .evaluation.cli import add_cli as add_evaluation
    from .jointnet.cli import add_cli as add_jointnet
    from .merge.cli import add_cli as add_merge
    from .training.cli import add_cli as add_training

    ap = argparse.ArgumentParser(
        prog="python -m unidense_core",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    sc = sub.add_parser("selfcheck", help="end-to-end check on tiny random models")
    sc.add_argument("only", nargs="*", help="run only checks whose name contains these words")
    sc.set_defaults(run=_selfcheck)
    for add in (add_merge, add_dmp, add_jointnet, add_training, add_evaluation):
        add(sub)
    return ap


def _selfcheck(args: argparse.Namespace) -> int:
    from .selfcheck import run

    return 1 if run(args.only) else 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (2 for bad input, with a message on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, argparse printed why)
        return int(exc.code or 0)
    try:
        if getattr(args, "out", None) is not None:
            check_output_folder(args.out)
        return int(args.run(args) or 0)
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
