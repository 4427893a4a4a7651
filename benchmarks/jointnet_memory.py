"""Peak memory of loading an official JointNet folder, as a ratio of the weights' bytes.

It writes a folder in the official layout (unet/ + jointnet/, config.json + diffusion_pytorch_model.bin in fp32, as
Apple ships them) for an SD2.1-base-shaped UNet with fewer channels (--scale of SD2.1's 320/640/1280/1280), then
loads it in a fresh process and reads the kernel's peak RSS (VmHWM, reset after the imports), after loading and
again after reading every weight once (memory-mapped weights are read lazily, on first use). Peak RSS includes
file pages mapped from the weights files (reclaimable page cache); the anonymous peak (RssAnon, sampled every
2 ms) is what cannot be reclaimed. Each ratio is (peak - RSS before loading) / (bytes of both weights files).

    python benchmarks/jointnet_memory.py                               # core loader (diffusers modules)
    COMFYUI_PATH=/path/to/ComfyUI <ComfyUI's python> benchmarks/jointnet_memory.py   # also the ComfyUI node
    ... --scale 0.5 --dtype fp16                                       # options: model size, loaded dtype

The full-size line multiplies each ratio by the bytes of the official fp32 folders (two SD2.1-base UNets plus the
exchange layers; counted on the meta device, nothing allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, {root!r})
comfy_path = {comfy!r}
import torch

def status():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

if comfy_path:
    sys.path.insert(0, comfy_path)
    sys.path.append({root!r})
    import comfy.cli_args
    import utils.install_util  # ComfyUI's utils package, before `nodes` puts comfy/ on sys.path
    comfy.cli_args.args.cpu = True
    import asyncio, folder_paths, nodes
    assert asyncio.run(nodes.load_custom_node({root!r}, module_parent="custom_nodes"))
    folder_paths.add_model_folder_path("jointnet", os.path.dirname({folder!r}))
    loader = nodes.NODE_CLASS_MAPPINGS["UniDense_JointNetLoader"]
    load = lambda: loader.execute(os.path.basename({folder!r}), {dtype!r})[0]
    modules = lambda m: [m.model] + [a.model for a in m.get_nested_additional_models()]
else:
    import diffusers  # noqa: F401  imported before the baseline, as ComfyUI has it imported
    from unidense_core.jointnet.model import load_jointnet
    dtypes = {{"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}}
    load = lambda: load_jointnet({folder!r}, dtype=dtypes[{dtype!r}])
    modules = lambda m: [m]

peak_anon, done = [0], [False]
def sample():
    while not done[0]:
        peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
        time.sleep(0.002)

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
model = load()
seconds = time.perf_counter() - t0
loaded = dict(status(), peak_anon=peak_anon[0])
with torch.no_grad():  # read every weight once, as the first sampling step does (mapped pages are read lazily)
    total = sum(float(p.float().sum()) for m in modules(model) for p in m.parameters())
done[0] = True
thread.join()
used = dict(status(), peak_anon=peak_anon[0])
print(json.dumps({{"before": before, "loaded": loaded, "used": used, "seconds": seconds}}))
"""


def sd21_config(scale: float) -> dict:
    """SD2.1-base's UNet with channels × scale (64 channels per head kept where possible, head counts unchanged)."""
    from unidense_core.jointnet.model import SD21_BASE_UNET

    cfg = dict(SD21_BASE_UNET)
    cfg["block_out_channels"] = tuple(int(c * scale) for c in SD21_BASE_UNET["block_out_channels"])
    return cfg


def full_size_bytes(has_masked: bool = True) -> int:
    """Bytes of the two official fp32 branch files (SD2.1-base UNet + exchange layers each), counted on meta."""
    import torch

    from unidense_core.jointnet.model import SD21_BASE_UNET, ExchangeConfig, build_branch

    ex = ExchangeConfig.from_unet_config({**SD21_BASE_UNET, "has_masked_latent_input": has_masked})
    with torch.device("meta"):
        branch = build_branch(SD21_BASE_UNET, ex)
    return 2 * sum(t.numel() * 4 for t in branch.state_dict().values())


def write_folder(folder: str, scale: float) -> int:
    import torch

    from unidense_core.jointnet.model import save_jointnet
    from unidense_core.tiny import random_jointnet

    model = random_jointnet(sd21_config(scale), has_masked_latent_input=True, scale=0.02)
    save_jointnet(model, folder, safe_serialization=False)  # .bin, as the official zips
    del model
    files = [os.path.join(folder, b, "diffusion_pytorch_model.bin") for b in ("unet", "jointnet")]
    nbytes = sum(
        v.numel() * v.element_size() for f in files for v in torch.load(f, mmap=True, weights_only=True).values()
    )
    return nbytes


def measure(folder: str, dtype: str, comfy: str | None) -> dict:
    code = CHILD.format(root=ROOT, comfy=comfy, folder=folder, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"loader run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.5, help="channels relative to SD2.1-base (1.0 = full size)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="the loader's dtype")
    args = ap.parse_args()
    comfy = os.environ.get("COMFYUI_PATH")
    full = full_size_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "rgbd_inpaint_bench")
        weights = write_folder(folder, args.scale)
        print(
            f"official-layout folder, SD2.1-base shape at {args.scale:g}x channels: {weights / 2**30:.2f} GiB of "
            f"fp32 weights in two .bin files (full size: {full / 2**30:.2f} GiB); loaded as {args.dtype}"
        )
        runs = [("core load_jointnet", None)] + ([("ComfyUI JointNet loader node", comfy)] if comfy else [])
        for name, comfy_path in runs:
            r = measure(folder, args.dtype, comfy_path)
            b = r["before"]
            print(f"{name} ({r['seconds']:.1f} s):")
            for stage, label in (("loaded", "loading"), ("used", "loading + reading every weight once")):
                peak = (r[stage]["VmHWM"] - b["VmRSS"]) / weights
                anon = (r[stage]["peak_anon"] - b["RssAnon"]) / weights
                held = (r[stage]["VmRSS"] - b["VmRSS"]) / weights
                print(
                    f"  {label}: peak RSS {peak:.2f}x the weights' bytes (anonymous {anon:.2f}x), held {held:.2f}x; "
                    f"at full size: peak {peak * full / 2**30:.1f} GiB (anonymous {anon * full / 2**30:.1f} GiB)"
                )
        if not comfy:
            print("set COMFYUI_PATH (and use ComfyUI's python) to measure the ComfyUI loader node too")


if __name__ == "__main__":
    main()
