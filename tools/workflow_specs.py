"""Compact specs of the example workflows (one per capability), turned into UI-format JSON by tools/workflows.py.

Each spec is a list of (key, node type, widget values by name, inputs by name -> (source key, output slot)).
"""

from __future__ import annotations

PIXART = "PixArt-XL-2-512x512.safetensors"
T5 = "t5xxl_fp16.safetensors"
VAE = "vae-ft-ema-560000-ema-pruned.safetensors"
CONVERTER = "depth_converters/diffusion_pytorch_model.safetensors"
EMPTY_PROMPT = "pixart_t5_empty.safetensors"
KSAMPLER_MERGE = dict(
    seed=0,
    control_after_generate="fixed",
    steps=20,
    cfg=1.0,
    sampler_name="dpmpp_2m",
    scheduler="sgm_uniform",
    denoise=1.0,
)


def merge_depth_nodes(image_src, cond_src, vae_src):
    """Shared MERGE depth chain: converters + ModeSwitch(depth) + conditioning + KSampler + decode + read-out."""
    return [
        ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER, weight_dtype="auto"), {}),
        (
            "depth_model",
            "UniDense_ModeSwitch",
            dict(mode="depth", latent_format="pixart_alpha"),
            dict(model=("unet", 0), converters=("conv", 0)),
        ),
        (
            "depth_cond",
            "UniDense_MergeDepthConditioning",
            dict(resolution="official_bins"),
            dict(conditioning=cond_src, vae=vae_src, image=image_src),
        ),
        (
            "depth_sample",
            "KSampler",
            dict(KSAMPLER_MERGE),
            dict(
                model=("depth_model", 0),
                positive=("depth_cond", 0),
                negative=("depth_cond", 1),
                latent_image=("depth_cond", 2),
            ),
        ),
        ("depth_decode", "VAEDecode", {}, dict(samples=("depth_sample", 0), vae=vae_src)),
        (
            "readout",
            "UniDense_MergeDepthReadout",
            dict(near_white=True, normalize="per_image"),
            dict(decoded=("depth_decode", 0), reference_image=image_src),
        ),
    ]


def depth_controlnet_nodes(ckpt, depth_src, prefix):
    """An SD 1.5 depth ControlNet generation from a depth IMAGE (near = white), the checkpoint at key ``ckpt``."""
    return [
        ("cn", "ControlNetLoader", dict(control_net_name="control_v11f1p_sd15_depth.pth"), {}),
        ("pos", "CLIPTextEncode", dict(text="a sunlit scandinavian living room, photo"), dict(clip=(ckpt, 1))),
        ("neg", "CLIPTextEncode", dict(text="blurry, low quality"), dict(clip=(ckpt, 1))),
        (
            "apply_cn",
            "ControlNetApplyAdvanced",
            dict(strength=1.0, start_percent=0.0, end_percent=1.0),
            dict(positive=("pos", 0), negative=("neg", 0), control_net=("cn", 0), image=depth_src),
        ),
        ("latent", "EmptyLatentImage", dict(width=512, height=512, batch_size=1), {}),
        (
            "cn_sample",
            "KSampler",
            dict(
                seed=0,
                control_after_generate="randomize",
                steps=20,
                cfg=7.0,
                sampler_name="euler",
                scheduler="normal",
                denoise=1.0,
            ),
            dict(model=(ckpt, 0), positive=("apply_cn", 0), negative=("apply_cn", 1), latent_image=("latent", 0)),
        ),
        ("cn_decode", "VAEDecode", {}, dict(samples=("cn_sample", 0), vae=(ckpt, 2))),
        ("save", "SaveImage", dict(filename_prefix=prefix), dict(images=("cn_decode", 0))),
        ("preview_depth", "PreviewImage", {}, dict(images=depth_src)),
    ]


FILES_NOTE = f"""## Files for MERGE-B (UniDense)
- `models/diffusion_models/{PIXART}`: PixArt-α 512 transformer (PixArt-alpha/PixArt-XL-2-512x512).
- `models/vae/{VAE}`: the SD VAE PixArt-α uses (sd-vae-ft-ema).
- `models/text_encoders/{T5}`: T5-XXL (only to encode prompts; depth uses the saved empty prompt).
- `models/merge_converters/depth_converters/`: config.json + diffusion_pytorch_model.safetensors from
  hongk1998/merge-base-depth-v1.
- `models/unidense_embeddings/{EMPTY_PROMPT}`: made once by the 'generate then depth' workflow
  (UniDense Save Prompt Embedding).

Official depth settings: dpmpp_2m, sgm_uniform, 20 steps, cfg 1.0, empty prompt. Depth is affine-invariant;
the read-out gives near = white for ControlNet and the raw float depth as a MASK."""

