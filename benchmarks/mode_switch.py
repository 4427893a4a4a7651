"""ModeSwitch cost on a PixArt-XL-size ComfyUI MODEL: time per call (goal < 10 ms) and memory growth (goal < 1% of
the model; it must copy no weights). Needs a real ComfyUI:
    COMFYUI_PATH=/path/to/ComfyUI <ComfyUI's python> benchmarks/mode_switch.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout and run with ComfyUI's python")
    sys.path.insert(0, comfy_path)
    sys.path.append(ROOT)  # after ComfyUI: this pack's nodes/ must not shadow ComfyUI's nodes module
    import comfy.cli_args
    import utils.install_util  # noqa: F401  ComfyUI's utils package, before `nodes` puts comfy/ on sys.path

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    import nodes
    from unidense_core.merge.converters import ConverterConfig, MergeConverters

    assert asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes"))
    mode_switch = nodes.NODE_CLASS_MAPPINGS["UniDense_ModeSwitch"]
    handle_cls = sys.modules[mode_switch.__module__].ConverterHandle

    cfg = {
        "image_model": "pixart_sigma",
        "depth": 28,
        "hidden_size": 1152,
        "num_heads": 16,
        "patch_size": 2,
        "in_channels": 4,
        "caption_channels": 4096,
        "model_max_length": 120,
        "micro_condition": False,
    }
    mc = comfy.supported_models.PixArtSigma(cfg)
    mc.set_inference_dtype(torch.float32, None)
    base = comfy.model_patcher.ModelPatcher(mc.get_model({}), torch.device("cpu"), torch.device("cpu"))
    conv = MergeConverters(ConverterConfig()).eval()
    handle = handle_cls(
        comfy.model_patcher.ModelPatcher(conv, mm.get_torch_device(), mm.unet_offload_device()), conv.config, "bench"
    )
    model_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    ptrs = {id(p): p.data_ptr() for p in base.model.parameters()}
    for mode in ("depth", "generate"):  # warm-up
        mode_switch.execute(base, handle, mode, "pixart_alpha")
    before = rss_bytes()
    times, keep = [], []
    for i in range(50):
        t0 = time.perf_counter()
        keep.append(mode_switch.execute(base, handle, ("depth", "generate")[i % 2], "pixart_alpha")[0])
        times.append(time.perf_counter() - t0)
    grown = rss_bytes() - before
    same = all(p.data_ptr() == ptrs[id(p)] for p in keep[0].model.parameters())
    print(f"model {model_bytes / 2**20:.0f} MiB; 50 ModeSwitch outputs kept alive")
    print(f"ModeSwitch median {statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms (goal < 10 ms)")
    print(
        f"RSS growth for 50 clones {grown / 2**20:.1f} MiB = {100 * grown / model_bytes:.3f}% of the model "
        f"(goal < 1% per switch); clones share the base weights: {same}"
    )


if __name__ == "__main__":
    main()
