"""JointNet on ComfyUI's own SD2.x ``UNetModel``: one MODEL whose latent has 8 channels (RGB 4 + depth 4).

Design (see the README section in notes): the RGB branch is a stock SD2.x ``BaseModel`` built from the official
``unet/`` folder (diffusers keys converted with ``comfy.utils.unet_to_diffusers``) with an 8-channel latent format;
the depth branch (``jointnet/``) is a second ``UNetModel`` in an additional-models ``ModelPatcher``, so ComfyUI
loads, offloads and casts both. A ``DIFFUSION_MODEL`` wrapper replaces the RGB UNet's forward with the core
``joint_forward`` over both. The inpainting model's masked-latent input arrives as stock ``noise_concat``
conditioning (``c_concat``, appended after the 8 latent channels by ``BaseModel._apply_model``): x = [z (8), cond (10)].
Channel inpainting uses ``set_model_denoise_mask_function`` (a per-channel mask) plus an ``OUTER_SAMPLE`` wrapper that
writes the kept channels back exactly at the end of a full run.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel, forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from torch import nn

from ...unidense_core.io.checkpoints import CheckpointError, load_weights
from ...unidense_core.jointnet.config import check_unet_config, norm_settings
from ...unidense_core.jointnet.model import (
    JOINTNET_SOURCE_HINT,
    BranchFiles,
    ExchangeLayers,
    JointNetFiles,
    joint_forward,
)

logger = logging.getLogger(__name__)

KEY = "unidense_jointnet"  # wrapper / attachment / additional-models key


class RGBDLatentFormat(comfy.latent_formats.SD15):
    """SD-VAE latents of RGB and depth stacked: 8 channels, scale 0.18215; Latent2RGB previews show the RGB half."""

    latent_channels = 8

    def __init__(self):
        super().__init__()
        self.latent_rgb_factors = [list(r) for r in self.latent_rgb_factors] + [[0.0, 0.0, 0.0]] * 4
        self.taesd_decoder_name = None  # TAESD decodes 4-channel latents only


@dataclass(frozen=True)
class JointNetInfo:
    """Carried on the MODEL as an attachment, for the nodes that need to know what they were given."""

    name: str
    has_masked_latent_input: bool
    latent_channels: int = 4
    masked_channels: int = 10


def get_info(model) -> JointNetInfo | None:
    return model.get_attachment(KEY) if hasattr(model, "get_attachment") else None


# ----------------------------------------------------------------------------------------------------------
# diffusers UNet config / weights -> ComfyUI (LDM)


# What ComfyUI's UNetModel computes without being told (diffusers config key -> the only value it implements).
COMFY_FIXED = {
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "center_input_sample": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "timestep_post_act": None,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "time_embedding_act_fn": None,
    "cross_attention_norm": None,
}


def ldm_unet_config(config: dict, source: str) -> dict:
    """A diffusers SD2.x UNet config.json -> ComfyUI ``UNetModel`` kwargs (as ``model_detection`` would detect).

    The config is checked first (``check_unet_config``); values ComfyUI's UNet cannot follow are refused by name
    instead of loading a model that computes something else.
    """
    check_unet_config(config, source)
    for key, value in COMFY_FIXED.items():
        given = config.get(key, value)
        if isinstance(given, list | tuple) and all(v == value for v in given):
            given = value  # a per-block list of the same value (e.g. only_cross_attention: [false, false, ...])
        if key == "mid_block_only_cross_attention" and given is False:
            given = None  # diffusers: None follows only_cross_attention (False); False says the same
        if given != value:
            raise CheckpointError(
                f"{source}: {key}={config[key]!r} is not supported inside ComfyUI (SD2.1-base uses {value!r})."
            )
    block_out = [int(c) for c in config["block_out_channels"]]
    layers = int(config.get("layers_per_block", 2))
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = [heads] * len(block_out) if isinstance(heads, int) else list(heads)
    head_ch = {c // h for c, h, t in zip(block_out, heads, down, strict=True) if "CrossAttn" in t}
    if len(head_ch) != 1 or any(c % h for c, h in zip(block_out, heads, strict=True)):
        raise CheckpointError(f"{source}: attention heads {heads} do not give one head width for {block_out}.")
    depth_in = [1 if "CrossAttn" in t else 0 for t in down for _ in range(layers)]
    depth_out = [1 if "CrossAttn" in t else 0 for t in up for _ in range(layers + 1)]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": int(config.get("in_channels", 4)),
        "out_channels": int(config.get("out_channels", 4)),
        "model_channels": block_out[0],
        "num_res_blocks": [layers] * len(block_out),
        "channel_mult": [c // block_out[0] for c in block_out],
        "transformer_depth": depth_in,  # per input res block, in order
        "transformer_depth_output": depth_out[::-1],  # ComfyUI pops it from the end for the lowest-res level first
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "context_dim": int(config["cross_attention_dim"]),
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "num_heads": -1,
        "num_head_channels": head_ch.pop(),
    }


def norm_operations(ops, groups: int = 32, eps: float = 1e-5):
    """ComfyUI ``ops`` whose GroupNorm follows the config: ComfyUI's UNetModel hard-codes ``GroupNorm(32, ...)`` (and
    the default eps in ResNets and the output norm), diffusers takes ``norm_num_groups`` / ``norm_eps`` from
    config.json. A subclass of the picked ops, so the casting behaviour is unchanged; no ComfyUI module is touched."""
    if (groups, eps) == (32, 1e-5):
        return ops

    default_eps = eps

    class GroupNorm(ops.GroupNorm):
        def __init__(self, num_groups, num_channels, eps=None, affine=True, device=None, dtype=None):
            # num_groups: ComfyUI's hard-coded 32, replaced; an explicit eps (attention norms: 1e-6) is kept.
            eps = default_eps if eps is None else eps
            super().__init__(groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)

    return type(f"{ops.__name__}_groups{groups}", (ops,), {"GroupNorm": GroupNorm})


def convert_unet_state_dict(sd: dict[str, torch.Tensor], unet_config: dict, source: str) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> ComfyUI/LDM keys with ``comfy.utils.unet_to_diffusers``; every key must map (and the
    strict load that follows catches missing ones)."""
    key_map = comfy.utils.unet_to_diffusers(unet_config)  # diffusers name -> LDM name
    unmapped = sorted(k for k in sd if k not in key_map)
    if unmapped:
        raise CheckpointError(
            f"{source}: {len(unmapped)} UNet tensors do not fit the SD2.x layout of config.json (e.g. "
            f"{unmapped[:3]}). " + JOINTNET_SOURCE_HINT
        )
    return {key_map[k]: v for k, v in sd.items()}