SPECS = {
    "merge_depth_from_image": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_PROMPT), {}),
        *merge_depth_nodes(("image", 0), ("empty", 0), ("vae", 0)),
        ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
    ],
    "merge_generate_then_depth": [
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("clip", "CLIPLoader", dict(clip_name=T5, type="pixart", device="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        (
            "prompt",
            "CLIPTextEncode",
            dict(text="a cozy reading corner with a lamp and bookshelves"),
            dict(clip=("clip", 0)),
        ),
        ("empty", "CLIPTextEncode", dict(text=""), dict(clip=("clip", 0))),
        (
            "save_empty",
            "UniDense_SavePromptEmbedding",
            dict(filename="pixart_t5_empty", prompt="", overwrite=False),
            dict(conditioning=("empty", 0)),
        ),
        (
            "gen_model",
            "UniDense_ModeSwitch",
            dict(mode="generate", latent_format="pixart_alpha"),
            dict(model=("unet", 0), converters=("conv", 0)),
        ),
        ("latent", "EmptyLatentImage", dict(width=512, height=512, batch_size=1), {}),
        (
            "gen_sample",
            "KSampler",
            dict(KSAMPLER_MERGE, cfg=4.5),
            dict(
                model=("gen_model", 0), positive=("prompt", 0), negative=("save_empty", 0), latent_image=("latent", 0)
            ),
        ),
        ("gen_decode", "VAEDecode", {}, dict(samples=("gen_sample", 0), vae=("vae", 0))),
        ("save_image", "SaveImage", dict(filename_prefix="unidense/merge_generated"), dict(images=("gen_decode", 0))),
        *merge_depth_nodes(("gen_decode", 0), ("save_empty", 0), ("vae", 0)),
        ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
    ],
    "merge_depth_controlnet": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_PROMPT), {}),
        *merge_depth_nodes(("image", 0), ("empty", 0), ("vae", 0)),
        ("sd15", "CheckpointLoaderSimple", dict(ckpt_name="v1-5-pruned-emaonly.safetensors"), {}),
        *depth_controlnet_nodes("sd15", ("readout", 0), "unidense/merge_controlnet"),
    ],
}
# generate_then_depth needs the converters too (ModeSwitch takes them in both modes)
SPECS["merge_generate_then_depth"].insert(
    0, ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER, weight_dtype="auto"), {})
)
SPECS["merge_generate_then_depth"] = [
    n for i, n in enumerate(SPECS["merge_generate_then_depth"]) if not (n[0] == "conv" and i > 0)
]


# ----------------------------------------------------------------------------------------------------------
# JointNet (Zhang et al., ICLR 2024): joint RGB-D generation and channel-wise inpainting

SD21 = "v2-1_512-ema-pruned.safetensors"
JOINTNET_GEN = "rgbd_finetune_sd21b"
JOINTNET_INPAINT = "rgbd_inpaint_sd21b"
# The official DDIM (η = 0, t = 981, 961, …, 1, plain-noise start, ending at ᾱ_0), 50 steps, cfg 7.5: equal to the
# official pipelines (tests/test_comfyui_sampling.py); a stock KSampler with euler + ddim_uniform differs slightly.
OFFICIAL_DDIM = "UniDense_OfficialDDIMKSampler"
KSAMPLER_JOINTNET = dict(seed=0, control_after_generate="fixed", steps=50, cfg=7.5, denoise=1.0)


def jointnet_base_nodes(model_name, prompt):
    """SD2.1-base CLIP + VAE, the JointNet MODEL, the caption and the empty negative prompt (official)."""
    return [
        ("ckpt", "CheckpointLoaderSimple", dict(ckpt_name=SD21), {}),
        ("jointnet", "UniDense_JointNetLoader", dict(model_name=model_name, weight_dtype="auto"), {}),
        ("prompt", "CLIPTextEncode", dict(text=prompt), dict(clip=("ckpt", 1))),
        ("empty", "CLIPTextEncode", dict(text=""), dict(clip=("ckpt", 1))),
    ]


