"""MERGE-L on ComfyUI's own FLUX (``comfy.ldm.flux.model.Flux``): the host adapter and the depth-mode clone.

Depth mode is a ``DIFFUSION_MODEL`` wrapper on a ModelPatcher clone: FLUX's forward becomes the core MERGE-L
forward (``unidense_core.merge.flux_forward``) over this FLUX's own embedders, RoPE, attention and blocks, so bf16,
fp16 and fp8 files run as ComfyUI runs them (fp8 weights are cast by ComfyUI's ops). The converters are an
additional model that ComfyUI loads and offloads with the FLUX. The image latent arrives as ``c_concat`` (stock
``noise_concat`` conditioning), which ComfyUI appends after the noisy latent: x = [z_t (16), z_img (16)].
Guidance is fed 0, as in the official code, whatever the conditioning carries.
"""

from __future__ import annotations

import functools
import logging

import comfy.patcher_extension
import torch
from comfy.ldm.flux.layers import timestep_embedding
from comfy.ldm.flux.math import attention

from ...unidense_core.merge.flux_converters import MergeFluxConverters
from ...unidense_core.merge.flux_forward import FluxGroupPlan, check_flux_compatible, merge_l_depth_forward

logger = logging.getLogger(__name__)

KEY = "unidense_merge_l"  # wrapper / additional-models key
FLUX_PARTS = ("double_blocks", "single_blocks", "img_in", "time_in", "vector_in", "txt_in", "pe_embedder", "params")


def is_flux(diffusion_model) -> bool:
    return all(hasattr(diffusion_model, a) for a in FLUX_PARTS)


