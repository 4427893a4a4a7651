"""Video: depth for long frame sequences, chunk by chunk, with one scale for the whole sequence and little flicker.

Users of depth nodes ask for long video that neither flickers nor runs out of memory (prs-eth/Marigold#17,
fuxiao0719/GeoWizard#4, DepthAnything/Depth-Anything-V2#85). :func:`run_video` drives any per-frame estimator (a
:data:`ChunkFn`) over the frames in chunks of ``chunk_size``; what it implements:

1. **Memory flat in the number of frames.** Between chunks only these are held: the output [T,H,W] float32 (allocated
   once), the previous chunk's last final latent [1,C,h,w], the shared noise [1,C,h,w] and the alignment reference
   [H,W]. A chunk's latents, decoded images and activations are released before the next chunk starts. (The input
   frames are the caller's: ComfyUI holds its IMAGE batch anyway.)
2. **Shared starting noise** (noise-based estimators: MERGE, MERGE-L, JointNet): every frame starts from the same
   ε, drawn once from the seed (:func:`frame_noise`), as diffusers' Marigold video example and GeoWizard#4's "same
   seed for every frame". Without it, frame t's noise is drawn from seed + t, so results never depend on the chunk
   size. DMP starts from the image latent instead of noise (deterministic): nothing to share.
3. **Latent blend from the previous frame** (:func:`blend_start`): frame t starts from (1 − β)·base_t + β·ẑ, where
   base_t is the method's own start (the shared noise ε; DMP's image latent z_x) and ẑ the final latent (model
   space) of the previous chunk's last frame, i.e. of frame t − 1 when ``chunk_size`` is 1. This is the convex
   combination of diffusers' "Frame-by-frame Video Processing with Temporal Consistency" (Marigold usage guide,
   ``latents = 0.9 * latent_common + 0.1 * last_frame_latent``, β = 0.1), the answer given in prs-eth/Marigold#17.
   Like that example, ẑ is mixed in linearly, not re-noised by the forward process. Within a chunk frames run as one
   batch, so all of them blend with the previous chunk's last frame (chunk_size 1 = the example exactly).
4. **One scale for the sequence** instead of per-frame normalisation (which makes flicker worse: kijai DAv2, users.md
   §3 B): the raw read-out of every frame, least-squares aligned (scale and shift in the map's own space, float32;
   refitted without the pixels of moving content, :func:`robust_scale_shift`) to a reference: the first frame
   (``"first"``), or the previous aligned frame (``"previous"``: the running result, robust to content that moves
   away from the first frame), or kept as estimated (``"none"``: deterministic read-outs already on one scale).

:func:`flicker` measures the result; the tests and ``benchmarks/video_depth.py`` use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..io.checks import check_finite
from .align import batched_scale_shift

ALIGN = ("previous", "first", "none")
SEQUENCE_DEPTH = "relative depth on one scale for the whole video (raw read-out, least-squares aligned), near = small"
MAX_CHUNK = 4096
OFFICIAL_BLEND = 0.1  # diffusers' Marigold video example: 0.9 · shared noise + 0.1 · previous frame's latent
ROBUST_ROUNDS = 4  # trimmed refits of the frame-to-reference alignment
ROBUST_CUT = 3.0  # a pixel is an outlier when its residual exceeds this many robust σ (1.4826 · MAD)

# (first frame, stop, previous final latent [1,C,h,w] or None) -> (depth [c,H,W], final latents [c,C,h,w])
ChunkFn = Callable[[int, int, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class VideoDepth:
    """``depth`` [T,H,W] float32 (aligned raw read-out), ``scales``/``shifts`` [T] (aligned = scale · raw + shift)."""

    depth: torch.Tensor
    scales: torch.Tensor
    shifts: torch.Tensor


def check_chunk_size(chunk_size: object, name: str = "chunk_size") -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(
            f"{name} must be an integer from 1 to {MAX_CHUNK} (frames per batch), got {chunk_size!r}. Larger chunks "
            "are faster and need more memory; 1 is one frame at a time."
        )
    return chunk_size


def check_blend(blend: object, name: str = "latent_blend") -> float:
    if isinstance(blend, bool) or not isinstance(blend, (int, float)) or not 0.0 <= blend <= 1.0:
        raise ValueError(
            f"{name} must be a number from 0 to 1 (0 = off, {OFFICIAL_BLEND} = diffusers' Marigold video "
            f"example), got {blend!r}."
        )
    return float(blend)


def check_align(align: object, name: str = "align") -> str:
    if align not in ALIGN:
        raise ValueError(f"{name} must be one of {ALIGN}, got {align!r}.")
    return align


def chunks(n_frames: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(first, stop) of each chunk, in order."""
    check_chunk_size(chunk_size)
    if n_frames < 1:
        raise ValueError(f"The video has {n_frames} frames; connect at least one frame.")
    for first in range(0, n_frames, chunk_size):
        yield first, min(first + chunk_size, n_frames)


