"""ComfyUI adapters: thin V3 nodes over ``unidense_core``."""

from __future__ import annotations

from comfy_api.latest import io

from . import compat, paths
from .dense import SaveDepth16, SaveRGBD3D
from .dmp import NODES as DMP_NODES
from .embeddings import LoadPromptEmbedding, SavePromptEmbedding
from .jointnet import NODES as JOINTNET_NODES
from .merge import DepthReadout, LoadConverter, MergeDepthConditioning, ModeSwitch
from .merge_l import NODES as MERGE_L_NODES
from .sampling import NODES as SAMPLING_NODES
from .tiling import CircularVAEDecode, CircularVAEEncode, TiledPanorama

compat.check_comfyui()  # refuses a too-old ComfyUI; logs the APIs a newer one lacks
paths.register()

NODE_LIST: list[type[io.ComfyNode]] = [
    # MERGE (Lin et al., NeurIPS 2025)
    LoadConverter,
    ModeSwitch,
    MergeDepthConditioning,
    DepthReadout,
    *MERGE_L_NODES,  # MERGE-L on FLUX.1-dev: the depth conditioning (LoadConverter / ModeSwitch are shared)
    SavePromptEmbedding,
    LoadPromptEmbedding,
    # DMP (Lee et al., CVPR 2024)
    *DMP_NODES,
    # JointNet (Zhang et al., ICLR 2024): joint RGB-D model, channel-wise inpainting, RGB-D latent helpers
    *JOINTNET_NODES,
    # Tiled panoramas, circular VAE and 3D export (JointNet §4.2)
    TiledPanorama,
    CircularVAEDecode,
    CircularVAEEncode,
    SaveRGBD3D,
    SaveDepth16,
    # The official DDIM of the pipelines (JointNet, SD) as SIGMAS + SAMPLER and a KSampler-like node
    *SAMPLING_NODES,
]
