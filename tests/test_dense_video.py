"""Video depth (unidense_core/dense/video.py and the pipelines' ``video_depth``): chunking, shared noise, the latent
blend, one scale for the sequence, the flicker measure, and memory that does not grow with the number of frames.

Flicker is ``dense.video.flicker`` on the static pixels of a synthetic sequence (tests/synthetic_video.py: a sphere
moving over a textured plane, exact depth): the mean absolute frame-to-frame change divided by the sequence's std.
"""

import math

import pytest
import torch
from synthetic_video import moving_sphere
from tensor_meter import TensorMeter

from unidense_core.dense.video import (
    SequenceAligner,
    blend_start,
    chunks,
    flicker,
    frame_noise,
    run_video,
)
from unidense_core.dmp.lora import apply_lora_peft
from unidense_core.dmp.pipeline import DMPPipeline
from unidense_core.merge.pipeline import MergePipeline
from unidense_core.tiny import random_dmp_lora, tiny_converters, tiny_pixart, tiny_sd_unet, tiny_vae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dmp():
    unet = tiny_sd_unet()
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    return DMPPipeline(apply_lora_peft(unet, random_dmp_lora(unet, scale=0.3)), tiny_vae(), empty_prompt=ctx)


@pytest.fixture(scope="module")
def merge():
    empty = (torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1)), None)
    return MergePipeline(tiny_pixart(), tiny_converters(), tiny_vae(), empty_prompt=empty)


@pytest.fixture(scope="module")
def video():
    return moving_sphere(8, 64, 64)  # images [8,3,64,64], depth [8,64,64], static [64,64]


# ----------------------------------------------------------------------------------------------------------
# The pieces


def test_chunks_cover_every_frame_once():
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(3, 8)) == [(0, 3)]
    with pytest.raises(ValueError, match=r"chunk_size must be an integer from 1 to 4096.*got 0"):
        list(chunks(10, 0))
    with pytest.raises(ValueError, match="has 0 frames"):
        list(chunks(0, 4))


def test_frame_noise_is_shared_or_per_frame_and_never_depends_on_chunking():
    shared = frame_noise((4, 3, 3), 5, 8, seed=7, shared=True)
    assert shared.shape == (3, 4, 3, 3) and torch.equal(shared[0], shared[2])
    assert torch.equal(shared[0], frame_noise((4, 3, 3), 0, 1, 7, True)[0])
    whole = frame_noise((4, 3, 3), 0, 6, seed=7, shared=False)
    parts = torch.cat([frame_noise((4, 3, 3), a, b, 7, False) for a, b in chunks(6, 4)])
    assert torch.equal(whole, parts) and not torch.equal(whole[0], whole[1])
    top = frame_noise((4, 3, 3), 0, 2, seed=2**64 - 1, shared=False)  # the largest ComfyUI seed: frame 1 wraps to 0
    assert torch.equal(top[1], frame_noise((4, 3, 3), 0, 1, 0, False)[0])