class ComfyFluxHost:
    """:class:`unidense_core.merge.flux_forward.FluxHost` over ComfyUI's Flux (BFL key names, ComfyUI attention).

    The base blocks go through ``patches_replace["dit"]`` as in ``Flux.forward_orig``, so other block patches
    still apply in depth mode.
    """

    def __init__(self, dm, transformer_options: dict, dtype: torch.dtype):
        self.dm = dm
        self.to = transformer_options
        self.replace = transformer_options.get("patches_replace", {}).get("dit", {})
        self.num_double_blocks = len(dm.double_blocks)
        self.num_single_blocks = len(dm.single_blocks)
        self.hidden_size = dm.hidden_size
        self.num_heads = dm.num_heads
        self.guidance_embed = bool(dm.params.guidance_embed)
        self.dtype = dtype

    def embed(self, timestep, guidance, pooled, context):
        dm = self.dm
        vec = dm.time_in(timestep_embedding(timestep, 256).to(self.dtype))  # ×1000 inside, as diffusers
        vec = vec + dm.guidance_in(timestep_embedding(guidance, 256).to(self.dtype))
        vec = vec + dm.vector_in(pooled[:, : dm.params.vec_in_dim].to(self.dtype))
        return vec, dm.txt_in(context.to(self.dtype))

    def rotary(self, txt_ids, img_ids, batch):
        ids = torch.cat([txt_ids, img_ids], dim=0)[None].expand(batch, -1, -1)  # [B,T+N,3]
        pe = self.dm.pe_embedder(ids)  # [B,1,T+N,hd/2,2,2]
        return pe, pe[:, :, txt_ids.shape[0] :]

    def attention(self, q, k, v, rope):
        return attention(q, k, v, pe=rope, transformer_options=self.to)  # [B,S,D]

    def run_double(self, index, img, txt, temb, rope):
        block = self.dm.double_blocks[index]
        args = {"img": img, "txt": txt, "vec": temb, "pe": rope, "attn_mask": None, "transformer_options": self.to}
        if ("double_block", index) not in self.replace:
            return block(**args)

        def original(a):
            out = {}
            out["img"], out["txt"] = block(
                img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                transformer_options=a.get("transformer_options"),
            )  # fmt: skip
            return out

        out = self.replace[("double_block", index)](args, {"original_block": original})
        return out["img"], out["txt"]

    def run_single(self, index, x, txt_len, temb, rope):
        block = self.dm.single_blocks[index]
        if ("single_block", index) not in self.replace:
            return block(x, vec=temb, pe=rope, attn_mask=None, transformer_options=self.to)

        def original(a):
            img = block(a["img"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                        transformer_options=a.get("transformer_options"))  # fmt: skip
            return {"img": img}

        args = {"img": x, "vec": temb, "pe": rope, "attn_mask": None, "transformer_options": self.to}
        return self.replace[("single_block", index)](args, {"original_block": original})["img"]


def check_flux_dev(model_patcher, converters: MergeFluxConverters) -> FluxGroupPlan:
    """Validate a MODEL for MERGE-L before anything is patched; errors say what to load instead."""
    dm = model_patcher.get_model_object("diffusion_model")
    if not is_flux(dm):
        what = "Chroma (a FLUX.1-schnell derivative)" if hasattr(dm, "distilled_guidance_layer") else type(dm).__name__
        raise ValueError(
            f"These are MERGE-L converters (FLUX.1-dev) but the MODEL is {what}. Load FLUX.1-dev "
            "(flux1-dev.safetensors, bf16 or fp8) with 'Load Diffusion Model', or use MERGE-B converters with "
            "PixArt-XL-2-512x512."
        )
    p = dm.params
    if not p.guidance_embed:
        raise ValueError(
            "This FLUX MODEL has no guidance embedding: it is FLUX.1-schnell (or a de-distilled FLUX). MERGE-L was "
            "trained on FLUX.1-dev, whose guidance embedding it feeds 0; load flux1-dev instead."
        )
    if p.in_channels != 16 or dm.patch_size != 2:
        kind = {32: "FLUX.1-Depth-dev or FLUX.1-Canny-dev", 96: "FLUX.1-Fill-dev"}.get(p.in_channels, "a FLUX variant")
        raise ValueError(
            f"This FLUX MODEL takes {p.in_channels} input channels ({kind}); MERGE-L needs the plain FLUX.1-dev "
            "(16 latent channels). Load flux1-dev for MERGE-L; the control models are for generating from depth."
        )
    host = ComfyFluxHost(dm, {}, torch.float32)
    plan = check_flux_compatible(host, converters)
    # Shapes fit from here on; warn where the frozen base may still differ from the one the converters know.
    config_name = type(model_patcher.model.model_config).__name__
    if config_name != "Flux":
        logger.warning(
            "UniDense MERGE-L: ComfyUI detected this model as %s, not FLUX.1-dev; the converters were trained on "
            "FLUX.1-dev's activations, so depth may be wrong.",
            config_name,
        )
    if model_patcher.patches:
        logger.warning(
            "UniDense MERGE-L: this FLUX MODEL carries %d weight patches (LoRAs). The converters were trained "
            "against the plain FLUX.1-dev; a LoRA changes the frozen blocks they read and can degrade depth. "
            "Take the MODEL for depth from before the LoRA loader.",
            len(model_patcher.patches),
        )
    return plan


def merge_l_diffusion_model(converters: MergeFluxConverters):
    """The DIFFUSION_MODEL wrapper: FLUX's forward becomes the MERGE-L depth forward (velocity of the depth latent).

    Wrappers registered after this one (other packs) still run, inside it, around the depth forward.
    """
    told = []

    def depth(dm, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options=None,
              **kwargs):  # fmt: skip
        c = dm.params.in_channels
        if x.shape[1] != 2 * c:
            raise ValueError(
                "UniDense ModeSwitch is in MERGE-L depth mode but the FLUX model got no image latent "
                f"({x.shape[1]} channels instead of {2 * c}). Connect the conditioning through 'UniDense MERGE-L "
                "Depth Conditioning' (it attaches the image) before the sampler."
            )
        if ref_latents is not None or control is not None:
            what = "reference latents (Kontext)" if ref_latents is not None else "a ControlNet"
            raise ValueError(
                f"The MERGE-L depth model got {what}; depth estimation takes only the image from 'UniDense MERGE-L "
                "Depth Conditioning'. Use the ControlNet / reference with the generation MODEL instead."
            )
        if y is None:
            raise ValueError(
                "The MERGE-L depth model got no pooled CLIP vector: encode the empty prompt with FLUX's "
                "DualCLIPLoader (clip_l + t5xxl), or load a saved embedding made from one."
            )
        if guidance is not None and bool((guidance != 0).any()) and not told:
            told.append(True)
            logger.info("UniDense MERGE-L: depth mode feeds guidance 0 (official); the conditioning's is ignored.")
        host = ComfyFluxHost(dm, {} if transformer_options is None else transformer_options, x.dtype)
        zero = torch.zeros(x.shape[0], device=x.device)
        return merge_l_depth_forward(host, converters, x[:, c:], x[:, :c], timestep, context, y, zero)  # [B,16,h,w]

    def wrapper(executor, *args, **kwargs):
        dm = executor.class_obj
        inner = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            functools.partial(depth, dm), dm, executor.wrappers, executor.idx + 1
        )  # the remaining wrappers, then the MERGE-L forward in place of Flux._forward
        return inner.execute(*args, **kwargs)

    return wrapper


def flux_depth_mode_clone(model_patcher, converters_patcher):
    """Clone with the converters as an additional model and the MERGE-L depth forward; the input is untouched."""
    converters: MergeFluxConverters = converters_patcher.model
    check_flux_dev(model_patcher, converters)
    m = model_patcher.clone()
    m.set_additional_models(KEY, [converters_patcher])
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, merge_l_diffusion_model(converters))
    return m