def _load_strict(module: nn.Module, sd: dict, source: str) -> None:
    missing, unexpected = load_weights(module, sd)  # the file's tensors themselves where the dtype matches: no copy
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the weights do not fill the model built from config.json (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}). " + JOINTNET_SOURCE_HINT
        )


class DepthBranch(nn.Module):
    """The second branch for an additional-models ModelPatcher: its UNet and its own exchange layers."""

    def __init__(self, diffusion_model: UNetModel, exchange: ExchangeLayers):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.jointnet_exchange = exchange

    def get_dtype(self) -> torch.dtype:
        return self.diffusion_model.dtype


def _branch_modules(files: BranchFiles, model_config, ops, dtype, unet: UNetModel | None = None):
    """(ComfyUI UNetModel, exchange layers) of one official branch, weights loaded (into ``unet`` if given)."""
    source = f"'{files.weights_file}'"
    if unet is None:
        unet = UNetModel(**model_config.unet_config, device=None, operations=ops)
    _load_strict(unet, convert_unet_state_dict(files.unet_state_dict, model_config.unet_config, source), source)
    exchange = ExchangeLayers(files.exchange_config, conv=ops.Conv2d, dtype=dtype)
    _load_strict(exchange, files.exchange_state_dict, source)
    return unet, exchange


