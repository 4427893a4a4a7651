"""Batch inference throughput with 1 and 2 processes under ``accelerate launch`` (images per second).

A folder of synthetic images, the tiny MERGE estimator (random weights: the cost of the official 20-step loop on
a small model, not of PixArt-XL), ``python -m unidense_core infer`` launched with 1 and then 2 CPU processes. Each
process reports the time of its own prediction loop (start-up excluded); throughput = images / the slowest
process's loop time. On a machine with 2 free cores the 2-process figure approaches twice the 1-process one.
    python benchmarks/batch_inference.py [--images 24] [--size 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from training_env import converters_folder, empty_prompt, launch, pixart_folder

    from unidense_core.training.synthetic import write_scene_folder

    with tempfile.TemporaryDirectory() as tmp:
        write_scene_folder(os.path.join(tmp, "data"), args.images, args.size, args.size, seed=0)
        pixart = pixart_folder(os.path.join(tmp, "pixart"))
        conv = converters_folder(os.path.join(tmp, "conv"))
        empty = empty_prompt(os.path.join(tmp, "e.safetensors"))
        model = ["--method", "merge", "--pixart", pixart, "--converters", conv, "--empty-prompt", empty,
                 "--steps", str(args.steps), "--no-binning", "--cpu"]  # fmt: skip
        rates = {}
        for procs in (1, 2):
            out = launch(["infer", *model, "--input", os.path.join(tmp, "data", "rgb"), "--output",
                          os.path.join(tmp, f"out{procs}")], num_processes=procs)  # fmt: skip
            times = [float(t) for t in re.findall(r"assigned \(([0-9.]+) s\)", out.stdout)]
            rates[procs] = args.images / max(times)
            print(f"{procs} process(es): {args.images} images of {args.size}x{args.size} in {max(times):.2f} s "
                  f"(slowest process) = {rates[procs]:.2f} images/s")  # fmt: skip
        print(f"2 / 1 processes: x{rates[2] / rates[1]:.2f}  (cores on this machine: {os.cpu_count()})")


if __name__ == "__main__":
    main()
