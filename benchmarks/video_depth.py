"""Video depth: frames per second of chunked video against one frame at a time, peak tensor memory against the number
of frames, and flicker with and without the temporal options (``unidense_core.dense.video``).

The model is the tiny random MERGE-B (PixArt-α layout) or DMP (SD 1.x + LoRA) of the tests (``unidense_core.tiny``),
on the CPU, one thread; the frames are tests/synthetic_video.py's sphere moving over a textured plane. All figures
are measured in one run and printed as ratios where they compare; no threshold is asserted (tests hold the
properties: tests/test_dense_video.py).

* fps: ``video_depth`` over T frames with ``chunk_size`` 1 and with ``--chunk``, best of ``--repeat`` runs.
* peak memory: the largest total of tensor storages alive at once during ``video_depth`` (tests/tensor_meter.py,
  counted per operator, weights and input frames excluded), minus the [T,H,W] float32 result, for growing T, at
  ``--chunk`` frames per chunk and, for contrast, with the whole video as one chunk.
* flicker: ``dense.video.flicker`` on the pixels the sphere never covers (mean absolute frame-to-frame change / the
  sequence's standard deviation): per-frame runs as a single-image user gets them (MERGE: independent noise; DMP:
  the official per-image min-max) against ``video_depth`` with the temporal options (MERGE: shared noise and one
  robust scale, no latent blend on this untrained model, see ``build``; DMP: one robust scale).

    python benchmarks/video_depth.py                    # MERGE-B, 32 frames of 64×64, chunks of 8
    python benchmarks/video_depth.py --method dmp --frames 48 --chunk 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402
from synthetic_video import moving_sphere  # noqa: E402
from tensor_meter import TensorMeter  # noqa: E402

from unidense_core.dense.video import flicker  # noqa: E402


def build(method: str):
    """(pipeline, video_depth options, per-frame depth function) for the tiny model of ``method``."""
    if method == "merge-b":
        from unidense_core.merge.pipeline import MergePipeline
        from unidense_core.tiny import tiny_converters, tiny_pixart, tiny_vae

        empty = (torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1)), None)
        pipe = MergePipeline(tiny_pixart(), tiny_converters(), tiny_vae(), empty_prompt=empty)
        # Shared noise and one scale; no latent blend: this untrained model's final latents are ~150× its noise
        # (x0 = x/√ᾱ when it predicts ε ≈ 0), so the blend's feedback would grow without bound over the frames
        # (run_video reports it). Trained models end in the data range; the blend itself is one axpy per chunk.
        options = dict(num_inference_steps=4, resolution_binning=False, latent_blend=0.0, align="previous")

        def per_frame(frames):  # a single-image user: each frame with its own noise
            gen = torch.Generator().manual_seed(0)
            kw = dict(num_inference_steps=4, resolution_binning=False, posterior="mode", generator=gen)
            return torch.cat([pipe.estimate_depth(frames[t : t + 1], **kw).depth for t in range(len(frames))])

        return pipe, options, per_frame
    from unidense_core.dmp.lora import apply_lora_peft
    from unidense_core.dmp.pipeline import DMPPipeline
    from unidense_core.tiny import random_dmp_lora, tiny_sd_unet, tiny_vae

    unet = tiny_sd_unet()
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    pipe = DMPPipeline(apply_lora_peft(unet, random_dmp_lora(unet, scale=0.3)), tiny_vae(), empty_prompt=ctx)
    options = dict(processing_resolution=0, align="previous")

    def per_frame(frames):  # the official call: min-max per image
        return torch.cat([pipe(frames[t : t + 1], processing_resolution=0).depth for t in range(len(frames))])

    return pipe, options, per_frame


def fps(pipe, frames, chunk: int, options: dict, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        pipe.video_depth(frames, chunk_size=chunk, **options)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def peak_bytes(pipe, frames, chunk: int, options: dict) -> int:
    with TensorMeter() as meter:
        pipe.video_depth(frames, chunk_size=chunk, **options)
    return meter.peak - frames.shape[0] * frames.shape[2] * frames.shape[3] * 4  # minus the [T,H,W] float32 result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["merge-b", "dmp"], default="merge-b")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipe, options, per_frame = build(args.method)
    frames, _, static = moving_sphere(args.frames, args.size, args.size, radius=args.size / 8)
    print(f"{args.method} (tiny random model, CPU, 1 thread), {args.frames} frames of {args.size}×{args.size}")

    # 1. Throughput
    with torch.no_grad():
        one = fps(pipe, frames, 1, options, args.repeat)
        chunked = fps(pipe, frames, args.chunk, options, args.repeat)
    print(f"fps: one frame at a time {one:.2f}, chunks of {args.chunk} {chunked:.2f} (× {chunked / one:.2f})")

    # 2. Peak tensor memory against the number of frames
    small = frames[: max(args.chunk, 2)]
    print("peak tensor memory beyond the [T,H,W] result (MiB):")
    base = peak_bytes(pipe, small, args.chunk, options)
    for n in sorted({len(small), 2 * len(small), 4 * len(small)}):
        clip = moving_sphere(n, args.size, args.size, radius=args.size / 8)[0]
        flat = peak_bytes(pipe, clip, args.chunk, options)
        whole = peak_bytes(pipe, clip, n, options)
        print(
            f"  T = {n:3d}: chunks of {args.chunk} {flat / 2**20:7.2f} (× {flat / base:.3f} of T = {len(small)}); "
            f"one chunk of T {whole / 2**20:7.2f} (× {whole / base:.2f})"
        )

    # 3. Flicker on the static pixels
    with torch.no_grad():
        single = per_frame(frames)
        video = pipe.video_depth(frames, chunk_size=args.chunk, **options).depth
    f_single, f_video = flicker(single, static), flicker(video, static)
    print(
        f"flicker (static pixels): per frame {f_single:.4f}, video_depth with temporal options {f_video:.4f} "
        f"(× {f_video / f_single:.3f})"
    )


if __name__ == "__main__":
    main()
