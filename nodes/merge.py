"""MERGE nodes: LoadConverter, ModeSwitch, the conditioning that brings the image to a stock sampler, the read-out."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import node_helpers
import torch
from comfy_api.latest import io

from ..unidense_core.dense.readout import (
    NORMALIZE,
    depth_to_display,
    merge_depth_from_unit,
    normalize_depth,
    resize_depth,
)
from ..unidense_core.io.checks import check_choice, check_conditioning, check_image, check_reference
from ..unidense_core.io.resolution import check_multiple, classify_bin
from ..unidense_core.merge.converters import ConverterConfig
from ..unidense_core.merge.flux_converters import FluxConverterConfig, MergeFluxConverters
from ..unidense_core.merge.variants import load_merge_converters
from . import paths
from .hosts.flux import check_flux_dev, flux_depth_mode_clone, is_flux
from .hosts.pixart import check_pixart_alpha_512, depth_mode_clone

MERGE_LATENT_SCALE = 0.18215  # MERGE-B encodes images with PixArt-α's SD VAE (sd-vae-ft-ema) at this scale

Converters = io.Custom("UNIDENSE_CONVERTERS")

LATENT_FORMATS = ["pixart_alpha", "keep"]
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ConverterHandle:
    """What flows on a UNIDENSE_CONVERTERS socket: the converters' ModelPatcher and their config."""

    patcher: comfy.model_patcher.ModelPatcher
    config: ConverterConfig | FluxConverterConfig  # MERGE-B (PixArt-α) or MERGE-L (FLUX.1-dev)
    name: str


class LoadConverter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_LoadConverter",
            display_name="UniDense Load MERGE Converters",
            category="UniDense/MERGE",
            description="Load MERGE converter blocks (Lin et al., NeurIPS 2025) from models/merge_converters: "
            "MERGE-B (for PixArt-XL-2-512x512) or MERGE-L (for FLUX.1-dev), told apart by their config. They turn "
            "the model into a depth estimator; ComfyUI loads and offloads them with the model.",
            inputs=[
                io.Combo.Input(
                    "converter_name",
                    options=paths.files(paths.CONVERTERS),
                    tooltip="A converter .safetensors, or 'depth_converters/diffusion_pytorch_model."
                    "safetensors' from hongk1998/merge-base-depth-v1 or merge-large-depth-v1 (config.json beside it).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(DTYPES),
                    default="auto",
                    tooltip="auto: ComfyUI's choice for diffusion weights on this device (MERGE-L: bf16, else fp16, "
                    "never fp8; the 1.4 B converters are 2.9 GB in bf16).",
                ),
            ],
            outputs=[Converters.Output(display_name="CONVERTERS", tooltip="Give to UniDense ModeSwitch.")],
        )

    @classmethod
    def execute(cls, converter_name: str, weight_dtype: str = "auto") -> io.NodeOutput:
        check_choice(weight_dtype, "weight_dtype", list(DTYPES))
        path = paths.full_path(paths.CONVERTERS, converter_name)
        # MERGE-L's 1.4 B parameters are built with ComfyUI's ops, so low-VRAM partial loading can stream them
        module = load_merge_converters(path, flux_operations=comfy.ops.disable_weight_init)
        n_params = sum(p.numel() for p in module.parameters())
        dtype = DTYPES[weight_dtype] or converter_dtype(module, n_params)
        module = module.to(dtype=dtype)
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
        )
        return io.NodeOutput(ConverterHandle(patcher, module.config, converter_name))


def converter_dtype(module, n_params: int) -> torch.dtype:
    """ComfyUI's weight dtype for the converters; MERGE-L (trained in bf16) prefers bf16 and never takes fp8."""
    if not isinstance(module, MergeFluxConverters):
        return mm.unet_dtype(model_params=n_params)
    dtype = mm.unet_dtype(model_params=n_params, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):  # fp8 forced by a launch flag: compute dtype
        dtype = mm.unet_manual_cast(dtype, mm.get_torch_device()) or torch.float32
    return dtype