def build_joint_model(files: JointNetFiles, name: str, dtype: torch.dtype | None = None):
    """The JointNet MODEL: RGB BaseModel + depth branch patcher + joint DIFFUSION_MODEL wrapper + 8-ch latent.

    Consumes ``files``: each branch's state dict is released once its modules hold the weights."""
    source = f"'{files.rgb.weights_file}'"
    unet_config = ldm_unet_config(files.rgb.unet_config(), source)
    if ldm_unet_config(files.depth.unet_config(), f"'{files.depth.weights_file}'") != unet_config:
        raise CheckpointError(f"'{files.folder}': unet/ and jointnet/ have different UNet configs.")
    model_config = comfy.supported_models.SD20(unet_config)
    model_config.unet_config["num_head_channels"] = unet_config["num_head_channels"]  # SD20 forces 64
    model_config.latent_format = RGBDLatentFormat()
    model_config.memory_usage_factor = 2 * comfy.supported_models.SD20.memory_usage_factor  # two UNets per step
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    n_params = sum(v.numel() for b in (files.rgb, files.depth) for v in b.unet_state_dict.values())
    weight_dtype = next(iter(files.rgb.unet_state_dict.values())).dtype
    if dtype is None:
        dtype = mm.unet_dtype(
            model_params=n_params, supported_dtypes=model_config.supported_inference_dtypes, weight_dtype=weight_dtype
        )
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    ops = comfy.ops.pick_operations(  # as BaseModel picks them, so both branches cast alike
        dtype, manual_cast, fp8_optimizations=model_config.optimizations.get("fp8", False)
    )
    ops = norm_operations(ops, *norm_settings(files.rgb.config))  # the config's GroupNorm, not ComfyUI's 32
    if norm_settings(files.depth.config) != norm_settings(files.rgb.config):
        raise CheckpointError(f"'{files.folder}': unet/ and jointnet/ have different norm_num_groups / norm_eps.")
    model_config.custom_operations = ops  # BaseModel builds the RGB UNet with the same ops as the depth branch
    # 1. RGB branch: a stock SD2.x BaseModel (ε-prediction forced: get_model({}) skips the v-pred weight heuristic).
    base = model_config.get_model({}, "")
    _, rgb_exchange = _branch_modules(files.rgb, model_config, ops, dtype, base.diffusion_model)
    files.rgb.release()  # one branch at a time: its state dict goes before the next one is loaded
    base.jointnet_exchange = rgb_exchange  # our fresh model: the RGB branch owns its exchange layers
    patcher = comfy.model_patcher.ModelPatcher(base.to(offload_device), load_device, offload_device)
    # 2. Depth branch: its own patcher, loaded and offloaded together with the RGB model.
    depth = DepthBranch(*_branch_modules(files.depth, model_config, ops, dtype)).to(offload_device)
    files.depth.release()
    depth_patcher = comfy.model_patcher.ModelPatcher(depth, load_device, offload_device)
    info = JointNetInfo(name, files.has_masked_latent_input, files.rgb.exchange_config.in_channels)
    patcher.set_additional_models(KEY, [depth_patcher])
    patcher.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, joint_diffusion_model(rgb_exchange, depth, info)
    )
    patcher.set_attachments(KEY, info)
    return patcher


# ----------------------------------------------------------------------------------------------------------
# The joint forward on ComfyUI's UNetModel


@dataclass
class _ComfyState:
    emb: torch.Tensor
    context: torch.Tensor
    dtype: torch.dtype


