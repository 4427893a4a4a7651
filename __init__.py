"""UniDense: one text-to-image diffusion model for generation and dense prediction (ComfyUI node pack).

Registration only: the node modules import torch-only code; diffusers/peft/transformers are never imported here.
Outside ComfyUI (e.g. pytest collecting this folder) nothing is registered.
"""

import sys

if "comfy" in sys.modules or "folder_paths" in sys.modules:  # loaded by ComfyUI
    try:
        from comfy_api.latest import ComfyExtension, io
    except ImportError as exc:  # a ComfyUI older than the V3 node API
        raise ImportError("UniDense needs ComfyUI 0.3.60 or newer (comfy_api.latest); please update ComfyUI.") from exc

    class UniDenseExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            from .nodes import NODE_LIST

            return NODE_LIST

    async def comfy_entrypoint() -> UniDenseExtension:
        return UniDenseExtension()
