"""JointNet nodes: load the official folders as one 8-channel RGB-D MODEL, channel-wise inpainting inside any stock
sampler (image→depth, depth→image, RGB-D editing), RGB-D latent helpers and the depth read-out."""

from __future__ import annotations

import logging
import os

import folder_paths
import node_helpers
import torch
from comfy_api.latest import io

from ..unidense_core.dense.readout import (
    NORMALIZE,
    depth_to_display,
    jointnet_depth_from_unit,
    normalize_depth,
)
from ..unidense_core.dense.readout import quantile_normalize as quantile_norm
from ..unidense_core.io.checks import check_choice, check_image, check_latent, check_mask
from ..unidense_core.jointnet.inpaint import (
    MODES,
    PRESETS,
    as_mask,
    channel_mask,
    join_rgbd,
    latent_mask,
    masked_condition,
    preset_masks,
    split_rgbd,
)
from ..unidense_core.jointnet.model import BRANCHES, read_jointnet_folder
from . import paths
from .hosts.jointnet import build_joint_model, channel_inpaint_clone, get_info

logger = logging.getLogger(__name__)

CATEGORY = "UniDense/JointNet"
LATENT_CHANNELS = 4
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPAINT_MODES = [m for m in MODES if m != "joint"]  # rgb2j, j2rgb, custom
DEPTH_NORMALIZE = ["none", "quantile", *[n for n in NORMALIZE if n != "none"]]


def jointnet_models() -> list[str]:
    """Model folders under models/jointnet (and extra paths): any folder, up to two levels deep, with both branches."""
    found = set()
    for root in folder_paths.get_folder_paths(paths.JOINTNET):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel.count(os.sep) >= 2:
                dirnames[:] = []
            if all(os.path.isfile(os.path.join(dirpath, b, "config.json")) for b in BRANCHES):
                found.add(rel.replace(os.sep, "/"))
                dirnames[:] = []
    return sorted(found)


def jointnet_path(name: str) -> str:
    """The folder of a listed model name; never outside the registered jointnet folders."""
    for root in folder_paths.get_folder_paths(paths.JOINTNET):
        root = os.path.abspath(root)
        candidate = os.path.abspath(os.path.join(root, *name.split("/")))
        if os.path.commonpath([root, candidate]) == root and os.path.isdir(candidate):
            return candidate
    dirs = ", ".join(folder_paths.get_folder_paths(paths.JOINTNET))
    raise FileNotFoundError(f"JointNet model '{name}' was not found in {dirs}. {paths.WHERE[paths.JOINTNET]}")


class JointNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_JointNetLoader",
            display_name="UniDense Load JointNet (RGB-D)",
            category=CATEGORY,
            description="Load an official JointNet model (Zhang et al., ICLR 2024) from models/jointnet/<name>/"
            "{unet,jointnet}/ as one MODEL whose latent has 8 channels (RGB 4 + depth 4): EmptyLatentImage + any "
            "sampler then generate RGB-D jointly (official: 512², UniDense Official DDIM KSampler 50 steps, cfg 7.5). "
            "Use SD2.1-base's CLIP and VAE. Both UNets follow ComfyUI's loading, offloading and dtype handling.",
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=jointnet_models(),
                    tooltip="rgbd_finetune_sd21b: joint generation. rgbd_inpaint_sd21b: image->depth, "
                    "depth->image and RGB-D editing (it also generates). Each folder holds unet/ and jointnet/.",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(DTYPES),
                    default="auto",
                    tooltip="auto: ComfyUI's choice for diffusion weights on this device.",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The joint RGB-D model (8-channel latent).")],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str = "auto") -> io.NodeOutput:
        check_choice(weight_dtype, "weight_dtype", list(DTYPES))
        if not isinstance(model_name, str) or not model_name.strip("/. "):
            raise ValueError(f"model_name must name a folder under models/jointnet, got {model_name!r}.")
        files = read_jointnet_folder(jointnet_path(model_name))
        return io.NodeOutput(build_joint_model(files, model_name, DTYPES[weight_dtype]))


def _require_jointnet(model):
    info = get_info(model)
    if info is None:
        raise ValueError(
            "This node needs the JointNet MODEL from 'UniDense Load JointNet (RGB-D)'; the connected MODEL is "
            "another model."
        )
    return info


