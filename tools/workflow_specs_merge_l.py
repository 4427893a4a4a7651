"""Example workflows for MERGE-L (FLUX.1-dev), merged into ``workflow_specs.SPECS`` (same compact format)."""

from __future__ import annotations

# The same LoadConverter / ModeSwitch as MERGE-B, the MERGE-L depth conditioning, ModelSamplingFlux.

FLUX = "flux1-dev.safetensors"  # or flux1-dev-fp8.safetensors (weight_dtype default) / fp8_e4m3fn
FLUX_VAE = "ae.safetensors"
CLIP_L, T5_FLUX = "clip_l.safetensors", "t5xxl_fp16.safetensors"
CONVERTER_L = "merge-large-depth-v1/depth_converters/diffusion_pytorch_model.safetensors"
EMPTY_FLUX = "flux_clip_t5_empty.safetensors"
FLUX_DEPTH_CN = "flux-dev-controlnet-depth.safetensors"
KSAMPLER_MERGE_L = dict(
    seed=0,
    control_after_generate="fixed",
    steps=20,
    cfg=1.0,
    sampler_name="euler",  # euler + simple after ModelSamplingFlux(image size) = the official shifted linspace
    scheduler="simple",
    denoise=1.0,
)
FLUX_SHIFT = dict(max_shift=1.15, base_shift=0.5, width=1024, height=1024)


def merge_l_depth_nodes(image_src, cond_src, unet=("unet", 0), vae=("vae", 0)):
    """MERGE-L depth chain: converters + ModeSwitch(depth) + conditioning + ModelSamplingFlux + KSampler + read-out."""
    return [
        ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER_L, weight_dtype="auto"), {}),
        (
            "depth_model",
            "UniDense_ModeSwitch",
            dict(mode="depth", latent_format="keep"),
            dict(model=unet, converters=("conv", 0)),
        ),
        (
            "depth_cond",
            "UniDense_MergeLDepthConditioning",
            dict(processing_resolution=0),
            dict(conditioning=cond_src, vae=vae, image=image_src),
        ),
        (
            "depth_shift",
            "ModelSamplingFlux",
            dict(FLUX_SHIFT),
            dict(model=("depth_model", 0), width=("depth_cond", 3), height=("depth_cond", 4)),
        ),
        (
            "depth_sample",
            "KSampler",
            dict(KSAMPLER_MERGE_L),
            dict(
                model=("depth_shift", 0),
                positive=("depth_cond", 0),
                negative=("depth_cond", 1),
                latent_image=("depth_cond", 2),
            ),
        ),
        ("depth_decode", "VAEDecode", {}, dict(samples=("depth_sample", 0), vae=vae)),
        (
            "readout",
            "UniDense_MergeDepthReadout",
            dict(near_white=True, normalize="per_image"),
            dict(decoded=("depth_decode", 0), reference_image=image_src),
        ),
    ]


MERGE_L_SPECS: dict[str, list] = {}


def flux_models():
    return [
        ("unet", "UNETLoader", dict(unet_name=FLUX, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=FLUX_VAE), {}),
    ]


MERGE_L_NOTE = f"""## Files for MERGE-L (UniDense)
- `models/diffusion_models/{FLUX}`: FLUX.1-dev transformer (black-forest-labs/FLUX.1-dev, bf16, 23.8 GB) or an
  fp8 copy (~11.9 GB, e.g. `flux1-dev-fp8.safetensors`). Not schnell, Fill, Depth/Canny-dev or Chroma.
- `models/vae/{FLUX_VAE}`: the FLUX VAE (same repo).
- `models/text_encoders/{CLIP_L}` + `{T5_FLUX}` (or t5xxl_fp8_e4m3fn): only to encode prompts; depth uses the
  saved empty prompt.
- `models/merge_converters/merge-large-depth-v1/depth_converters/`: config.json + diffusion_pytorch_model.safetensors
  from hongk1998/merge-large-depth-v1 (1.4 B parameters, bf16, 2.9 GB).
- `models/unidense_embeddings/{EMPTY_FLUX}`: made once by the 'generate then depth' workflow (T5TokenizerOptions
  min_length 512 = the official 512 T5 tokens, then UniDense Save Prompt Embedding, which keeps CLIP's pooled output).

Official depth settings: ModelSamplingFlux with the width/height from the MERGE-L conditioning node (so the
'simple' schedule is the official shifted linspace), euler, simple, 20 steps, cfg 1.0, the empty prompt; guidance
is fed 0 in depth mode. Depth is affine-invariant; the read-out gives near = white and the raw depth as a MASK."""