def jointnet_outputs(sample, prefix, rgb=True, depth=True):
    """Split the RGB-D latent; decode and save the image and/or the depth (preview + 16-bit PNG)."""
    nodes = []
    if rgb:
        nodes += [
            ("split", "UniDense_SplitRGBDLatent", {}, dict(rgbd_latent=(sample, 0))),
            ("decode_rgb", "VAEDecode", {}, dict(samples=("split", 0), vae=("ckpt", 2))),
            ("save_rgb", "SaveImage", dict(filename_prefix=f"{prefix}_rgb"), dict(images=("decode_rgb", 0))),
        ]
    if depth:
        nodes += [
            (
                "decode_depth",
                "UniDense_JointNetDepthDecode",
                dict(near_white=True, normalize="none"),
                dict(vae=("ckpt", 2), latent=(sample, 0)),
            ),
            ("preview_depth", "PreviewImage", {}, dict(images=("decode_depth", 0))),
            (
                "save_depth",
                "UniDense_SaveDepth16",
                dict(filename_prefix=f"{prefix}_depth", quantile_normalize=False),
                dict(depth=("decode_depth", 1)),
            ),
        ]
    return nodes


def jointnet_inpaint_nodes(preset, inputs, denoise=1.0):
    """ChannelInpaintRGBD on the inpainting model, then the official DDIM on its MODEL/conditioning/latent."""
    return [
        (
            "inpaint",
            "UniDense_ChannelInpaintRGBD",
            dict(preset=preset, depth_near_white=True),
            dict(model=("jointnet", 0), positive=("prompt", 0), negative=("empty", 0), vae=("ckpt", 2), **inputs),
        ),
        (
            "sample",
            OFFICIAL_DDIM,
            dict(KSAMPLER_JOINTNET, denoise=denoise),
            dict(model=("inpaint", 0), positive=("inpaint", 1), negative=("inpaint", 2), latent_image=("inpaint", 3)),
        ),
    ]


RESIZE_512 = dict(upscale_method="lanczos", width=512, height=512, crop="center")
JOINTNET_NOTE = f"""## Files for JointNet (UniDense)
- `models/jointnet/{JOINTNET_GEN}/` (text -> RGB-D) and `models/jointnet/{JOINTNET_INPAINT}/` (image -> depth,
  depth -> image, RGB-D editing): unzip Apple's `<name>.zip` from
  https://docs-assets.developer.apple.com/ml-research/models/iclr24-jointnet/ so each folder holds `unet/` and
  `jointnet/` (config.json + diffusion_pytorch_model.bin).
- `models/checkpoints/{SD21}`: Stable Diffusion 2.1-base (512, epsilon) for its CLIP and VAE (its UNet is unused).

Official settings: 512x512, 'UniDense Official DDIM KSampler' with 50 steps and cfg 7.5 (the official DDIM; a stock
KSampler with euler + ddim_uniform is close but not equal, see the README), empty negative prompt, a caption as
the prompt. Depth = channel 0 of the decoded depth: relative disparity, near = bright; 16-bit PNGs go to output/.
Inpainting inputs: sides multiples of 8; masks 1 = regenerate (paint them in the mask editor); depth near = white
(MERGE / DMP read-outs give that by default)."""

SPECS["jointnet_text_to_rgbd"] = [
    *jointnet_base_nodes(JOINTNET_GEN, "A living room with a picture of mountain on the wall"),
    ("latent", "EmptyLatentImage", dict(width=512, height=512, batch_size=1), {}),
    (
        "sample",
        OFFICIAL_DDIM,
        dict(KSAMPLER_JOINTNET),
        dict(model=("jointnet", 0), positive=("prompt", 0), negative=("empty", 0), latent_image=("latent", 0)),
    ),
    *jointnet_outputs("sample", "unidense/jointnet_t2rgbd"),
]
SPECS["jointnet_image_to_depth"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    ("resize", "ImageScale", dict(RESIZE_512), dict(image=("image", 0))),
    *jointnet_base_nodes(JOINTNET_INPAINT, "A cat sitting on a wooden bench outside"),
    *jointnet_inpaint_nodes("rgb2j", dict(image=("resize", 0))),
    *jointnet_outputs("sample", "unidense/jointnet_rgb2d", rgb=False),
]
SPECS["jointnet_depth_to_image"] = [
    ("depth", "LoadImage", dict(image="depth.png", upload="image"), {}),  # any depth map, near = white
    ("resize", "ImageScale", dict(RESIZE_512), dict(image=("depth", 0))),
    *jointnet_base_nodes(JOINTNET_INPAINT, "A cat sitting on a wooden bench outside"),
    *jointnet_inpaint_nodes("j2rgb", dict(depth=("resize", 0))),
    *jointnet_outputs("sample", "unidense/jointnet_d2rgb", depth=False),
]
SPECS["jointnet_rgbd_edit"] = [
    ("image", "LoadImage", dict(image="rgbd_image.png", upload="image"), {}),  # mask: the RGB region to redo
    ("depth", "LoadImage", dict(image="rgbd_depth.png", upload="image"), {}),  # mask: the depth region to redo
    *jointnet_base_nodes(JOINTNET_INPAINT, "A dog sitting on a wooden bench outside"),
    *jointnet_inpaint_nodes(
        "custom",
        dict(image=("image", 0), depth=("depth", 0), rgb_mask=("image", 1), depth_mask=("depth", 1)),
        denoise=0.9,  # the official editing example's --denoising_strength
    ),
    *jointnet_outputs("sample", "unidense/jointnet_edit"),
]
NOTES = {name: JOINTNET_NOTE for name in SPECS if name.startswith("jointnet_")}  # default: FILES_NOTE


