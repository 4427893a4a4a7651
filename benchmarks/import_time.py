"""Pack import cost: what loading UniDense adds to ComfyUI start-up (goal < 0.3 s beyond torch), and a check
that it imports none of diffusers / peft (ComfyUI itself already imports transformers).

    python benchmarks/import_time.py                      # core modules only, after torch
    COMFYUI_PATH=/path/to/ComfyUI <ComfyUI's python> benchmarks/import_time.py   # also ComfyUI's own loader
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORE = f"""
import sys, time, json
sys.path.insert(0, {ROOT!r})
import torch
t0, c0 = time.perf_counter(), time.process_time()
import unidense_core.merge.converters, unidense_core.merge.forward, unidense_core.dense.readout
import unidense_core.io.resolution, unidense_core.io.prompt_embeddings, unidense_core.io.checkpoints
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
heavy = [m for m in ("diffusers", "peft", "transformers") if m in sys.modules]
print(json.dumps({{"seconds": dt, "cpu": cpu, "heavy": heavy}}))
"""

COMFY = """
import sys, time, json, asyncio
sys.path.insert(0, {comfy!r})
import utils.install_util
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes
import comfy_config.config_parser  # ComfyUI's pyproject parser (pydantic), paid once for all packs that ship one
import latent_preview
before = set(sys.modules)
t0, c0 = time.perf_counter(), time.process_time()
ok = asyncio.run(nodes.load_custom_node({root!r}, module_parent="custom_nodes"))
t1, cpu = time.perf_counter(), time.process_time() - c0
new = set(sys.modules) - before
print(json.dumps({{"ok": ok, "seconds": t1 - t0, "cpu": cpu, "new_heavy": sorted(m for m in new
      if m.split(".")[0] in ("diffusers", "peft", "transformers"))}}))
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    core = min((run(CORE) for _ in range(3)), key=lambda r: r["seconds"])
    ms = core["seconds"] * 1e3
    print(
        f"unidense_core import after torch: {ms:.0f} ms wall, {core['cpu'] * 1e3:.0f} ms CPU (best of 3); "
        f"heavy modules: {core['heavy']}"
    )
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy:
        res = min((run(COMFY.format(comfy=comfy, root=ROOT)) for _ in range(3)), key=lambda r: r["seconds"])
        print(
            f"ComfyUI load_custom_node(UniDense): {res['seconds'] * 1e3:.0f} ms wall, {res['cpu'] * 1e3:.0f} ms CPU "
            f"(best of 3; on a busy machine the CPU time is the steadier figure), ok={res['ok']}, "
            f"new heavy modules: {res['new_heavy']}  (goal < 300 ms)"
        )
    else:
        print("set COMFYUI_PATH (and use ComfyUI's python) to time the pack inside ComfyUI's loader")


if __name__ == "__main__":
    main()