def frame_noise(
    shape: tuple[int, ...], first: int, stop: int, seed: int, shared: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """N(0, I) starting noise of frames first..stop−1, [c, *shape]: one draw from ``seed`` for all frames (shared), or
    frame t's own draw from ``seed + t`` (mod 2⁶⁴, ComfyUI's seed range), so a frame's noise never depends on the
    chunking."""
    if shared:
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        return eps[None].expand(stop - first, *shape)
    draws = [
        torch.randn(shape, generator=torch.Generator().manual_seed((seed + t) % 2**64), dtype=dtype)
        for t in range(first, stop)
    ]
    return torch.stack(draws)


def blend_start(base: torch.Tensor, previous: torch.Tensor | None, blend: float) -> torch.Tensor:
    """(1 − β)·base + β·previous (diffusers' Marigold video example, β = ``blend``); ``base`` itself without a
    previous latent or with β = 0. ``previous`` [1,C,h,w] is broadcast over the chunk's frames."""
    if previous is None or blend == 0.0:
        return base
    if tuple(previous.shape[1:]) != tuple(base.shape[1:]):
        raise ValueError(
            f"The previous frame's latent is {tuple(previous.shape[1:])} but this chunk's start is "
            f"{tuple(base.shape[1:])}: every frame of a video must have the same size."
        )
    return (1.0 - blend) * base + blend * previous.to(base)


def robust_scale_shift(
    pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None, shift: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (scale, shift) of one map [H,W] to a reference, refitted without outliers; float32.

    Moving content (an object that left or entered the frame since the reference) is not an error of scale: after a
    plain fit, ``ROBUST_ROUNDS`` concentration steps refit on the better-fitting half of the valid pixels (least
    trimmed squares), then up to ``ROBUST_ROUNDS`` rounds refit on every pixel whose residual is within ``ROBUST_CUT``
    robust σ (1.4826 · median absolute residual of the kept pixels, at least 1e-6 of the reference's spread). With a
    clear majority of pixels that agree up to an affine map, their (scale, shift) is recovered to float precision."""
    valid = torch.ones(pred.shape, dtype=torch.bool) if mask is None else mask
    keep = valid
    scale, offset = batched_scale_shift(pred, ref, keep, shift)
    if int(valid.sum()) < 4:
        return scale, offset
    floor = 1e-6 * float(ref[valid].float().std(correction=0))
    for round_ in range(2 * ROBUST_ROUNDS):
        residual = (scale * pred.float() + offset - ref.float()).abs()
        inside = residual[valid]
        if round_ < ROBUST_ROUNDS:  # concentration steps: the better-fitting half of all valid pixels
            cut = float(inside.median())
        else:  # then every pixel within ROBUST_CUT robust σ of that fit
            cut = ROBUST_CUT * 1.4826 * float(residual[keep].median())
        new_keep = valid & (residual <= max(cut, floor))
        if int(new_keep.sum()) < 2:
            break
        if torch.equal(new_keep, keep) and round_ >= ROBUST_ROUNDS:
            break
        keep = new_keep
        scale, offset = batched_scale_shift(pred, ref, keep, shift)
    return scale, offset


class SequenceAligner:
    """Streaming least-squares alignment of frames to one scale: holds one reference frame [H,W], nothing else."""

    def __init__(
        self, mode: str = "previous", shift: bool = True, reference: torch.Tensor | None = None, robust: bool = True
    ):
        self.mode = check_align(mode)
        self.shift = shift
        self.fit = robust_scale_shift if robust else batched_scale_shift
        self.reference = None if reference is None else reference.float()

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None):
        """[c,H,W] -> (aligned [c,H,W], scales [c], shifts [c]); frames in order."""
        out, scales, shifts = (
            torch.empty_like(depth, dtype=torch.float32),
            torch.ones(len(depth)),
            torch.zeros(len(depth)),
        )
        for i, frame in enumerate(depth.float()):
            mask = None if valid is None else valid[i]
            if self.mode == "none":
                out[i] = frame
                continue
            if self.reference is None:
                aligned = frame  # the first frame sets the scale of the whole sequence
            else:
                if tuple(self.reference.shape) != tuple(frame.shape):
                    raise ValueError(
                        f"The reference frame is {self.reference.shape[-1]}×{self.reference.shape[-2]} but the frames "
                        f"are {frame.shape[-1]}×{frame.shape[-2]}; give a reference of the video's size."
                    )
                s, t = self.fit(frame, self.reference, mask, self.shift)
                aligned, scales[i], shifts[i] = s * frame + t, s, t
            out[i] = aligned
            if self.mode == "previous" or self.reference is None:
                self.reference = aligned.clone()
        return out, scales, shifts


def run_video(
    n_frames: int,
    size: tuple[int, int],
    estimate: ChunkFn,
    chunk_size: int = 8,
    align: str = "previous",
    blend: float = 0.0,
    reference: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VideoDepth:
    """Depth of a video: ``estimate`` per chunk, the previous final latent carried over (for ``blend``), each chunk
    aligned to one scale as it arrives, written into one [T,H,W] float32 output (see the module doc for what is held).

    ``estimate(first, stop, previous)`` returns the chunk's depth [c,H,W] (raw read-out) and final latents [c,…];
    ``previous`` is the last final latent of the chunk before (None for the first chunk or when ``blend`` is 0).
    ``reference`` [H,W]: align to this map instead of the first frame. ``progress(done, total)`` after each chunk.
    """
    check_chunk_size(chunk_size)
    check_align(align)
    blend = check_blend(blend)
    ranges = list(chunks(n_frames, chunk_size))
    height, width = size
    if reference is not None and tuple(reference.shape) != (height, width):
        raise ValueError(
            f"reference is {tuple(reference.shape)[::-1][:2]} (W×H) but the video's depth is {width}×{height}; give a "
            "reference map of the video's size."
        )
    aligner = SequenceAligner(align, reference=reference)
    out = torch.empty(n_frames, height, width, dtype=torch.float32)
    scales, shifts = torch.ones(n_frames), torch.zeros(n_frames)
    previous = None
    for first, stop in ranges:
        depth, latents = estimate(first, stop, previous if blend > 0 else None)
        if tuple(depth.shape) != (stop - first, height, width):
            raise RuntimeError(
                f"The estimator returned depth {tuple(depth.shape)} for frames {first}..{stop - 1}; expected "
                f"{(stop - first, height, width)}."
            )
        try:
            check_finite(depth, f"depth of frames {first}..{stop - 1}", "THW")
        except ValueError as exc:
            if previous is None or blend == 0:
                raise
            size = float(previous.abs().max())
            raise ValueError(
                f"{exc} These frames started from the blend with the previous frame's final latent (latent_blend "
                f"{blend}, largest |value| {size:.3g}); a model whose final latents lie far outside the noise's range "
                "feeds back and grows from frame to frame. Lower latent_blend (0 = off) or check the model."
            ) from None
        out[first:stop], scales[first:stop], shifts[first:stop] = aligner(depth.detach().cpu())
        previous = latents[-1:].detach().clone() if blend > 0 else None
        del depth, latents
        if progress is not None:
            progress(stop, n_frames)
    return VideoDepth(out, scales, shifts)


def flicker(depth: torch.Tensor, static: torch.Tensor | None = None, truth: torch.Tensor | None = None) -> float:
    """Temporal flicker of a depth sequence [T,H,W], T ≥ 2, as a fraction of the sequence's spread (0 = none).

    F = mean over t = 1..T−1 of the mean over the static pixels S of |(a_t − a_{t−1}) − (g_t − g_{t−1})|, where

    * without ``truth``: a = depth / σ (σ = standard deviation of all values of all frames: one scale for the whole
      sequence, so F ignores a global scale and shift but counts every per-frame jump) and g = 0;
    * with ``truth`` [T,H,W] (a synthetic sequence's exact depth): a = s·depth + c with one least-squares (s, c) over
      all frames and pixels, both divided by σ of the truth, and g = truth / σ; F then measures changes of the
      prediction that the scene does not have;
    * S = ``static`` ([H,W] or [T,H,W] bool: pixels whose true depth does not change; a pixel counts at t when it is
      static at t and t−1), default all pixels.
    """
    if depth.ndim != 3 or depth.shape[0] < 2:
        raise ValueError(f"flicker needs a sequence [T,H,W] with T ≥ 2, got {tuple(depth.shape)}.")
    d = check_finite(depth, "depth", "THW").float()
    mask = torch.ones_like(d, dtype=torch.bool) if static is None else static.expand_as(d)
    pair = mask[1:] & mask[:-1]  # [T−1,H,W]
    if not pair.any():
        raise ValueError("No pixel is static in two consecutive frames; flicker has nothing to measure.")
    if truth is None:
        sigma = d.std(correction=0).clamp_min(1e-12)
        change = (d[1:] - d[:-1]) / sigma
    else:
        if truth.shape != depth.shape:
            raise ValueError(f"truth is {tuple(truth.shape)} but depth is {tuple(depth.shape)}.")
        g = check_finite(truth, "truth", "THW").float()
        s, c = batched_scale_shift(d.reshape(1, -1, d.shape[-1]), g.reshape(1, -1, g.shape[-1]))
        a = s * d + c
        sigma = g.std(correction=0).clamp_min(1e-12)
        change = ((a[1:] - a[:-1]) - (g[1:] - g[:-1])) / sigma
    per_frame = (change.abs() * pair).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1)
    has = pair.any(-1).any(-1)
    return float(per_frame[has].mean())