def _latent_size_mask(mask: torch.Tensor | None, name: str, pixel_size, latent_size) -> torch.Tensor | None:
    """A MASK at the image size (or the latent size) -> binarised latent-size [B,1,h,w]; errors name the input."""
    if mask is None:
        return None
    m = as_mask(check_mask(mask, name), name)
    sizes = {tuple(latent_size), tuple(pixel_size)}
    if tuple(m.shape[-2:]) not in sizes:
        want = " or ".join(f"{w}×{h}" for h, w in sorted(sizes, reverse=True))
        raise ValueError(
            f"{name} is {m.shape[-1]}×{m.shape[-2]}, but it must be {want} (the size of the image it masks, or the "
            "latent size). Resize the mask to the image."
        )
    return latent_mask(m, latent_size)


NO_ALPHA_HINT = (
    "LoadImage gives an all-zero MASK when the PNG has no alpha channel; paint the region to generate (1 = generate) "
    "in the mask editor, or load a PNG whose alpha marks it."
)


def custom_masks(rgb_mask, depth_mask, pixel_size, latent_size) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'custom' preset's latent-size masks [B|1,1,h,w] (a missing mask keeps its modality); an edit that would
    generate nothing is an error, a mask that keeps everything a warning (both usually mean a mask without alpha)."""
    if rgb_mask is None and depth_mask is None:
        raise ValueError("preset 'custom' needs rgb_mask and/or depth_mask (1 = generate, 0 = keep).")
    m_rgb = _latent_size_mask(rgb_mask, "rgb_mask", pixel_size, latent_size)
    m_depth = _latent_size_mask(depth_mask, "depth_mask", pixel_size, latent_size)
    m_rgb = torch.zeros(1, 1, *latent_size) if m_rgb is None else m_rgb  # no mask: keep that modality
    m_depth = torch.zeros(1, 1, *latent_size) if m_depth is None else m_depth
    if m_rgb.shape[0] != m_depth.shape[0] and 1 not in (m_rgb.shape[0], m_depth.shape[0]):
        raise ValueError(f"rgb_mask has {m_rgb.shape[0]} masks but depth_mask has {m_depth.shape[0]}.")
    generates = (m_rgb.flatten(1).amax(1) > 0) | (m_depth.flatten(1).amax(1) > 0)  # [B]
    if not generates.all():
        first = int((~generates).nonzero()[0])
        raise ValueError(
            f"Nothing would be generated for mask {first}: rgb_mask and depth_mask are 0 (keep) everywhere once "
            "binarised at 0.5 and resized to the latent (a missing mask keeps its modality). " + NO_ALPHA_HINT
        )
    for name, given, m in (("rgb_mask", rgb_mask, m_rgb), ("depth_mask", depth_mask, m_depth)):
        if given is not None and not m.any():
            logger.warning(
                "UniDense JointNet: %s is 0 (keep) everywhere once binarised at 0.5, so the %s is kept unchanged. %s",
                name,
                "image" if name == "rgb_mask" else "depth",
                NO_ALPHA_HINT,
            )
    return m_rgb, m_depth


class ChannelInpaintRGBD(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_ChannelInpaintRGBD",
            display_name="UniDense Channel Inpaint RGB-D (JointNet)",
            category=CATEGORY,
            description="Keep a known modality (or region) of the 8-channel RGB-D latent fixed per channel during "
            "any stock sampler, as the official JointNet inpaint pipeline: rgb2j = image->depth, j2rgb = "
            "depth->image, custom = free masks for RGB-D editing (1 = generate). Route positive/negative through "
            "this node: they carry the inpainting model's masked-latent input. Sampler denoise = strength "
            "(1.0 for the presets).",
            inputs=[
                io.Model.Input("model", tooltip="From 'UniDense Load JointNet (RGB-D)' (rgbd_inpaint_sd21b is best)."),
                io.Conditioning.Input("positive", tooltip="The caption of the scene (SD2.1 CLIP)."),
                io.Conditioning.Input("negative", tooltip="Usually the empty prompt (official)."),
                io.Combo.Input(
                    "preset",
                    options=INPAINT_MODES,
                    default="rgb2j",
                    tooltip="rgb2j: image -> depth. j2rgb: depth -> image. custom: use rgb_mask / depth_mask "
                    "(a missing mask keeps that modality).",
                ),
                io.Vae.Input("vae", optional=True, tooltip="SD2.1-base VAE; needed for image/depth inputs."),
                io.Image.Input("image", optional=True, tooltip="The RGB image (sides multiples of 8)."),
                io.Image.Input(
                    "depth",
                    optional=True,
                    tooltip="A depth/disparity image in [0, 1] from any source (MERGE, DMP, a file), same size as "
                    "the image. JointNet uses MiDaS-style relative disparity: near = bright.",
                ),
                io.Mask.Input("rgb_mask", optional=True, tooltip="custom: RGB region to generate (1 = generate)."),
                io.Mask.Input("depth_mask", optional=True, tooltip="custom: depth region to generate (1 = generate)."),
                io.Latent.Input(
                    "rgbd_latent",
                    optional=True,
                    tooltip="Instead of image/depth: an 8-channel RGB-D LATENT (e.g. a JointNet result, or "
                    "'UniDense Join RGB-D Latents').",
                ),
                io.Boolean.Input(
                    "depth_near_white",
                    default=True,
                    tooltip="On: near is white in the depth input (disparity, ControlNet polarity; what UniDense's "
                    "read-outs give by default). Off: near is black (plain depth); it is inverted.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The JointNet model with the channel mask."),
                io.Conditioning.Output(display_name="positive", tooltip="With the masked-latent input attached."),
                io.Conditioning.Output(display_name="negative", tooltip="With the masked-latent input attached."),
                io.Latent.Output(
                    display_name="latent", tooltip="The 8-channel RGB-D latent to sample (with an all-ones noise mask)."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        preset: str = "rgb2j",
        vae=None,
        image: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        rgb_mask: torch.Tensor | None = None,
        depth_mask: torch.Tensor | None = None,
        rgbd_latent: dict | None = None,
        depth_near_white: bool = True,
    ) -> io.NodeOutput:
        info = _require_jointnet(model)
        check_choice(preset, "preset", INPAINT_MODES)
        # 1. Raw (unscaled) latents of both modalities; a preset's generated modality starts from nothing.
        z_rgb, z_depth, pixel_size = cls.latents(vae, image, depth, rgbd_latent, depth_near_white, preset)
        if preset == "rgb2j":
            z_depth = None
        elif preset == "j2rgb":
            z_rgb = None
        ref = z_rgb if z_rgb is not None else z_depth
        b, lat = ref.shape[0], tuple(ref.shape[-2:])
        if z_rgb is not None and z_depth is not None:
            b = max(b, z_depth.shape[0])
        # 2. Per-modality masks at the latent size (binarised at 0.5, nearest), 1 = generate.
        if preset in PRESETS:
            m_rgb, m_depth = preset_masks(preset, 1, lat)
        else:
            m_rgb, m_depth = custom_masks(rgb_mask, depth_mask, pixel_size, lat)
        for name, z, m in (("image", z_rgb, m_rgb), ("depth", z_depth, m_depth)):
            if m.shape[0] not in (1, b):
                raise ValueError(
                    f"The {name} mask has {m.shape[0]} masks for a batch of {b}; give one mask, or one per {name}."
                )
            if z is None and (m < 1).any():
                raise ValueError(f"No {name} was given, but its mask keeps part of it; connect {name} or mask it all.")
        z_rgb, z_depth = (torch.zeros(b, LATENT_CHANNELS, *lat) if z is None else z for z in (z_rgb, z_depth))
        cmask = channel_mask(m_rgb, m_depth, LATENT_CHANNELS)  # [B|1,8,h,w]
        samples = join_rgbd(z_rgb, z_depth, LATENT_CHANNELS)  # [B,8,h,w] raw
        # 3. The inpainting model's masked-latent input, in model space, as stock noise_concat conditioning.
        if info.has_masked_latent_input:
            scaled = model.get_model_object("latent_format").process_in(samples)
            masked = masked_condition(m_rgb, scaled[:, :LATENT_CHANNELS], m_depth, scaled[:, LATENT_CHANNELS:])
            positive = node_helpers.conditioning_set_values(positive, {"noise_concat": masked})
            negative = node_helpers.conditioning_set_values(negative, {"noise_concat": masked})
        else:
            logger.warning(
                "UniDense JointNet: '%s' is the generation model (no masked-latent conv); channel inpainting runs "
                "the RePaint blend alone, as the official pipeline does. rgbd_inpaint_sd21b works better.",
                info.name,
            )
        latent = {"samples": samples, "noise_mask": torch.ones(b, 1, *lat)}
        return io.NodeOutput(channel_inpaint_clone(model, cmask, samples), positive, negative, latent)

    @classmethod
    def latents(cls, vae, image, depth, rgbd_latent, near_white, preset):
        """(z_rgb or None, z_depth or None, pixel size) from IMAGEs or an RGB-D LATENT."""
        if rgbd_latent is not None:
            if image is not None or depth is not None:
                raise ValueError("Give either image/depth or rgbd_latent, not both.")
            z_rgb, z_depth = split_rgbd(check_latent(rgbd_latent, "rgbd_latent").float(), LATENT_CHANNELS)
            return z_rgb, z_depth, (8 * z_rgb.shape[-2], 8 * z_rgb.shape[-1])  # the images it came from
        need = {"rgb2j": "image", "j2rgb": "depth"}.get(preset)
        if need is not None and {"image": image, "depth": depth}[need] is None:
            raise ValueError(f"preset '{preset}' needs the {need} input (or rgbd_latent).")
        if image is None and depth is None:
            raise ValueError("Connect image and/or depth (with vae), or rgbd_latent.")
        if image is not None:
            check_image(image, "image", channels=(3, 4))
        if depth is not None:
            check_depth_image(depth)
        if vae is None:
            raise ValueError("Encoding image/depth needs the vae input (SD2.1-base's VAE).")
        if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
            raise ValueError(
                f"vae gives {vae.latent_channels}-channel latents; JointNet needs SD2.1-base's 4-channel VAE."
            )
        ref = image if image is not None else depth
        h, w = ref.shape[1:3]
        if h % 8 or w % 8:
            raise ValueError(f"The inputs are {w}×{h} px; both sides must be multiples of 8 (JointNet, SD VAE).")
        if image is not None and depth is not None:
            if image.shape[1:3] != depth.shape[1:3]:
                raise ValueError(
                    f"image is {image.shape[2]}×{image.shape[1]} but depth is {depth.shape[2]}×{depth.shape[1]}."
                )
            if image.shape[0] != depth.shape[0] and 1 not in (image.shape[0], depth.shape[0]):
                raise ValueError(
                    f"image has {image.shape[0]} images but depth has {depth.shape[0]}; give one depth per image "
                    "(or one image / one depth for all)."
                )
        z_rgb = None if image is None else vae.encode(image[..., :3])
        z_depth = None
        if depth is not None:
            d = depth[..., :3].float().clamp(0, 1)  # within 1e-4 of [0, 1] (checked): rounding only
            d = d.expand(*d.shape[:3], 3) if d.shape[-1] == 1 else d
            z_depth = vae.encode(d if near_white else 1 - d)
        for z in (z_rgb, z_depth):
            if z is not None and z.shape[1] != LATENT_CHANNELS:
                raise ValueError(
                    f"The VAE gives {z.shape[1]}-channel latents; JointNet needs SD2.1-base's 4-channel VAE."
                )
        return z_rgb, z_depth, (h, w)


def check_depth_image(depth: torch.Tensor, name: str = "depth", tolerance: float = 1e-4) -> torch.Tensor:
    """A depth IMAGE for JointNet: finite, 1/3/4 channels, values in [0, 1] (never clamped silently)."""
    check_image(depth, name, channels=(1, 3, 4))
    lo, hi = float(depth.min()), float(depth.max())
    if lo < -tolerance or hi > 1 + tolerance:
        raise ValueError(
            f"{name} holds values in [{lo:.4g}, {hi:.4g}]; JointNet's depth input is a [0, 1] map (near = bright). "
            "Normalise it first (e.g. a read-out node with normalize on), or use its display image."
        )
    return depth


class SplitRGBDLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_SplitRGBDLatent",
            display_name="UniDense Split RGB-D Latent",
            category=CATEGORY,
            description="Split JointNet's 8-channel latent into the RGB and the depth latent (4 channels each), e.g. "
            "to decode them with the SD2.1 VAE.",
            inputs=[io.Latent.Input("rgbd_latent", tooltip="An 8-channel RGB-D LATENT.")],
            outputs=[
                io.Latent.Output(display_name="rgb_latent", tooltip="Channels 0-3: decode with VAEDecode."),
                io.Latent.Output(
                    display_name="depth_latent", tooltip="Channels 4-7: decode with the depth decode node."
                ),
            ],
        )

    @classmethod
    def execute(cls, rgbd_latent: dict) -> io.NodeOutput:
        rgb, depth = split_rgbd(check_latent(rgbd_latent, "rgbd_latent"), LATENT_CHANNELS)
        extra = {k: v for k, v in rgbd_latent.items() if k == "batch_index"}
        return io.NodeOutput({"samples": rgb, **extra}, {"samples": depth, **extra})


class JoinRGBDLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_JoinRGBDLatent",
            display_name="UniDense Join RGB-D Latents",
            category=CATEGORY,
            description="Stack an RGB latent and a depth latent (SD VAE, 4 channels each) into JointNet's 8-channel "
            "RGB-D latent (RGB first).",
            inputs=[
                io.Latent.Input("rgb_latent", tooltip="VAEEncode of the image."),
                io.Latent.Input("depth_latent", tooltip="VAEEncode of the depth image (near = white)."),
            ],
            outputs=[io.Latent.Output(display_name="rgbd_latent", tooltip="8 channels: RGB 0-3, depth 4-7.")],
        )

    @classmethod
    def execute(cls, rgb_latent: dict, depth_latent: dict) -> io.NodeOutput:
        rgb, depth = check_latent(rgb_latent, "rgb_latent"), check_latent(depth_latent, "depth_latent")
        out = {"samples": join_rgbd(rgb, depth, LATENT_CHANNELS)}
        if "batch_index" in rgb_latent:
            out["batch_index"] = rgb_latent["batch_index"]
        return io.NodeOutput(out)


class JointNetDepthDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_JointNetDepthDecode",
            display_name="UniDense JointNet Depth Decode",
            category=CATEGORY,
            description="Decode the depth half of a JointNet latent with the VAE and read channel 0 (the official "
            "read-out): relative disparity in [0, 1], near = bright. Gives a 3-channel IMAGE for ControlNet and "
            "the raw values as a MASK (never normalised).",
            inputs=[
                io.Vae.Input("vae", tooltip="SD2.1-base's VAE."),
                io.Latent.Input("latent", tooltip="The 8-channel RGB-D latent, or a 4-channel depth latent."),
                io.Boolean.Input(
                    "near_white", default=True, tooltip="On: near = white, as MiDaS and SD depth ControlNets expect."
                ),
                io.Combo.Input(
                    "normalize",
                    options=DEPTH_NORMALIZE,
                    default="none",
                    tooltip="Display image only: none (as decoded), quantile (official --normalize: 1%/99% "
                    "quantiles to 0/1, clipped), per_image / per_batch min-max.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="depth_image", tooltip="3-channel depth for ControlNet / preview."),
                io.Mask.Output(display_name="depth_raw", tooltip="Float disparity [B,H,W], near = bright, raw."),
            ],
        )

    @classmethod
    def execute(cls, vae, latent: dict, near_white: bool = True, normalize: str = "none") -> io.NodeOutput:
        check_choice(normalize, "normalize", DEPTH_NORMALIZE)
        z = check_latent(latent, "latent", channels=(LATENT_CHANNELS, 2 * LATENT_CHANNELS))
        if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
            raise ValueError(f"vae decodes {vae.latent_channels}-channel latents; JointNet's depth needs the SD VAE.")
        if z.shape[1] == 2 * LATENT_CHANNELS:
            z = split_rgbd(z, LATENT_CHANNELS)[1]
        raw = jointnet_depth_from_unit(vae.decode(z), channel_dim=-1)  # [B,H,W]
        shown = quantile_norm(raw) if normalize == "quantile" else normalize_depth(raw, normalize)
        return io.NodeOutput(depth_to_display(shown, near_is_low=False, near_white=near_white), raw)


NODES: list[type[io.ComfyNode]] = [
    JointNetLoader,
    ChannelInpaintRGBD,
    SplitRGBDLatent,
    JoinRGBDLatent,
    JointNetDepthDecode,
]