MERGE_L_SPECS["merge_l_generate_then_depth"] = [
    *flux_models(),
    ("clip", "DualCLIPLoader", dict(clip_name1=CLIP_L, clip_name2=T5_FLUX, type="flux", device="default"), {}),
    (
        "prompt",
        "CLIPTextEncode",
        dict(text="a cozy reading corner with a lamp and bookshelves"),
        dict(clip=("clip", 0)),
    ),
    ("guided", "FluxGuidance", dict(guidance=3.5), dict(conditioning=("prompt", 0))),
    ("t5_512", "T5TokenizerOptions", dict(min_padding=0, min_length=512), dict(clip=("clip", 0))),
    ("empty", "CLIPTextEncode", dict(text=""), dict(clip=("t5_512", 0))),
    (
        "save_empty",
        "UniDense_SavePromptEmbedding",
        dict(filename="flux_clip_t5_empty", prompt="", overwrite=False),
        dict(conditioning=("empty", 0)),
    ),
    *merge_l_depth_nodes(("gen_decode", 0), ("save_empty", 0))[:1],  # the converters, loaded once for both modes
    (
        "gen_model",
        "UniDense_ModeSwitch",
        dict(mode="generate", latent_format="keep"),
        dict(model=("unet", 0), converters=("conv", 0)),
    ),
    ("gen_shift", "ModelSamplingFlux", dict(FLUX_SHIFT), dict(model=("gen_model", 0))),
    ("latent", "EmptySD3LatentImage", dict(width=1024, height=1024, batch_size=1), {}),
    (
        "gen_sample",
        "KSampler",
        dict(KSAMPLER_MERGE_L, control_after_generate="randomize"),  # FLUX.1-dev: guidance 3.5, cfg 1
        dict(model=("gen_shift", 0), positive=("guided", 0), negative=("save_empty", 0), latent_image=("latent", 0)),
    ),
    ("gen_decode", "VAEDecode", {}, dict(samples=("gen_sample", 0), vae=("vae", 0))),
    ("save_image", "SaveImage", dict(filename_prefix="unidense/merge_l_generated"), dict(images=("gen_decode", 0))),
    *merge_l_depth_nodes(("gen_decode", 0), ("save_empty", 0))[1:],
    ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
]
MERGE_L_SPECS["merge_l_depth_from_image"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *flux_models(),
    ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_FLUX), {}),
    *merge_l_depth_nodes(("image", 0), ("empty", 0)),
    ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
    (
        "save_depth",
        "UniDense_SaveDepth16",
        dict(filename_prefix="unidense/merge_l_depth", quantile_normalize=False),
        dict(depth=("readout", 1)),
    ),
]
MERGE_L_SPECS["merge_l_depth_controlnet"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *flux_models(),
    ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_FLUX), {}),
    *merge_l_depth_nodes(("image", 0), ("empty", 0)),
    # generation from the depth with the same FLUX.1-dev (the ModeSwitch output is a copy; "unet" is unchanged)
    ("clip", "DualCLIPLoader", dict(clip_name1=CLIP_L, clip_name2=T5_FLUX, type="flux", device="default"), {}),
    ("pos", "CLIPTextEncode", dict(text="a sunlit scandinavian living room, photo"), dict(clip=("clip", 0))),
    ("guided", "FluxGuidance", dict(guidance=3.5), dict(conditioning=("pos", 0))),
    ("cn", "ControlNetLoader", dict(control_net_name=FLUX_DEPTH_CN), {}),
    (
        "apply_cn",
        "ControlNetApplyAdvanced",
        dict(strength=0.7, start_percent=0.0, end_percent=0.8),
        dict(
            positive=("guided", 0),
            negative=("empty", 0),
            control_net=("cn", 0),
            image=("readout", 0),
            vae=("vae", 0),
        ),
    ),
    ("gen_shift", "ModelSamplingFlux", dict(FLUX_SHIFT), dict(model=("unet", 0))),
    ("latent", "EmptySD3LatentImage", dict(width=1024, height=1024, batch_size=1), {}),
    (
        "cn_sample",
        "KSampler",
        dict(KSAMPLER_MERGE_L, control_after_generate="randomize"),
        dict(model=("gen_shift", 0), positive=("apply_cn", 0), negative=("apply_cn", 1), latent_image=("latent", 0)),
    ),
    ("cn_decode", "VAEDecode", {}, dict(samples=("cn_sample", 0), vae=("vae", 0))),
    ("save", "SaveImage", dict(filename_prefix="unidense/merge_l_controlnet"), dict(images=("cn_decode", 0))),
    ("preview_depth", "PreviewImage", {}, dict(images=("readout", 0))),
]
MERGE_L_NOTES = {name: MERGE_L_NOTE for name in MERGE_L_SPECS}
MERGE_L_NOTES["merge_l_depth_controlnet"] = (
    MERGE_L_NOTE
    + f"""

ControlNet: `models/controlnet/{FLUX_DEPTH_CN}` = a FLUX.1-dev depth ControlNet that ComfyUI's ControlNetLoader
reads (e.g. Shakker-Labs/FLUX.1-dev-ControlNet-Depth or XLabs-AI/flux-controlnet-depth-v3); it expects near = white,
as the read-out gives. Alternative without a ControlNet: FLUX.1-Depth-dev (a separate 12 B model) through
InstructPixToPixConditioning with the depth image, FluxGuidance 10."""
)
