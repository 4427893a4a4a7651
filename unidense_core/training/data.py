"""Training batches: which samples go in micro-batch k, and each sample's own random seed.

The plan is a pure function of (seed, k): a global batch is drawn for every micro-step (MERGE's mixed sampler:
each batch from one dataset, chosen with the mixing probabilities; per dataset, shuffled epochs without the
remainder, as ``BatchSampler(RandomSampler, drop_last=True)``) and process p takes its slice. Every random draw
that concerns one sample (flip, VAE posterior, timestep, noise, text dropout) comes from a generator seeded by
(seed, k, position in the global batch). So one process with batch 2B and two processes with batch B see the same
samples with the same randomness, and a resumed run continues exactly where the interrupted one stood.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..dense.datasets import FOLDER, RGBDSet


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, stable across platforms)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class PlannedSample:
    source: int  # which dataset
    index: int  # which pair in it
    seed: int  # this sample's randomness
    position: int  # place in the global batch


class BatchPlan:
    """Global micro-batches over one or more datasets (MERGE: Hypersim 0.9 / vKITTI 0.1)."""

    def __init__(self, lengths: Sequence[int], global_batch: int, seed: int, probs: Sequence[float] | None = None):
        if not lengths:
            raise ValueError("Training needs at least one dataset.")
        if probs is None:
            probs = [1.0 / len(lengths)] * len(lengths) if len(lengths) > 1 else [1.0]
        if len(probs) != len(lengths):
            raise ValueError(f"{len(probs)} mixing probabilities for {len(lengths)} datasets; give one per dataset.")
        if any(p < 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(f"Mixing probabilities must be ≥ 0 and not all 0, got {list(probs)}.")
        for i, n in enumerate(lengths):
            if n < global_batch and probs[i] > 0:
                raise ValueError(
                    f"Dataset {i + 1} has {n} pairs, fewer than the global batch of {global_batch} (batch size × "
                    "processes): every batch is drawn from one dataset. Use a smaller batch or more data."
                )
        self.lengths = list(lengths)
        self.global_batch = global_batch
        self.seed = seed
        self.probs = np.asarray(probs, dtype=np.float64) / float(sum(probs))
        self._choices: list[tuple[int, int]] = []  # (dataset, how many batches it gave before) per micro-batch
        self._seen = [0] * len(lengths)

    def _source(self, k: int) -> tuple[int, int]:
        if len(self.lengths) == 1:
            return 0, k
        while len(self._choices) <= k:
            rng = np.random.default_rng(mix_seed(self.seed, 1, len(self._choices)))
            src = int(rng.choice(len(self.lengths), p=self.probs))
            self._choices.append((src, self._seen[src]))
            self._seen[src] += 1
        return self._choices[k]

    def batch(self, k: int) -> list[PlannedSample]:
        """The k-th global micro-batch."""
        src, count = self._source(k)
        per_epoch = self.lengths[src] // self.global_batch
        epoch, offset = divmod(count, per_epoch)
        perm = np.random.default_rng(mix_seed(self.seed, 2, src, epoch)).permutation(self.lengths[src])
        idx = perm[offset * self.global_batch : (offset + 1) * self.global_batch]
        return [PlannedSample(src, int(i), mix_seed(self.seed, 3, k, j), j) for j, i in enumerate(idx)]

    def shard(self, k: int, process: int, num_processes: int) -> list[PlannedSample]:
        """This process's contiguous slice of micro-batch k."""
        per = self.global_batch // num_processes
        return self.batch(k)[process * per : (process + 1) * per]


class MicroBatches(torch.utils.data.Sampler):
    """A batch sampler: this process's list of :class:`PlannedSample` for micro-steps ``start, start + 1, …``."""

    def __init__(self, plan: BatchPlan, start: int, stop: int, process: int, num_processes: int):
        self.plan, self.start, self.stop = plan, start, stop
        self.process, self.num_processes = process, num_processes

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[PlannedSample]]:
        for k in range(self.start, self.stop):
            yield self.plan.shard(k, self.process, self.num_processes)


TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (depth [1,H,W], valid [1,H,W]) -> target [1,H,W]