# ----------------------------------------------------------------------------------------------------------
# DMP (Lee et al., CVPR 2024): dense prediction with an SD 1.4 UNet and a task LoRA

SD14 = "sd-v1-4.ckpt"
DMP_DEPTH = "dmp/depth-hypersim-notext/pytorch_lora_weights.safetensors"
DMP_NORMAL = "dmp/normal-scene100-notext/pytorch_lora_weights.safetensors"
DMP_SAMPLER = dict(steps=5, variant="standard", cfg=1.0)  # official: DDIM 5 steps, no CFG for '-notext'


def dmp_nodes(lora_name, image_src=("image", 0)):
    """SD 1.4 + DMP LoRA, the empty prompt, processing resolution, VAEEncode, the DMP sampler and VAEDecode."""
    return [
        ("ckpt", "CheckpointLoaderSimple", dict(ckpt_name=SD14), {}),
        ("dmp_lora", "UniDense_LoadDMPLora", dict(lora_name=lora_name, strength=1.0), dict(model=("ckpt", 0))),
        ("empty", "CLIPTextEncode", dict(text=""), dict(clip=("ckpt", 1))),
        (
            "resize",
            "UniDense_ProcessingResolution",
            dict(processing_resolution=512, side="shorter"),
            dict(image=image_src),
        ),
        ("encode", "VAEEncode", {}, dict(pixels=("resize", 0), vae=("ckpt", 2))),
        (
            "dmp",
            "UniDense_DeterministicInterpolationSampler",
            dict(DMP_SAMPLER),
            dict(model=("dmp_lora", 0), positive=("empty", 0), latent_image=("encode", 0)),
        ),
        ("decode", "VAEDecode", {}, dict(samples=("dmp", 0), vae=("ckpt", 2))),
    ]


def dmp_depth_readout(decoded=("decode", 0), image_src=("image", 0)):
    return (
        "readout",
        "UniDense_DMPDepthReadout",
        dict(target_scale=0.0, near_white=True, normalize="per_image"),
        dict(decoded=decoded, reference_image=image_src),
    )


DMP_NOTE = f"""## Files for DMP (UniDense)
- `models/checkpoints/{SD14}`: Stable Diffusion v1.4 (CompVis), the base the DMP LoRAs were trained on.
- `models/loras/dmp/<checkpoint>/`: the checkpoint folders from the Google Drive folder linked in the README of
  github.com/shinying/dmp, unchanged, e.g. `{DMP_DEPTH}` and `{DMP_NORMAL}` (`.bin` works too).
- ControlNet workflow: `models/controlnet/control_v11f1p_sd15_depth.pth` (SD 1.5 depth ControlNet; runs on SD 1.4).

Official settings: shorter side 512, DDIM 5 steps (t = 801 … 1), standard variant, empty prompt and cfg 1.0 for
'-notext' checkpoints (captioned ones: a caption, cfg 2, the empty prompt as negative). Depth is depth (near = small):
the read-out gives near = white for ControlNet and the raw float depth (× target_scale: 8 for the paper's bedroom
depth model; 0 = min-max per image) as a MASK. Same graph as SamplerCustomAdvanced: DisableNoise + BasicGuider +
UniDense DMP Sampler + UniDense DMP Sigmas."""

