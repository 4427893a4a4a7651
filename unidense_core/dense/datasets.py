"""RGB-D datasets on disk: a plain folder of image + depth pairs, and the layouts Marigold prepares and evaluates on
(the ones MERGE's official code reads: ``src/dataset/*``, ``config/dataset/*``).

Each layout says how depth is decoded (units), its valid range, its crops and evaluation masks, and how its split
file lists the pairs; a split file comes from the Marigold / MERGE repositories (``data_split/...``). A dataset
root may be a folder or a ``.tar`` of that folder, as Marigold ships some of them. Every problem names the pair.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io.depth_files import (
    DEPTH_SUFFIXES,
    EXR_IN_ARCHIVE,
    IMAGE_SUFFIXES,
    image_size,
    read_eth3d_depth,
    read_exr_depth,
    read_float_depth,
    read_mask,
    read_png_depth,
)
from .pair_folder import Pair, scan_pair_folder

KB_CROP = (352, 1216)  # KITTI benchmark crop (height, width), bottom-centred
NYU_EIGEN_CROP = (45, 471, 41, 601)  # rows 45:471, cols 41:601 (Eigen et al.)
KITTI_EIGEN_CROP = (0.3324324, 0.91351351, 0.0359477, 0.96405229)  # fractions of the (cropped) GT size
KITTI_GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
SPLIT_HINT = (
    "Split files list the pairs as '<rgb> <depth> [<filled or mask>]' per line; the official ones are in the "
    "Marigold / MERGE repositories under data_split/ (e.g. data_split/nyu/labeled/filename_list_test.txt)."
)


@dataclass(frozen=True)
class Layout:
    """How one dataset is stored and evaluated (Marigold's dataset classes and configs)."""

    name: str
    decode: str  # "png/1000" | "png/256" | "png/100" | "eth3d_raw" | "npy"
    min_depth: float
    max_depth: float
    split_hint: str = ""  # the official split file
    kb_crop: bool = False  # crop image and depth to the KITTI benchmark size
    eval_crop: str | None = None  # "nyu_eigen" | "kitti_eigen" | "kitti_garg" (evaluation mask, image kept)
    mask_from_file: bool = False  # DIODE: third column is the validity mask (.npy); no range check
    resize_to: tuple[int, int] | None = None  # training: resize (nearest-exact) after normalisation (Hypersim)
    drop_missing_depth: bool = False  # KITTI / vKITTI: lines whose depth is 'None' are skipped
    processing_res: int = 0  # Marigold's inference resolution for this set (0 = native)
    align_max_res: int | None = None  # Marigold's eval alignment resolution (ETH3D: 1024)
    eval_alignment: str = "least_square"

    def valid_mask(self, depth: np.ndarray) -> np.ndarray:
        """Range check (and the evaluation crop) as the dataset class's ``_get_valid_mask``."""
        valid = (depth > self.min_depth) & (depth < self.max_depth)
        return valid & eval_crop_mask(self.eval_crop, depth.shape)


LAYOUTS: dict[str, Layout] = {
    # training sets (MERGE: Hypersim 90 % / Virtual KITTI 2 10 %)
    "hypersim": Layout(
        "hypersim", "png/1000", 1e-5, 65.0, "data_split/hypersim/filename_list_train_filtered.txt", resize_to=(480, 640)
    ),
    "vkitti": Layout(
        "vkitti", "png/100", 1e-5, 80.0, "data_split/vkitti/vkitti_train.txt", kb_crop=True, drop_missing_depth=True
    ),
    # evaluation sets (Marigold protocol)
    "nyu": Layout(
        "nyu", "png/1000", 1e-3, 10.0, "data_split/nyu/labeled/filename_list_test.txt", eval_crop="nyu_eigen"
    ),
    "kitti": Layout(
        "kitti",
        "png/256",
        1e-5,
        80.0,
        "data_split/kitti/eigen_test_files_with_gt.txt",
        kb_crop=True,
        eval_crop="kitti_eigen",
        drop_missing_depth=True,
    ),
    "eth3d": Layout(
        "eth3d",
        "eth3d_raw",
        1e-5,
        math.inf,
        "data_split/eth3d/eth3d_filename_list.txt",
        processing_res=756,
        align_max_res=1024,
    ),
    "scannet": Layout("scannet", "png/1000", 1e-3, 10.0, "data_split/scannet/scannet_val_sampled_list_800_1.txt"),
    "diode": Layout(
        "diode",
        "npy",
        0.6,
        350.0,
        "data_split/diode/diode_val_all_filename_list.txt",
        mask_from_file=True,
        processing_res=640,
    ),
}
FOLDER = "folder"  # a plain folder of pairs (see PairFolder)


def eval_crop_mask(kind: str | None, shape: Sequence[int]) -> np.ndarray:
    """The evaluation region of a depth map of ``shape`` (all True without a crop)."""
    h, w = int(shape[-2]), int(shape[-1])
    mask = np.zeros((h, w), dtype=bool)
    if kind is None:
        mask[:] = True
    elif kind == "nyu_eigen":
        r0, r1, c0, c1 = NYU_EIGEN_CROP
        mask[r0:r1, c0:c1] = True
    elif kind in ("kitti_eigen", "kitti_garg"):
        f = KITTI_EIGEN_CROP if kind == "kitti_eigen" else KITTI_GARG_CROP
        mask[int(f[0] * h) : int(f[1] * h), int(f[2] * w) : int(f[3] * w)] = True
    else:
        raise ValueError(f"Unknown evaluation crop {kind!r}; use nyu_eigen, kitti_eigen or kitti_garg.")
    return mask


def kb_crop(arr: np.ndarray) -> np.ndarray:
    """KITTI benchmark crop 352×1216: bottom rows, horizontally centred (Marigold ``kitti_benchmark_crop``)."""
    h, w = arr.shape[:2]
    if h < KB_CROP[0] or w < KB_CROP[1]:
        raise ValueError(f"A {w}×{h} image is smaller than the KITTI benchmark crop {KB_CROP[1]}×{KB_CROP[0]}.")
    top, left = h - KB_CROP[0], (w - KB_CROP[1]) // 2
    return arr[top : top + KB_CROP[0], left : left + KB_CROP[1]]


@dataclass
class RGBDSample:
    """One pair read from disk: the image, the depth in metres and where it is valid."""

    name: str  # the image's path relative to the dataset root
    rgb: np.ndarray  # [H,W,3] uint8
    depth: np.ndarray  # [H,W] float32 metres (0 where there is no measurement)
    valid: np.ndarray  # [H,W] bool
    caption: str = ""


class _Root:
    """Files of a dataset root that is a folder or a tar archive (members read as bytes)."""

    def __init__(self, root: str):
        self.root = os.fspath(root)
        if not os.path.exists(self.root):
            raise FileNotFoundError(f"Dataset root not found: '{self.root}'.")
        self.is_tar = os.path.isfile(self.root) and tarfile.is_tarfile(self.root)
        self._tar: tarfile.TarFile | None = None
        self._members: set[str] | None = None

    def __getstate__(self):  # DataLoader workers re-open the archive themselves
        return {**self.__dict__, "_tar": None}

    def _archive(self) -> tarfile.TarFile:
        if self._tar is None:
            self._tar = tarfile.open(self.root)  # noqa: SIM115 - kept open for the dataset's lifetime
        return self._tar

    def exists(self, rel: str) -> bool:
        if not self.is_tar:
            return os.path.isfile(os.path.join(self.root, rel))
        if self._members is None:
            self._members = {m.name.removeprefix("./") for m in self._archive().getmembers() if m.isfile()}
        return rel in self._members

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.is_tar:
            with open(self.path(rel), "rb") as f:
                return f.read()
        tar = self._archive()
        try:
            member = tar.extractfile("./" + rel)
        except KeyError:
            member = tar.extractfile(rel)
        if member is None:
            raise FileNotFoundError(f"'{rel}' is not a file in '{self.root}'.")
        return member.read()


def read_rgb(data: bytes) -> np.ndarray:
    """Decode an image file's bytes to [H,W,3] uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def read_split(path: str, layout: Layout) -> list[Pair]:
    """Parse a Marigold split file; 'None' depth lines are dropped where the dataset class drops them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Split file not found: '{path}'. {SPLIT_HINT}")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"'{path}' line {n}: expected '<rgb> <depth> ...', got {line.strip()!r}. {SPLIT_HINT}")
            if parts[1] == "None":
                if layout.drop_missing_depth:
                    continue
                raise ValueError(f"'{path}' line {n}: depth is 'None' for '{parts[0]}'.")
            extra = parts[2] if len(parts) > 2 and layout.mask_from_file else None  # NYU's filled depth is unused
            pairs.append(Pair(parts[0], parts[1], extra))
    if not pairs:
        raise ValueError(f"Split file '{path}' lists no pairs. {SPLIT_HINT}")
    return pairs


@dataclass
class RGBDSet:
    """A dataset of RGB-D pairs: a Marigold layout (with its split file) or a plain folder (``kind='folder'``)."""

    kind: str
    root: str
    split: str | None = None
    png_scale: float = 1000.0  # plain folders: PNG units per metre
    min_depth: float = 0.0  # plain folders: valid range (exclusive)
    max_depth: float = math.inf
    pairs: list[Pair] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind != FOLDER and self.kind not in LAYOUTS:
            raise ValueError(f"Unknown dataset kind {self.kind!r}; use '{FOLDER}' or one of {sorted(LAYOUTS)}.")
        self._root = _Root(self.root)
        if self.pairs:
            return
        if self.kind == FOLDER:
            self.pairs = scan_pair_folder(self.root)
        else:
            if self.split is None:
                raise ValueError(
                    f"The {self.kind} layout needs its split file (official: {self.layout.split_hint}). {SPLIT_HINT}"
                )
            self.pairs = read_split(self.split, self.layout)
            self.check_files_exist()

    @property
    def layout(self) -> Layout:
        if self.kind == FOLDER:
            return Layout(FOLDER, "folder", self.min_depth, self.max_depth)
        return LAYOUTS[self.kind]

    def __len__(self) -> int:
        return len(self.pairs)

    def check_files_exist(self, limit: int = 10) -> None:
        """Every listed file must be there; the error names the missing ones (first ``limit``) and counts them."""
        missing = []
        for p in self.pairs:
            for rel in (p.rgb, p.depth, p.extra):
                if rel is not None and not self._root.exists(rel):
                    missing.append(rel)
        if missing:
            shown = ", ".join(f"'{m}'" for m in missing[:limit])
            more = f" (+{len(missing) - limit} more)" if len(missing) > limit else ""
            raise FileNotFoundError(
                f"{len(missing)} file(s) listed in '{self.split}' are missing under '{self.root}': {shown}{more}. "
                "Point the root at the folder the split file's paths are relative to."
            )

    def _depth(self, pair: Pair) -> np.ndarray:
        layout, rel = self.layout, pair.depth
        suffix = os.path.splitext(rel)[1].lower()
        where = f"depth '{rel}' of '{pair.rgb}'"
        if suffix == ".exr":
            if self._root.is_tar:
                raise ValueError(f"{where}: {EXR_IN_ARCHIVE}")
            return read_exr_depth(self._root.path(rel))
        data = self._root.read_bytes(rel)
        if layout.decode == "eth3d_raw":
            return read_eth3d_depth(data, name=where)
        if layout.decode == "npy" or suffix in (".npy", ".npz"):
            return read_float_depth(data, where)
        if layout.decode.startswith("png/"):
            return read_png_depth(data, float(layout.decode[4:]), where)
        return read_png_depth(data, self.png_scale, where)

    def read(self, index: int) -> RGBDSample:
        """Read pair ``index``: decode, crop, validity; an image/depth size mismatch names the pair."""
        pair = self.pairs[index]
        rgb = read_rgb(self._root.read_bytes(pair.rgb))
        depth = self._depth(pair)
        if rgb.shape[:2] != depth.shape:
            raise ValueError(
                f"Pair '{pair.rgb}' / '{pair.depth}': image is {rgb.shape[1]}×{rgb.shape[0]} but depth is "
                f"{depth.shape[1]}×{depth.shape[0]}; image and depth must have the same size."
            )
        layout = self.layout
        if layout.kb_crop:
            rgb, depth = kb_crop(rgb), kb_crop(depth)
        finite = np.isfinite(depth)
        depth = np.where(finite, depth, 0.0).astype(np.float32)
        if layout.mask_from_file:
            valid = read_float_depth(self._root.read_bytes(pair.extra), f"mask '{pair.extra}'").squeeze() != 0
            if layout.kb_crop:
                valid = kb_crop(valid)
        else:
            valid = layout.valid_mask(depth) & finite
            if self.kind == FOLDER and pair.extra is not None:
                mask = read_mask(self._root.path(pair.extra))
                if mask.shape != depth.shape:
                    raise ValueError(
                        f"Mask '{pair.extra}' is {mask.shape[1]}×{mask.shape[0]} but depth '{pair.depth}' is "
                        f"{depth.shape[1]}×{depth.shape[0]}."
                    )
                valid &= mask
        caption = ""
        if pair.caption is not None:
            with open(self._root.path(pair.caption), encoding="utf-8") as f:
                caption = f.read().strip()
        return RGBDSample(pair.rgb, rgb, depth, valid, caption)

    def check_sizes(self, limit: int = 10) -> None:
        """Compare image and depth sizes of every pair from the file headers (plain folders); name mismatches."""
        if self._root.is_tar:
            return
        bad = []
        for p in self.pairs:
            a, b = image_size(self._root.path(p.rgb)), image_size(self._root.path(p.depth))
            if a != b:
                bad.append(f"'{p.rgb}' {a[1]}×{a[0]} vs '{p.depth}' {b[1]}×{b[0]}")
        if bad:
            shown = "; ".join(bad[:limit]) + (f" (+{len(bad) - limit} more)" if len(bad) > limit else "")
            raise ValueError(f"{len(bad)} pair(s) in '{self.root}' have image and depth of different sizes: {shown}.")


__all__ = [
    "DEPTH_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "FOLDER",
    "Layout",
    "Pair",
    "RGBDSample",
    "RGBDSet",
    "eval_crop_mask",
    "kb_crop",
    "read_split",
]