class ModeSwitch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_ModeSwitch",
            display_name="UniDense Mode Switch (MERGE)",
            category="UniDense/MERGE",
            description="One model, two jobs: 'generate' is the text-to-image model unchanged; 'depth' runs the "
            "MERGE converters (MERGE-B on PixArt-α 512, MERGE-L on FLUX.1-dev). Returns a patched copy; the input "
            "MODEL is never changed.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="PixArt-XL-2-512x512 (MERGE-B) or FLUX.1-dev (MERGE-L, bf16/fp16/fp8), loaded with "
                    "'Load Diffusion Model'.",
                ),
                Converters.Input("converters", tooltip="From 'UniDense Load MERGE Converters'."),
                io.Combo.Input(
                    "mode",
                    options=["generate", "depth"],
                    default="depth",
                    tooltip="generate: text-to-image as the base model. depth: depth estimation; feed the "
                    "conditioning through 'UniDense MERGE Depth Conditioning' (FLUX: the MERGE-L one).",
                ),
                io.Combo.Input(
                    "latent_format",
                    options=LATENT_FORMATS,
                    default="pixart_alpha",
                    tooltip="ComfyUI loads PixArt-α 512 as PixArt-Σ (SDXL latent scale 0.13025). "
                    "pixart_alpha sets the SD VAE scale 0.18215 that PixArt-α and MERGE use; keep leaves "
                    "the model's own (generate mode then returns the input model exactly). FLUX models always "
                    "keep their own latent format (this setting is for PixArt only).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="A patched copy of the model; the input MODEL is unchanged."
                )
            ],
        )

    @classmethod
    def execute(
        cls, model, converters: ConverterHandle, mode: str, latent_format: str = "pixart_alpha"
    ) -> io.NodeOutput:
        check_choice(mode, "mode", ["generate", "depth"])
        check_choice(latent_format, "latent_format", LATENT_FORMATS)
        if not isinstance(converters, ConverterHandle):
            raise ValueError("converters must come from 'UniDense Load MERGE Converters'.")
        if isinstance(converters.patcher.model, MergeFluxConverters):  # MERGE-L on FLUX.1-dev
            if mode == "depth":
                return io.NodeOutput(flux_depth_mode_clone(model, converters.patcher))
            check_flux_dev(model, converters.patcher.model)
            return io.NodeOutput(model.clone())
        if is_flux(model.get_model_object("diffusion_model")):
            raise ValueError(
                f"'{converters.name}' holds MERGE-B converters (PixArt-α 512) but the MODEL is FLUX. For FLUX.1-dev "
                "load the MERGE-L converters (hongk1998/merge-large-depth-v1, folder depth_converters/)."
            )
        fmt = comfy.latent_formats.SD15() if latent_format == "pixart_alpha" else None
        if mode == "depth":
            return io.NodeOutput(depth_mode_clone(model, converters.patcher, fmt))
        check_pixart_alpha_512(model, converters.patcher.model)
        m = model.clone()
        if fmt is not None:
            m.add_object_patch("latent_format", fmt)
        return io.NodeOutput(m)


class MergeDepthConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_MergeDepthConditioning",
            display_name="UniDense MERGE Depth Conditioning",
            category="UniDense/MERGE",
            description="Encode the image with the VAE and attach its latent to the conditioning, so a stock "
            "KSampler / SamplerCustomAdvanced runs MERGE depth estimation (official: dpmpp_2m, sgm_uniform, "
            "20 steps, cfg 1.0, empty prompt). Batches: one depth map per image.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The empty prompt through T5 (or a saved embedding)."),
                io.Vae.Input("vae", tooltip="PixArt-α's VAE (sd-vae-ft-ema / the SD1.5 VAE)."),
                io.Image.Input("image", tooltip="Image(s) to estimate depth for."),
                io.Combo.Input(
                    "resolution",
                    options=["official_bins", "native"],
                    default="official_bins",
                    tooltip="official_bins: resize to the nearest PixArt-α 512 aspect bin, as the "
                    "official pipeline. native: keep the size (sides must be multiples of 16).",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The prompt with the image latent attached."),
                io.Conditioning.Output(display_name="negative", tooltip="Same as positive; MERGE uses no CFG."),
                io.Latent.Output(display_name="latent", tooltip="Empty depth latent of the right size and batch."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, vae, image: torch.Tensor, resolution: str = "official_bins") -> io.NodeOutput:
        check_conditioning(conditioning, "conditioning")
        check_image(image, "image", channels=(3, 4))
        check_choice(resolution, "resolution", ["official_bins", "native"])
        for c in conditioning:
            if c[0].shape[0] not in (1, image.shape[0]):
                raise ValueError(
                    f"conditioning has a batch of {c[0].shape[0]} prompts for {image.shape[0]} images; give one prompt "
                    "(the empty prompt, as MERGE was trained) or one per image."
                )
        if getattr(vae, "latent_channels", 4) != 4:
            raise ValueError(
                f"vae gives {vae.latent_channels}-channel latents; MERGE-B needs PixArt-α's 4-channel SD VAE "
                "(sd-vae-ft-ema, or the SD 1.5 VAE). For FLUX.1-dev (MERGE-L) use 'UniDense MERGE-L Depth "
                "Conditioning'."
            )
        h, w = image.shape[1:3]
        pixels = image[..., :3]
        if resolution == "official_bins":
            th, tw = classify_bin(h, w)
            if (th, tw) != (h, w):
                pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), tw, th, "lanczos", "disabled").movedim(1, -1)
        else:
            check_multiple(h, w, 16, "image")
        raw = vae.encode(pixels)  # [B,4,h/8,w/8], unscaled
        if raw.shape[1] != 4:
            raise ValueError(
                f"The VAE gives {raw.shape[1]}-channel latents; MERGE-B needs PixArt-α's 4-channel SD VAE. For "
                "FLUX.1-dev (MERGE-L) use 'UniDense MERGE-L Depth Conditioning'."
            )
        cond = node_helpers.conditioning_set_values(conditioning, {"noise_concat": raw * MERGE_LATENT_SCALE})
        return io.NodeOutput(cond, cond, {"samples": torch.zeros_like(raw)})


class DepthReadout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_MergeDepthReadout",
            display_name="UniDense MERGE Depth Read-out",
            category="UniDense/MERGE",
            description="Mean of the 3 decoded channels (the official MERGE read-out): affine-invariant depth in "
            "[0, 1], 0 = near. Gives a 3-channel IMAGE for ControlNetApplyAdvanced and the raw depth as a MASK.",
            inputs=[
                io.Image.Input("decoded", tooltip="VAEDecode of the depth latent."),
                io.Boolean.Input(
                    "near_white", default=True, tooltip="On: near = white, as MiDaS and SD depth ControlNets expect."
                ),
                io.Combo.Input(
                    "normalize",
                    options=list(NORMALIZE),
                    default="per_image",
                    tooltip="Stretch the display image to [0, 1]: per image, or over the whole batch "
                    "(steadier for video). The raw output is never normalised.",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="Resize the depth back to this image's size (bilinear, as the official "
                    "pipeline does after resolution binning).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="depth_image", tooltip="3-channel depth for ControlNet / preview."),
                io.Mask.Output(display_name="depth_raw", tooltip="Float depth [B,H,W], 0 = near, not normalised."),
            ],
        )

    @classmethod
    def execute(
        cls,
        decoded: torch.Tensor,
        near_white: bool = True,
        normalize: str = "per_image",
        reference_image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        check_image(decoded, "decoded", channels=(3, 4))
        check_choice(normalize, "normalize", NORMALIZE)
        size = None if reference_image is None else check_reference(reference_image)
        depth = merge_depth_from_unit(decoded, channel_dim=-1)  # [B,H,W]
        if size is not None:
            depth = resize_depth(depth, size)
        shown = depth_to_display(normalize_depth(depth, normalize), near_is_low=True, near_white=near_white)
        return io.NodeOutput(shown, depth)