class TrainingSet(torch.utils.data.Dataset):
    """Reads planned samples: image in [−1, 1], the recipe's target, validity; flip and resize as the official data.

    Order as Marigold's ``_training_preprocess``: crop (layout), horizontal flip (p = ``flip_p``), target
    normalisation, then the resize (nearest-exact; Hypersim 480×640, or ``size`` for every sample).
    """

    def __init__(
        self,
        sets: Sequence[RGBDSet],
        target_fn: TargetFn,
        flip_p: float = 0.5,
        size: tuple[int, int] | None = None,
        size_multiple: int = 8,
    ):
        self.sets, self.target_fn, self.flip_p = list(sets), target_fn, flip_p
        self.size, self.size_multiple = size, size_multiple

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)

    def __getitem__(self, item: PlannedSample) -> dict:
        rgbd = self.sets[item.source]
        sample = rgbd.read(item.index)
        if not sample.valid.any():
            raise ValueError(
                f"'{sample.name}' has no valid depth pixel (all 0, non-finite or outside the valid range "
                f"{rgbd.layout.min_depth}-{rgbd.layout.max_depth} m); remove it from the training data."
            )
        rgb = torch.from_numpy(sample.rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # [3,H,W] in [-1,1]
        depth = torch.from_numpy(sample.depth.copy())[None]  # [1,H,W]
        valid = torch.from_numpy(sample.valid.copy())[None]  # [1,H,W]
        g = generator(mix_seed(item.seed, 0))
        if float(torch.rand(1, generator=g)) < self.flip_p:
            rgb, depth, valid = rgb.flip(-1), depth.flip(-1), valid.flip(-1)
        target = self.target_fn(depth, valid)  # [1,H,W]
        size = rgbd.layout.resize_to or self.size
        if size is not None and tuple(size) != tuple(depth.shape[-2:]):
            smooth = rgbd.kind == FOLDER  # Marigold resizes every raster nearest-exact; plain folders smooth RGB
            rgb = resize(rgb, size, "bilinear" if smooth else "nearest-exact")
            target = resize(target, size, "nearest-exact")
            valid = resize(valid.float(), size, "nearest-exact") > 0.5
        h, w = target.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"'{sample.name}' is {w}×{h} px; this recipe needs sides that are multiples of {self.size_multiple}. "
                "Pass --resize H W (e.g. 480 640)."
            )
        return dict(rgb=rgb, target=target, valid=valid, caption=sample.caption, seed=item.seed, name=sample.name)


def resize(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """[C,H,W] -> [C,h,w]."""
    kw = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None], size=tuple(size), mode=mode, **kw)[0]


def collate(samples: list[dict]) -> dict:
    """Stack a micro-batch; samples of different sizes raise with their names."""
    sizes = {tuple(s["rgb"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        names = ", ".join(f"'{s['name']}' {s['rgb'].shape[-1]}×{s['rgb'].shape[-2]}" for s in samples)
        raise ValueError(f"A batch mixes image sizes ({names}); pass --resize H W so all samples match.")
    return dict(
        rgb=torch.stack([s["rgb"] for s in samples]),
        target=torch.stack([s["target"] for s in samples]),
        valid=torch.stack([s["valid"] for s in samples]),
        caption=[s["caption"] for s in samples],
        seed=[s["seed"] for s in samples],
        name=[s["name"] for s in samples],
    )


def quantile_normalize(depth: torch.Tensor, valid: torch.Tensor, quantile: float = 0.02) -> torch.Tensor:
    """Marigold / MERGE target: the 2 % / 98 % quantiles of valid depth to −1 / 1, clipped (``ScaleShiftDepth``)."""
    mask = valid & (depth > 0)
    if not bool(mask.any()):
        raise ValueError("Depth with no valid pixel cannot be normalised.")
    lo, hi = torch.quantile(depth[mask].float(), torch.tensor([quantile, 1 - quantile]))
    return ((depth - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1).clip(-1, 1)


def disparity_quantile_normalize(depth: torch.Tensor, valid: torch.Tensor, quantile: float = 0.02) -> torch.Tensor:
    """JointNet target [I]: relative disparity 1/d, 2 %/98 % quantiles to −1/1, clipped (near = +1, bright)."""
    mask = valid & (depth > 0)
    disp = torch.where(mask, 1.0 / depth.clamp_min(1e-8), torch.zeros_like(depth))
    return quantile_normalize(disp, mask, quantile)
