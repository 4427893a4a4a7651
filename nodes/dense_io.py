"""DENSE maps to and from files that keep their values: 32-bit float EXR, .npy, 16-bit PNG."""

from __future__ import annotations

import os

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..unidense_core.dense.convert import RANGES
from ..unidense_core.dense.files import FORMATS, PNG_KEY, png_ranges, save_dense
from ..unidense_core.dense.maps import NORMAL_CONVENTIONS, SCALES, DenseMap
from ..unidense_core.io.checks import check_choice, check_finite, check_number
from ..unidense_core.io.exr import read_exr
from .dense import _save_path
from .dense_maps import CATEGORY, _check_dense
from .types import Dense

LOADABLE = (".exr", ".npy")
PREFIX = f"{PNG_KEY}:"  # the EXR attributes UniDense writes


class SaveDense(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_SaveDense",
            display_name="UniDense Save Dense (EXR / npy / 16-bit PNG)",
            category=CATEGORY,
            description="Save a DENSE map into the output folder, named as ComfyUI's own save nodes do "
            "(prefix_00001_.ext). exr: 32-bit float, read back bit-identical, its meaning in the header. npy: the raw "
            "float32 array. png16: one channel, round((v − low)/(high − low)·65535), the range and meaning in a text "
            "chunk (depth/disparity only). Normals in OpenGL or DirectX convention.",
            inputs=[
                Dense.Input("dense", tooltip="A DENSE map."),
                io.Combo.Input("format", options=list(FORMATS), default="exr", tooltip="File format (see above)."),
                io.Combo.Input(
                    "normals_convention",
                    options=list(NORMAL_CONVENTIONS),
                    default="opengl",
                    tooltip="Normals only: opengl (y up: Blender, Unity) or directx (y down: Unreal, 3ds Max).",
                ),
                io.Combo.Input(
                    "png_range",
                    options=list(RANGES),
                    default="per_image",
                    tooltip="png16 only: which values become 0 and 65535: each image's min..max, the batch's, or "
                    "fixed low..high (values outside it are refused, never clipped).",
                ),
                io.Float.Input("low", default=0.0, min=-1e6, max=1e6, step=0.01, tooltip="png16 fixed range: low."),
                io.Float.Input("high", default=10.0, min=-1e6, max=1e6, step=0.01, tooltip="png16 fixed range: high."),
                io.String.Input("filename_prefix", default="unidense/dense", tooltip="Output subfolder/name prefix."),
            ],
            outputs=[
                io.String.Output(display_name="first_file", tooltip="Path of the first file, relative to output.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        dense,
        format: str = "exr",  # noqa: A002  (the input's name)
        normals_convention: str = "opengl",
        png_range: str = "per_image",
        low: float = 0.0,
        high: float = 10.0,
        filename_prefix: str = "unidense/dense",
    ) -> io.NodeOutput:
        dense = _check_dense(dense)
        check_choice(format, "format", list(FORMATS))
        check_choice(normals_convention, "normals_convention", list(NORMAL_CONVENTIONS))
        check_choice(png_range, "png_range", list(RANGES))
        check_number(low, "low")
        check_number(high, "high")
        if format == "png16" and dense.kind == "normals":
            raise ValueError("format png16 holds one channel; save normals as exr or npy.")
        ranges = png_ranges(dense, png_range, low, high) if format == "png16" else None
        height, width = dense.size
        full_dir, name, counter, subfolder = _save_path(filename_prefix, width, height)
        files, saved = [], []
        for i in range(dense.batch_size):
            filename = f"{name}_{counter + i:05}_.{'png' if format == 'png16' else format}"
            lo, hi = (float(x) for x in ranges[i]) if ranges is not None else (0.0, 1.0)
            save_dense(dense, i, os.path.join(full_dir, filename), format, normals_convention, lo, hi)
            files.append(f"{subfolder}/{filename}" if subfolder else filename)
            saved.append(ui.SavedResult(filename, subfolder, io.FolderType.output))
        text = f"{dense.describe()}\n" + "\n".join(files)
        results = {"text": [text]} if format != "png16" else {"images": saved, "text": [text]}
        return io.NodeOutput(files[0], ui=results)


class LoadDense(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_LoadDense",
            display_name="UniDense Load Dense (EXR / npy)",
            category=CATEGORY,
            description="Load a depth or disparity map from a float32 EXR (Y channel; a UniDense EXR keeps its "
            "meaning and valid mask) or a [H,W] .npy in ComfyUI's input folder, e.g. a metric reference to align to.",
            inputs=[
                io.String.Input("file", default="depth.exr", tooltip="Path inside ComfyUI's input folder (.exr/.npy)."),
                io.Combo.Input(
                    "kind",
                    options=["depth", "disparity"],
                    default="depth",
                    tooltip="What the values are, when the file does not say it (UniDense EXRs do).",
                ),  # fmt: skip
                io.Combo.Input("scale", options=list(SCALES), default="metric", tooltip="As kind."),
                io.String.Input("units", default="m", tooltip="Units of metric values, as kind."),
                io.Boolean.Input(
                    "zero_is_invalid",
                    default=True,
                    tooltip="Pixels ≤ 0 hold no measurement (the convention of sparse depth files): mark them invalid.",
                ),
            ],
            outputs=[Dense.Output(display_name="dense", tooltip="The map [1,H,W] with its meaning.")],
        )

    @classmethod
    def execute(
        cls, file: str, kind: str = "depth", scale: str = "metric", units: str = "m", zero_is_invalid: bool = True
    ) -> io.NodeOutput:
        check_choice(kind, "kind", ["depth", "disparity"])
        check_choice(scale, "scale", list(SCALES))
        root = os.path.abspath(folder_paths.get_input_directory())
        path = os.path.abspath(os.path.join(root, file))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"file {file!r} points outside ComfyUI's input folder; give a path inside it.")
        if not path.lower().endswith(LOADABLE):
            raise ValueError(f"file {file!r} must be a .exr or .npy file.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"file '{file}' is not in ComfyUI's input folder ({root}); put it there.")
        meta: dict[str, str] = {}
        valid = None
        if path.lower().endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            values, channels, attrs = read_exr(path)
            meta = {k[len(PREFIX) :]: v for k, v in attrs.items() if k.startswith(PREFIX)}
            if "valid" in channels:
                valid = torch.from_numpy(channels["valid"] > 0.5)[None]
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(f"file {file!r} holds {values.dtype} {values.shape}; expected a float [H,W] map.")
        t = torch.from_numpy(values.astype(np.float32))[None]
        if not zero_is_invalid:  # every pixel counts: say where a non-finite one is (H, W of the file)
            check_finite(t if valid is None else torch.where(valid, t, 0.0), f"file {file!r}", "BHW")
        kind, scale = meta.get("kind", kind), meta.get("scale", scale)
        units = meta.get("units", units if scale == "metric" else "")
        if zero_is_invalid:
            positive = torch.isfinite(t) & (t > 0)
            valid = positive if valid is None else valid & positive
        if valid is not None and bool(valid.all()):
            valid = None
        return io.NodeOutput(DenseMap(t, kind, scale, units, valid, meta.get("source", "file")))


NODES: list[type[io.ComfyNode]] = [SaveDense, LoadDense]