SPECS["dmp_depth_from_image"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *dmp_nodes(DMP_DEPTH),
    dmp_depth_readout(),
    ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
]
SPECS["dmp_normals_from_image"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *dmp_nodes(DMP_NORMAL),
    (
        "readout",
        "UniDense_DMPNormalsReadout",
        dict(flip_y=False),
        dict(decoded=("decode", 0), reference_image=("image", 0)),
    ),
    ("save", "SaveImage", dict(filename_prefix="unidense/dmp_normals"), dict(images=("readout", 0))),
]
SPECS["dmp_depth_sampler_custom_advanced"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *[n for n in dmp_nodes(DMP_DEPTH) if n[0] not in ("dmp", "decode")],
    ("noise", "DisableNoise", {}, {}),
    ("guider", "BasicGuider", {}, dict(model=("dmp_lora", 0), conditioning=("empty", 0))),
    ("sampler", "UniDense_DMPSampler", dict(variant="standard"), {}),
    ("sigmas", "UniDense_DMPSigmas", dict(steps=5), {}),
    (
        "sca",
        "SamplerCustomAdvanced",
        {},
        dict(
            noise=("noise", 0),
            guider=("guider", 0),
            sampler=("sampler", 0),
            sigmas=("sigmas", 0),
            latent_image=("encode", 0),
        ),
    ),
    ("decode", "VAEDecode", {}, dict(samples=("sca", 0), vae=("ckpt", 2))),
    dmp_depth_readout(),
    ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
]
SPECS["dmp_depth_controlnet"] = [
    ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
    *dmp_nodes(DMP_DEPTH),
    dmp_depth_readout(),
    # the base SD 1.4 MODEL generates (the LoRA loader returned a patched copy; this one is unchanged, epsilon)
    *depth_controlnet_nodes("ckpt", ("readout", 0), "unidense/dmp_controlnet"),
]
NOTES.update({name: DMP_NOTE for name in SPECS if name.startswith("dmp_")})


# ----------------------------------------------------------------------------------------------------------
# Panorama (JointNet §4.2): TiledPanorama + circular VAE decode, RGB-D panoramas -> 3D

SD15 = "v1-5-pruned-emaonly.safetensors"
PANO_W, PANO_H = 2048, 512  # the official panorama canvas
TILED_PANORAMA = dict(
    preset="jointnet_pano",
    window=0,
    stride=32,
    circular=True,
    random_offset=True,
    full_canvas_fraction=0.4,
    full_canvas_weight=5.0,
    boundary=8,
    ramp_axes="x",
    view_batch_size=8,
    seed=0,
    control_after_generate="fixed",
)
KSAMPLER_PANO = dict(KSAMPLER_JOINTNET)  # official: DDIM 50 steps, cfg 7.5 (UniDense Official DDIM KSampler)
CIRCULAR_DECODE = dict(padding=8, channel_offset=0)
PANO_NOTE = f"""## Panoramas with UniDense Tiled Panorama
The MODEL from 'UniDense Tiled Panorama' denoises a wide latent in overlapping tiles with any sampler. Preset
jointnet_pano = the official JointNet settings: window = latent height, stride 32 latent px, circular (360°), a
random offset per step, the whole canvas as an extra tile for the first 40% of the steps (weight 5), linear tile
edges over 8 px. Canvas {PANO_W}x{PANO_H}; with wrap the width must be a multiple of 256 px (stride 32 × 8).
Sampled with 'UniDense Official DDIM KSampler' (50 steps, cfg 7.5), the official per-tile DDIM; a stock KSampler
works too (euler + ddim_uniform is close to it).
'UniDense Circular VAE Decode' pads the latent circularly before decoding, so the ends meet without a seam.

Files: `models/checkpoints/{SD15}` (any SD1.x/2.x checkpoint works) and, for the ControlNet example,
`models/controlnet/control_v11f1p_sd15_depth.pth` with a {PANO_W}x{PANO_H} hint (another aspect is an error:
the hint is cut into the same tiles; 'Upscale Image' with crop disabled resizes it).
JointNet RGB-D panoramas: `models/jointnet/{JOINTNET_GEN}/` and `models/checkpoints/{SD21}` (see the JointNet
workflows); the depth half is decoded with channel_offset 4 and saved as a GLB mesh for Preview 3D (needs
`pip install trimesh`)."""


