#!/usr/bin/env bash
# Make .venv/ for the whole test suite, ComfyUI layer included: torch with a matching torchvision, a real ComfyUI
# and its requirements, and this pack with its test extras. Safe to run again (it only adds what is missing).
#
# ComfyUI is taken from, in this order (tests/comfyui_env.py finds it the same way):
#   $COMFYUI_PATH                              a ComfyUI source tree of yours;
#   the ComfyUI this pack sits in              ComfyUI/custom_nodes/<this pack>;
#   ../shared/comfyui/ComfyUI-*.tar.gz         the source archive this project's machines carry, unpacked to .comfyui/
# Torch: TORCH_SPEC overrides the default pair (the CUDA build of torch 2.13.0, which runs on the CPU here, with the
# torchvision/torchaudio built for it; PyPI's torchvision does not import beside the +cpu build).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0 torchaudio==2.11.1"}
PY=.venv/bin/python

# 1. Where ComfyUI is.
comfy=${COMFYUI_PATH:-}
if [ -z "$comfy" ]; then
  parent=$(dirname "$(pwd -P)")
  if [ "$(basename "$parent")" = custom_nodes ] && [ -f "$parent/../comfy/model_patcher.py" ]; then
    comfy=$(cd "$parent/.." && pwd -P)
  elif [ -f .comfyui/comfy/model_patcher.py ]; then
    comfy=.comfyui
  else
    archive=$(ls ../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | tail -n 1 || true)
    if [ -z "$archive" ]; then
      echo "No ComfyUI: set COMFYUI_PATH to a ComfyUI checkout, or put this pack in ComfyUI/custom_nodes/." >&2
      exit 2
    fi
    mkdir -p .comfyui.part && tar xzf "$archive" -C .comfyui.part && mv .comfyui.part .comfyui
    comfy=.comfyui
  fi
fi
[ -f "$comfy/comfy/model_patcher.py" ] || { echo "$comfy is not a ComfyUI source tree" >&2; exit 2; }
echo "ComfyUI: $comfy"

# 2. The environment.
[ -x "$PY" ] || python3 -m venv .venv
pip() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" -c "import torch, torchvision" 2>/dev/null || pip $TORCH_SPEC
grep -v -E '^(torch|torchvision|torchaudio)([<>=!~ ].*)?$' "$comfy/requirements.txt" >.venv/comfyui-requirements.txt
pip -r .venv/comfyui-requirements.txt requests -e ".[test]"
