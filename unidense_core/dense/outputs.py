"""What every standalone pipeline returns, and how the command line writes it to disk.

One output type for all methods: float tensors with their meaning spelled out (``depth_kind``), so a user never has
to remember which method's depth is disparity and which is metric.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# The meaning of each method's depth values (``DenseOutput.depth_kind``).
AFFINE_DEPTH = "affine-invariant depth in [0, 1], 0 = near"  # MERGE
DISPARITY = "relative disparity in [0, 1], 1 = near"  # JointNet (MiDaS-style)
RELATIVE_DEPTH = "relative depth, min-max normalised to [0, 1] per image, 0 = near"  # DMP, target_scale 0
METRIC_DEPTH = "metric depth in m (decoded value × target_scale)"  # DMP with the checkpoint's target_scale


@dataclass
class DenseOutput:
    """A pipeline's result: batch-first float tensors on the CPU or the pipeline's device.

    ``depth`` [B,H,W] with ``depth_kind`` saying what its values mean and ``depth_range`` the value written as 65535
    in a 16-bit PNG (1 for maps in [0, 1]; the checkpoint's ``target_scale`` for metric depth, as the official DMP
    preview). ``image`` [B,3,H,W] in [0, 1]: the generated RGB, or the prediction image of DMP's image tasks (the
    normal map's colours for normals). ``normals`` [B,3,H,W]: unit vectors in [−1, 1]. ``latents``: the final
    latent in model space (scaled by the VAE factor).
    """

    depth: torch.Tensor | None = None
    depth_kind: str = ""
    depth_range: float = 1.0
    image: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    latents: torch.Tensor | None = None

    def depth_unit(self) -> torch.Tensor:
        """``depth / depth_range`` clamped to [0, 1]: the values a 16-bit PNG stores as ``round(d · 65535)``."""
        if self.depth is None:
            raise ValueError("This output has no depth.")
        return (self.depth.float() / self.depth_range).clamp(0, 1)


def output_prefix(path: str) -> str:
    """``results/cat`` or ``results/cat.png`` -> ``results/cat`` (the files get ``_depth.png`` etc. appended)."""
    stem, ext = os.path.splitext(path)
    return stem if ext.lower() in (".png", ".npy") else path


def save_image_png8(image: torch.Tensor, path: str) -> str:
    """One [3,H,W] image in [0, 1] -> an 8-bit RGB PNG (``round(x · 255)``, as diffusers' ``numpy_to_pil``)."""
    import numpy as np
    from PIL import Image

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image_png8 writes one [3,H,W] image; got shape {tuple(image.shape)}.")
    arr = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def save_output(out: DenseOutput, prefix: str, index: int = 0) -> list[str]:
    """Write batch item ``index`` next to ``prefix``: ``_depth.png`` (16-bit) + ``_depth.npy`` (raw float32),
    ``_normals.png`` (8-bit visualisation) + ``_normals.npy`` ([H,W,3] unit vectors), ``_image.png`` (8-bit);
    for a prediction image without depth or normals (DMP image tasks) also ``_image.npy`` ([H,W,3] in [0, 1])."""
    import numpy as np

    from .readout import save_depth_png16

    folder = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Output folder '{folder}' does not exist; create it first or choose another --out.")
    written = []
    if out.depth is not None:
        written.append(save_depth_png16(out.depth_unit()[index], f"{prefix}_depth.png"))
        np.save(f"{prefix}_depth.npy", out.depth[index].detach().float().cpu().numpy())
        written.append(f"{prefix}_depth.npy")
    if out.normals is not None:
        np.save(f"{prefix}_normals.npy", out.normals[index].detach().float().cpu().permute(1, 2, 0).numpy())
        written.append(f"{prefix}_normals.npy")
        written.append(save_image_png8((out.normals[index] + 1) / 2, f"{prefix}_normals.png"))
    elif out.image is not None:
        written.append(save_image_png8(out.image[index], f"{prefix}_image.png"))
        if out.depth is None:
            np.save(f"{prefix}_image.npy", out.image[index].detach().float().cpu().permute(1, 2, 0).numpy())
            written.append(f"{prefix}_image.npy")
    return written


def write_outputs(out: DenseOutput, prefix: str) -> int:
    """Write batch item 0 of a pipeline's output next to ``prefix`` and print each file and the depth's meaning."""
    prefix = output_prefix(prefix)
    for path in save_output(out, prefix):
        print(f"wrote {path}")
    if out.depth is not None:
        scale = f"; the PNG stores depth / {out.depth_range:g}" if out.depth_range != 1 else ""
        print(f"depth: {out.depth_kind}{scale}")
    return 0