def pano_sample(model_src, positive, negative):
    return [
        ("pano", "UniDense_TiledPanorama", dict(TILED_PANORAMA), dict(model=model_src)),
        ("latent", "EmptyLatentImage", dict(width=PANO_W, height=PANO_H, batch_size=1), {}),
        (
            "sample",
            OFFICIAL_DDIM,
            dict(KSAMPLER_PANO),
            dict(model=("pano", 0), positive=positive, negative=negative, latent_image=("latent", 0)),
        ),
    ]


SPECS["panorama_sd_360"] = [
    ("ckpt", "CheckpointLoaderSimple", dict(ckpt_name=SD15), {}),
    (
        "pos",
        "CLIPTextEncode",
        dict(text="360 degree panorama of a beach with palm trees, photo"),
        dict(clip=("ckpt", 1)),
    ),
    ("neg", "CLIPTextEncode", dict(text=""), dict(clip=("ckpt", 1))),
    *pano_sample(("ckpt", 0), ("pos", 0), ("neg", 0)),
    ("decode", "UniDense_CircularVAEDecode", dict(CIRCULAR_DECODE), dict(samples=("sample", 0), vae=("ckpt", 2))),
    ("save", "SaveImage", dict(filename_prefix="unidense/panorama"), dict(images=("decode", 0))),
]
SPECS["panorama_controlnet"] = [
    ("ckpt", "CheckpointLoaderSimple", dict(ckpt_name=SD15), {}),
    ("hint_image", "LoadImage", dict(image="panorama_depth.png", upload="image"), {}),
    (
        "hint",
        "ImageScale",
        dict(upscale_method="bilinear", width=PANO_W, height=PANO_H, crop="disabled"),
        dict(image=("hint_image", 0)),
    ),
    ("cn", "ControlNetLoader", dict(control_net_name="control_v11f1p_sd15_depth.pth"), {}),
    ("pos", "CLIPTextEncode", dict(text="a long gallery hall with paintings, photo"), dict(clip=("ckpt", 1))),
    ("neg", "CLIPTextEncode", dict(text="blurry, low quality"), dict(clip=("ckpt", 1))),
    (
        "apply_cn",
        "ControlNetApplyAdvanced",
        dict(strength=1.0, start_percent=0.0, end_percent=1.0),
        dict(positive=("pos", 0), negative=("neg", 0), control_net=("cn", 0), image=("hint", 0)),
    ),
    *pano_sample(("ckpt", 0), ("apply_cn", 0), ("apply_cn", 1)),
    ("decode", "UniDense_CircularVAEDecode", dict(CIRCULAR_DECODE), dict(samples=("sample", 0), vae=("ckpt", 2))),
    ("save", "SaveImage", dict(filename_prefix="unidense/panorama_controlnet"), dict(images=("decode", 0))),
]
SPECS["panorama_jointnet_rgbd_to_glb"] = [
    *jointnet_base_nodes(JOINTNET_GEN, "A beach with palm trees"),  # the official panorama prompt
    *pano_sample(("jointnet", 0), ("prompt", 0), ("empty", 0)),
    ("decode_rgb", "UniDense_CircularVAEDecode", dict(CIRCULAR_DECODE), dict(samples=("sample", 0), vae=("ckpt", 2))),
    (
        "decode_depth",
        "UniDense_CircularVAEDecode",
        dict(CIRCULAR_DECODE, channel_offset=4),
        dict(samples=("sample", 0), vae=("ckpt", 2)),
    ),
    ("save_rgb", "SaveImage", dict(filename_prefix="unidense/jointnet_pano_rgb"), dict(images=("decode_rgb", 0))),
    ("preview_depth", "PreviewImage", {}, dict(images=("decode_depth", 0))),
    (
        "to3d",
        "UniDense_SaveRGBD3D",
        dict(
            projection="cylindrical_360",
            depth_kind="disparity",
            format="glb_mesh",
            scale=1.0,
            shift=0.05,
            fov=60.0,
            step=2,
            max_depth_ratio=0.0,
            filename_prefix="unidense/jointnet_pano",
        ),
        dict(image=("decode_rgb", 0), depth=("decode_depth", 0)),
    ),
    ("preview3d", "Preview3D", dict(model_file=""), dict(model_file=("to3d", 0))),
]
NOTES.update({name: PANO_NOTE for name in SPECS if name.startswith("panorama_")})


# MERGE-L (FLUX.1-dev): its own file, to keep this one short
from workflow_specs_merge_l import MERGE_L_NOTES, MERGE_L_SPECS  # noqa: E402

SPECS.update(MERGE_L_SPECS)
NOTES.update(MERGE_L_NOTES)