class ComfyUNetHost:
    """:class:`unidense_core.jointnet.model.UNetHost` over ComfyUI's ``UNetModel`` (its ``_forward``, split in three;
    attention patches/replaces apply, input/output-block patches do not)."""

    def __init__(self, unet: UNetModel, transformer_options: dict, kwargs: dict):
        self.unet = unet
        self.to = transformer_options
        self.extra = {
            "time_context": kwargs.get("time_context"),
            "num_video_frames": kwargs.get("num_video_frames", unet.default_num_video_frames),
            "image_only_indicator": kwargs.get("image_only_indicator"),
        }

    def _run(self, module, h, state, block, output_shape=None):
        self.to["block"] = block
        return forward_timestep_embed(module, h, state.emb, state.context, self.to, output_shape, **self.extra)

    def embed(self, x, timestep, context):
        self.to["original_shape"] = list(x.shape)
        self.to["transformer_index"] = 0
        t_emb = timestep_embedding(timestep, self.unet.model_channels, repeat_only=False).to(x.dtype)
        emb = self.unet.time_embed(t_emb)  # [B,4·C0]
        for patch in self.to.get("patches", {}).get("emb_patch", []):
            emb = patch(emb, self.unet.model_channels, self.to)
        return _ComfyState(emb, context, x.dtype)

    def conv_in(self, x, state):
        return self._run(self.unet.input_blocks[0], x, state, ("input", 0))

    def down_mid(self, h, state):
        skips = [h]
        for i in range(1, len(self.unet.input_blocks)):
            h = self._run(self.unet.input_blocks[i], h, state, ("input", i))
            skips.append(h)
        return skips, self._run(self.unet.middle_block, h, state, ("middle", 0))

    def up(self, mid, skips, state):
        hs, h = list(skips), mid
        for i, module in enumerate(self.unet.output_blocks):
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(module, h, state, ("output", i), hs[-1].shape if hs else None)
        return self.unet.out(h.type(state.dtype))