def test_blend_is_the_convex_combination_of_the_marigold_example():
    base, prev = torch.randn(3, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.equal(blend_start(base, prev, 0.1), 0.9 * base + 0.1 * prev)
    assert blend_start(base, None, 0.1) is base and blend_start(base, prev, 0.0) is base
    with pytest.raises(ValueError, match="same size"):
        blend_start(base, torch.randn(1, 4, 3, 2), 0.1)


def test_aligner_removes_per_frame_scale_and_shift():
    truth = moving_sphere(6, 32, 32, radius=6)[1]  # the sphere covers 11 % of a frame and moves 3 px a frame
    s = torch.tensor([1.0, 0.5, 2.0, 1.3, 0.8, 3.0])[:, None, None]
    t = torch.tensor([0.0, 1.0, -2.0, 0.3, 0.0, 5.0])[:, None, None]
    jitter = s * truth + t  # what per-frame normalisation does to a sequence
    for mode in ("first", "previous"):
        aligned, scales, shifts = SequenceAligner(mode)(jitter)
        assert scales.shape == (6,) and scales[0] == 1 and shifts[0] == 0
        # the moving sphere's pixels are outliers of the fit (robust refit): scale and shift recovered exactly
        torch.testing.assert_close(scales, 1 / s.flatten(), rtol=1e-5, atol=0)
        torch.testing.assert_close(aligned, truth, rtol=0, atol=1e-4)
        assert flicker(aligned, truth=truth) < 1e-4 < 0.3 < flicker(jitter, truth=truth)
    plain, _, _ = SequenceAligner("first", robust=False)(jitter)  # a plain least-squares fit is pulled by the sphere
    assert (plain - truth).abs().max() > 0.1
    same = truth[:1].expand(6, -1, -1) * s + t
    aligned, _, _ = SequenceAligner("previous")(same)
    torch.testing.assert_close(aligned, truth[:1].expand(6, -1, -1), rtol=0, atol=1e-4)
    raw, scales, _ = SequenceAligner("none")(jitter)
    assert torch.equal(raw, jitter) and torch.equal(scales, torch.ones(6))
    with pytest.raises(ValueError, match="reference frame is 8×8 but the frames are 32×32"):
        SequenceAligner("first", reference=torch.zeros(8, 8))(jitter)


def test_flicker_definition():
    truth = moving_sphere(5, 16, 16, radius=3)[1]
    assert flicker(truth, truth=truth) < 1e-6  # the exact sequence has none
    assert flicker(3 * truth + 2, truth=truth) < 1e-5  # nor one global scale and shift
    assert math.isclose(flicker(4 * truth), flicker(truth), rel_tol=1e-5)  # without truth: global scale ignored
    static = torch.zeros(16, 16, dtype=torch.bool)
    static[:2] = True  # the top rows: the sphere (rows 5..10) never covers them
    jumpy = truth.clone()
    jumpy[2] += 1.0  # one frame jumps by 1: twice (into and out of it) over 4 frame pairs on static pixels
    expected = 2 / 4 / jumpy.std(correction=0).item()
    assert math.isclose(flicker(jumpy, static), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="T ≥ 2"):
        flicker(truth[:1])
    bad = truth.clone()
    bad[3, 4, 5] = math.nan
    with pytest.raises(ValueError, match=r"T=3, H=4, W=5"):
        flicker(bad)


def test_run_video_checks_and_carries_the_previous_latent():
    seen = []

    def estimate(first, stop, previous):
        seen.append((first, stop, None if previous is None else float(previous.flatten()[0])))
        frames = torch.arange(first, stop, dtype=torch.float32)
        return frames[:, None, None].expand(-1, 2, 3).clone(), frames[:, None, None, None].expand(-1, 4, 1, 1)

    out = run_video(7, (2, 3), estimate, chunk_size=3, align="none", blend=0.1)
    assert seen == [(0, 3, None), (3, 6, 2.0), (6, 7, 5.0)]  # the last frame of the chunk before
    assert torch.equal(out.depth[:, 0, 0], torch.arange(7.0))
    seen.clear()
    run_video(4, (2, 3), estimate, chunk_size=2, align="none", blend=0.0)
    assert [p for *_, p in seen] == [None, None]  # without blend nothing is carried
    with pytest.raises(ValueError, match="reference is"):
        run_video(4, (2, 3), estimate, reference=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="latent_blend must be a number from 0 to 1"):
        run_video(4, (2, 3), estimate, blend=1.5)

    def diverging(first, stop, previous):  # final latents 100× the start (×100 per frame): Inf at frame 14
        start = torch.ones(stop - first, 4, 1, 1) if previous is None else previous.expand(stop - first, -1, -1, -1)
        z = 100 * start
        return torch.full((stop - first, 2, 3), float(z.max()) if z.max() < 1e30 else float("inf")), z

    with pytest.raises(
        ValueError, match=r"depth of frames 14..14 has 6 non-finite.*latent_blend 0.1.*Lower latent_blend"
    ):
        run_video(20, (2, 3), diverging, chunk_size=1, align="none", blend=0.1)
    with pytest.raises(RuntimeError, match=r"returned depth \(2, 2, 3\) for frames 0..2"):
        run_video(3, (2, 3), lambda a, b, p: estimate(a, b - 1 if b == 3 else b, p), chunk_size=3)


# ----------------------------------------------------------------------------------------------------------
# DMP (deterministic, its own sampler)


def test_dmp_identical_frames_give_identical_depth(dmp, video):
    frames = video[0][3:4].expand(6, -1, -1, -1)
    depth = dmp.video_depth(frames, chunk_size=4, processing_resolution=0).depth
    torch.testing.assert_close(depth, depth[:1].expand_as(depth), rtol=0, atol=1e-6)


def test_dmp_chunked_equals_one_frame_at_a_time_and_the_pipeline(dmp, video):
    images = video[0][:5]
    chunked = dmp.video_depth(images, chunk_size=4, align="none", processing_resolution=0).depth
    single = dmp.video_depth(images, chunk_size=1, align="none", processing_resolution=0).depth
    torch.testing.assert_close(chunked, single, rtol=0, atol=1e-5)
    z = dmp.encode_image(images[2:3] * 2 - 1, posterior="mode")  # the same frame through the pipeline's call
    raw = dmp(images[2:3], image_latents=z, target_scale=1.0, processing_resolution=0).depth  # × 1: the raw read-out
    torch.testing.assert_close(chunked[2:3], raw, rtol=0, atol=1e-5)


def test_dmp_video_flickers_less_than_frame_by_frame(dmp, video):
    images, _, static = video
    per_frame = torch.cat([dmp(images[i : i + 1], processing_resolution=0).depth for i in range(len(images))])
    ours = dmp.video_depth(images, chunk_size=4, align="previous", processing_resolution=0).depth
    f_frame, f_video = flicker(per_frame, static), flicker(ours, static)
    assert f_video < 0.25 * f_frame, (f_video, f_frame)  # per-frame min-max normalisation jumps with the sphere


# ----------------------------------------------------------------------------------------------------------
# MERGE-B (noise-based)


def test_merge_shared_noise_flickers_less_than_independent_noise(merge, video):
    images, _, static = video
    options = dict(chunk_size=4, num_inference_steps=2, resolution_binning=False, align="none")
    independent = merge.video_depth(images, shared_noise=False, latent_blend=0.0, **options).depth
    shared = merge.video_depth(images, shared_noise=True, latent_blend=0.0, **options).depth
    blended = merge.video_depth(images, shared_noise=False, latent_blend=0.1, **options).depth
    f_ind, f_shared, f_blend = (flicker(d, static) for d in (independent, shared, blended))
    assert f_shared < 0.1 * f_ind and f_blend < 0.8 * f_ind, (f_ind, f_shared, f_blend)


def test_merge_identical_frames_and_chunking(merge, video):
    frames = video[0][2:3].expand(5, -1, -1, -1)
    options = dict(num_inference_steps=2, resolution_binning=False, latent_blend=0.0)
    depth = merge.video_depth(frames, chunk_size=3, **options).depth
    torch.testing.assert_close(depth, depth[:1].expand_as(depth), rtol=0, atol=1e-6)
    a = merge.video_depth(video[0][:5], chunk_size=2, shared_noise=False, align="none", **options).depth
    b = merge.video_depth(video[0][:5], chunk_size=5, shared_noise=False, align="none", **options).depth
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # per-frame noise from seed + t: chunking changes nothing


def test_memory_does_not_grow_with_the_number_of_frames(merge):
    """Peak bytes of tensors allocated during the run (tests/tensor_meter.py), minus the [T,H,W] output."""
    images = moving_sphere(32, 32, 32)[0]
    options = dict(num_inference_steps=1, resolution_binning=False, latent_blend=0.1, align="previous")
    peaks = {}
    for n, chunk in ((8, 4), (32, 4), (8, 8), (32, 32)):
        with TensorMeter() as meter:
            merge.video_depth(images[:n], chunk_size=chunk, **options)
        peaks[n, chunk] = meter.peak - n * 32 * 32 * 4
    assert peaks[32, 4] <= peaks[8, 4] + 32 * 64, peaks  # flat (+ a few bytes of per-frame scale and shift)
    assert peaks[32, 32] > 3 * peaks[8, 8], peaks  # the meter sees growth when a chunk holds the whole video
