"""ComfyUI adapters: thin V3 nodes over ``unidense_core``."""

from __future__ import annotations

from comfy_api.latest import io

from . import paths
from .depth import DepthReadout
from .embeddings import LoadPromptEmbedding, SavePromptEmbedding
from .merge import LoadConverter, MergeDepthConditioning, ModeSwitch

paths.register()

NODE_LIST: list[type[io.ComfyNode]] = [
    LoadConverter,
    ModeSwitch,
    MergeDepthConditioning,
    DepthReadout,
    SavePromptEmbedding,
    LoadPromptEmbedding,
]