def joint_diffusion_model(rgb_exchange: ExchangeLayers, depth: DepthBranch, info: JointNetInfo):
    """The DIFFUSION_MODEL wrapper: the RGB UNet's forward becomes the two-branch JointNet forward.

    Wrappers registered after this one (other packs) still run, inside it, around the joint forward.
    """
    c = info.latent_channels

    def joint(rgb_unet, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        n = x.shape[1]
        if n == 2 * c:
            z, masked = x, None
        elif n == 2 * c + info.masked_channels and info.has_masked_latent_input:
            z, masked = x[:, : 2 * c], x[:, 2 * c :]  # [B,8,h,w], [B,10,h,w] from ChannelInpaintRGBD
        elif n == c:
            raise ValueError(
                f"The JointNet model '{info.name}' got a {c}-channel latent; it denoises the {2 * c}-channel RGB-D "
                "latent (RGB + depth). Use an empty latent (EmptyLatentImage is widened automatically), "
                "'UniDense Join RGB-D Latents', or 'UniDense Channel Inpaint RGB-D'."
            )
        else:
            raise ValueError(
                f"The JointNet model '{info.name}' got {n} input channels: {2 * c} latent channels plus {n - 2 * c} "
                f"concatenated conditioning channels. Only the inpainting model takes a conditioning, the "
                f"{info.masked_channels}-channel one from 'UniDense Channel Inpaint RGB-D'; remove other "
                "concat conditionings (noise_concat / InpaintModelConditioning)."
            )
        if control is not None:
            logger.warning("UniDense JointNet: ControlNet residuals are ignored by the joint RGB-D model.")
        rgb_host = ComfyUNetHost(rgb_unet, transformer_options, kwargs)
        depth_host = ComfyUNetHost(depth.diffusion_model, dict(transformer_options), kwargs)
        return joint_forward(
            (rgb_host, rgb_exchange),
            (depth_host, depth.jointnet_exchange),
            z[:, :c],
            z[:, c:],
            timesteps,
            context,
            masked,
        )  # [B,8,h,w]

    def wrapper(executor, *args, **kwargs):
        rgb_unet = executor.class_obj
        inner = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            functools.partial(joint, rgb_unet), rgb_unet, executor.wrappers, executor.idx + 1
        )  # the remaining wrappers, then the joint forward in place of the single UNet's _forward
        return inner.execute(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------------------
# Channel-wise inpainting inside any stock sampler


NOT_THE_NODES_LATENT = (
    "Connect the 'latent' output of 'UniDense Channel Inpaint RGB-D' to the sampler's latent_image (it carries the "
    "kept image/depth and the noise mask the channel inpainting needs)."
)


def _check_sampled_latent(latent_image: torch.Tensor, denoise_mask, keep: torch.Tensor | None, known):
    """Refuse a run whose LATENT is not the node's: without its noise mask ComfyUI never calls the per-channel mask,
    and other kept values would contradict the masked-latent conditioning computed from the node's latent."""
    if denoise_mask is None:
        raise ValueError(
            "This JointNet channel-inpainting MODEL was sampled with a LATENT that has no noise mask (e.g. "
            "EmptyLatentImage): the kept image/depth would be regenerated. " + NOT_THE_NODES_LATENT
        )
    if known is None or keep is None:
        return
    lat = latent_image.detach().float().cpu()
    if lat.shape[1:] != known.shape[1:]:
        return  # the mask's own size check names the sizes

    def same(i: int, j: int) -> bool:
        return torch.equal(lat[i][keep[i]], known[j][keep[i]])

    if lat.shape[0] == known.shape[0]:
        ok = all(same(i, i) for i in range(lat.shape[0]))
    else:  # RepeatLatentBatch / LatentFromBatch: each item must be one of the node's
        ok = all(any(same(i, j) for j in range(known.shape[0])) for i in range(lat.shape[0]))
    if not ok:
        raise ValueError(
            "The LATENT given to the sampler differs from the one 'UniDense Channel Inpaint RGB-D' returned in the "
            "channels it keeps, so the result would keep other values than the model is conditioned on. "
            + NOT_THE_NODES_LATENT
        )


def channel_inpaint_clone(model, cmask: torch.Tensor, known: torch.Tensor | None = None):
    """Clone that keeps the channels where ``cmask`` [B|1,8,h,w] is 0 equal to the LATENT's samples.

    During sampling ComfyUI's KSamplerX0Inpaint replaces the kept channels by the input latent noised to the
    current σ with the sampler's noise (the RePaint blend) and returns them as the denoised value; at the end of a
    full run the kept channels are written back from the input latent so they are bit-identical to it. A run whose
    LATENT has no noise mask (the mask function would never be called) is refused; with ``known`` (the node's raw
    samples [B,8,h,w]) so is one whose kept channels differ from it.
    """
    cmask = cmask.detach().float().cpu()
    known = None if known is None else known.detach().float().cpu()
    m = model.clone()
    previous = m.model_options.get("denoise_mask_function")

    def fit(like: torch.Tensor) -> torch.Tensor:
        if tuple(cmask.shape[-2:]) != tuple(like.shape[-2:]) or cmask.shape[1] != like.shape[1]:
            raise ValueError(
                f"The channel-inpainting mask is {tuple(cmask.shape[1:])} but the sampler's latent is "
                f"{tuple(like.shape[1:])}: sample the LATENT that 'UniDense Channel Inpaint RGB-D' returned."
            )
        return comfy.utils.repeat_to_batch_size(cmask, like.shape[0]).to(like)

    def denoise_mask_function(sigma, denoise_mask, extra_options):
        if previous is not None:
            denoise_mask = previous(sigma, denoise_mask, extra_options)
        return denoise_mask * fit(denoise_mask)

    def keep_exact(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        keep = None if denoise_mask is None else fit(latent_image.detach().float().cpu()) == 0  # [B,8,h,w]
        _check_sampled_latent(latent_image, denoise_mask, keep, known)
        out = executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
        ends_clean = len(sigmas) > 0 and (float(sigmas[-1]) == 0.0 or getattr(sampler, "ends_clean", False))
        if denoise_mask is None or not ends_clean:  # (the official DDIM ends clean at ᾱ_0: hosts/sampling.py)
            return out  # partial runs (KSamplerAdvanced) keep ComfyUI's own, still-noisy result
        effective = comfy.utils.reshape_mask(denoise_mask.to(out), out.shape) * fit(out)
        return torch.where(effective == 0, latent_image.to(out), out)

    m.set_model_denoise_mask_function(denoise_mask_function)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, keep_exact)
    return m
