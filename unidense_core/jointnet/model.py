"""JointNet (Zhang et al., ICLR 2024, §3.2): two SD2.1 UNets that exchange features to denoise RGB and depth jointly.

Each branch is a UNet plus its own exchange layers (zero-initialised in training): a 1×1 conv on each of its 12
down-path skips and on its mid-block output (added to the *other* branch's skips and mid input, ControlNet-style),
a 3×3 conv on the other branch's noisy latent (added to conv_in's output) and, in the inpainting model, a 3×3 conv
on the masked latents (10 → 320). One joint step runs both down/mid passes, then both up passes.

The algorithm is written once against a small host interface (:class:`UNetHost`): :class:`DiffusersUNetHost`
adapts a diffusers ``UNet2DConditionModel`` (here), ``nodes/jointnet_host.py`` adapts ComfyUI's ``UNetModel``.
Official folders (``unet/`` + ``jointnet/``, diffusers 0.19.3 ``JointNetModel`` saves) load unchanged: a branch's
state-dict keys are the official ones (``conv_in.weight`` …, ``jointnet_*``). Torch only at module level.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from ..io.checkpoints import CheckpointError, check_state_dict, find_weights_file, load_json, load_state_dict
from .config import check_unet_config

logger = logging.getLogger(__name__)

JOINTNET_PREFIX = "jointnet_"
JOINTNET_CONFIG_KEYS = ("joint_in_channels", "has_masked_latent_input")
BRANCHES = ("unet", "jointnet")  # official subfolders: RGB branch, depth branch
JOINTNET_SOURCE_HINT = (
    "JointNet weights are Apple's zips 'rgbd_finetune_sd21b.zip' (joint generation) and 'rgbd_inpaint_sd21b.zip' "
    "(inpainting, image->depth, depth->image) from https://docs-assets.developer.apple.com/ml-research/models/"
    "iclr24-jointnet/; unzip each so its folder holds 'unet/' and 'jointnet/', each with config.json and "
    "diffusion_pytorch_model.bin (or .safetensors)."
)

# stabilityai/stable-diffusion-2-1-base unet/config.json (diffusers kwargs): the architecture of both branches.
SD21_BASE_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),  # diffusers' SD2 naming: these are head counts (64 channels per head)
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    norm_num_groups=32,
    act_fn="silu",
)


# ----------------------------------------------------------------------------------------------------------
# Exchange layers


@dataclass(frozen=True)
class ExchangeConfig:
    """Shapes of one branch's exchange layers, derived from its UNet config as the official constructor does."""

    skip_channels: tuple[int, ...]  # channels of the down-path skips: conv_in output, then per level resnets + down
    mid_channels: int  # mid-block output channels
    in_channels: int = 4  # this branch's latent channels
    joint_in_channels: int = 4  # the other branch's latent channels (config "joint_in_channels": null -> in_channels)
    conv_in_kernel: int = 3
    has_masked_latent_input: bool = False  # inpainting model: conv on [mask, masked latent] of both branches

    @classmethod
    def from_unet_config(cls, config: Mapping[str, Any], source: str = "config") -> ExchangeConfig:
        """Read a (JointNet) UNet config.json; ``has_masked_latent_input`` may be overridden by the caller."""
        try:
            block_out = [int(c) for c in config["block_out_channels"]]
            layers = config.get("layers_per_block", 2)
            in_ch = int(config.get("in_channels", 4))
            joint_in = int(config.get("joint_in_channels") or in_ch)
            kernel = int(config.get("conv_in_kernel", 3))
        except KeyError as exc:
            raise CheckpointError(f"{source} is not a UNet config: key {exc} is missing.") from exc
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is not a valid UNet config ({exc}).") from exc
        if not block_out:
            raise CheckpointError(f"{source}: block_out_channels is empty.")
        if not isinstance(layers, int):
            raise CheckpointError(
                f"{source}: layers_per_block={layers!r}; JointNet's exchange layers need one value for all levels."
            )
        skips = [block_out[0]]  # skip 0 is conv_in's output
        for level, ch in enumerate(block_out):
            skips += [ch] * layers  # each resnet(+attention) output
            if level < len(block_out) - 1:
                skips.append(ch)  # the downsampler's output
        return cls(
            skip_channels=tuple(skips),
            mid_channels=block_out[-1],
            in_channels=in_ch,
            joint_in_channels=joint_in,
            conv_in_kernel=kernel,
            has_masked_latent_input=bool(config.get("has_masked_latent_input", False)),
        )

    @property
    def masked_channels(self) -> int:
        """[own mask, own masked latent, other mask, other masked latent] = 1 + 4 + 1 + 4 for SD."""
        return 2 + self.in_channels + self.joint_in_channels

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every ``jointnet_*`` tensor of the official state dict with its shape."""
        k, c0 = self.conv_in_kernel, self.skip_channels[0]
        shapes: dict[str, tuple[int, ...]] = {
            "jointnet_rgb_in_trans.weight": (c0, self.joint_in_channels, k, k),
            "jointnet_rgb_in_trans.bias": (c0,),
            "jointnet_mid_block.weight": (self.mid_channels, self.mid_channels, 1, 1),
            "jointnet_mid_block.bias": (self.mid_channels,),
        }
        for i, c in enumerate(self.skip_channels):
            shapes[f"jointnet_down_blocks.{i}.weight"] = (c, c, 1, 1)
            shapes[f"jointnet_down_blocks.{i}.bias"] = (c,)
        if self.has_masked_latent_input:
            shapes["jointnet_masked_latent_conv.weight"] = (c0, self.masked_channels, k, k)
            shapes["jointnet_masked_latent_conv.bias"] = (c0,)
        return shapes


class ExchangeLayers(nn.Module):
    """One branch's exchange convs under the official names. ``conv`` lets ComfyUI pass its own ``ops.Conv2d``."""

    def __init__(self, cfg: ExchangeConfig, conv: type[nn.Conv2d] = nn.Conv2d, **factory: Any):
        super().__init__()
        self.config = cfg
        k, pad, c0 = cfg.conv_in_kernel, (cfg.conv_in_kernel - 1) // 2, cfg.skip_channels[0]
        self.jointnet_rgb_in_trans = conv(cfg.joint_in_channels, c0, k, padding=pad, **factory)  # other latent -> h0
        self.jointnet_down_blocks = nn.ModuleList(conv(c, c, 1, **factory) for c in cfg.skip_channels)
        self.jointnet_mid_block = conv(cfg.mid_channels, cfg.mid_channels, 1, **factory)
        self.jointnet_masked_latent_conv = (
            conv(cfg.masked_channels, c0, k, padding=pad, **factory) if cfg.has_masked_latent_input else None
        )

    def input_term(self, z_other: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
        """What this branch adds to its conv_in output: the other latent's conv [+ the masked-latent conv]."""
        extra = self.jointnet_rgb_in_trans(z_other)  # [B,C0,h,w]
        if self.jointnet_masked_latent_conv is not None:
            if masked is None:
                raise ValueError("the inpainting JointNet branch needs its masked-latent input.")
            extra = extra + self.jointnet_masked_latent_conv(masked)  # [B,C0,h,w]
        elif masked is not None:
            raise ValueError("this JointNet branch has no masked-latent conv (a generation model).")
        return extra

    def send(self, skips: Sequence[torch.Tensor], mid: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals this branch sends to the other one: conv of each skip and of the mid-block output."""
        if len(skips) != len(self.jointnet_down_blocks):
            raise ValueError(
                f"The UNet produced {len(skips)} skip features but the exchange layers expect "
                f"{len(self.jointnet_down_blocks)}; the weights belong to a different UNet layout."
            )
        return [conv(s) for conv, s in zip(self.jointnet_down_blocks, skips, strict=True)], self.jointnet_mid_block(mid)


# ----------------------------------------------------------------------------------------------------------
# The joint forward over any UNet implementation


class UNetHost(Protocol):
    """The split forward JointNet needs from a UNet: embed, conv_in, down+mid, up (the official forward_down_mid /
    forward_up split, with conv_in separated so the exchange input term can be added to its output)."""

    def embed(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> Any:
        """Per-call state (time embedding, context, sizes) for the other three calls."""
        ...

    def conv_in(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """[B,4,h,w] -> [B,C0,h,w]."""
        ...

    def down_mid(self, h: torch.Tensor, state: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        """conv_in output (skip 0) -> (all skips, including h itself; mid-block output)."""
        ...

    def up(self, mid: torch.Tensor, skips: list[torch.Tensor], state: Any) -> torch.Tensor:
        """Up path from the mid features and the skips (residuals already added) -> ε [B,4,h,w]."""
        ...


def swap_masked_condition(masked: torch.Tensor, in_channels: int = 4) -> torch.Tensor:
    """[m_rgb, z_rgb, m_d, z_d] -> [m_d, z_d, m_rgb, z_rgb]: the depth branch sees its own half first."""
    own = 1 + in_channels
    return torch.cat([masked[:, own:], masked[:, :own]], dim=1)


def generate_all_condition(like: torch.Tensor, in_channels: int = 4) -> torch.Tensor:
    """The masked-latent input meaning "generate everything": masks 1, masked latents 0 ([B,10,h,w])."""
    b, _, h, w = like.shape
    one = torch.ones(b, 1, h, w, dtype=like.dtype, device=like.device)
    zero = torch.zeros(b, in_channels, h, w, dtype=like.dtype, device=like.device)
    return torch.cat([one, zero, one, zero], dim=1)


def joint_forward(
    rgb: tuple[UNetHost, ExchangeLayers],
    depth: tuple[UNetHost, ExchangeLayers],
    z_rgb: torch.Tensor,
    z_depth: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """One joint JointNet prediction: ε for RGB and depth, [B,8,h,w] (RGB first), methods.md §2.2.

    ``masked`` is the inpainting model's [B,10,h,w] input ``[m_rgb, (m_rgb<0.5)·z0_rgb, m_d, (m_d<0.5)·z0_d]``;
    ``None`` on the inpainting model means "generate everything" (masks 1, latents 0). Generation models take none.
    """
    (rgb_host, rgb_ex), (depth_host, depth_ex) = rgb, depth
    has_masked = rgb_ex.jointnet_masked_latent_conv is not None
    if has_masked != (depth_ex.jointnet_masked_latent_conv is not None):
        raise ValueError(
            "One JointNet branch has the masked-latent conv and the other does not; load both from one folder."
        )
    if masked is not None and not has_masked:
        raise ValueError(
            "A masked-latent input was given to a JointNet generation model, which has no masked-latent conv. "
            "Use the inpainting model (rgbd_inpaint_sd21b), or run the RePaint blend alone without this input."
        )
    c = z_rgb.shape[1]
    if has_masked:
        masked = generate_all_condition(z_rgb, c) if masked is None else masked.to(z_rgb.dtype)
        if masked.shape[1] != rgb_ex.config.masked_channels or masked.shape[-2:] != z_rgb.shape[-2:]:
            raise ValueError(
                f"The masked-latent input has shape {tuple(masked.shape)}; expected "
                f"[B,{rgb_ex.config.masked_channels},{z_rgb.shape[-2]},{z_rgb.shape[-1]}] (masks and masked latents "
                "of both branches at the latent size)."
            )
    masked_rgb, masked_depth = (masked, swap_masked_condition(masked, c)) if has_masked else (None, None)
    # 1. Inputs: own conv_in + conv of the other branch's noisy latent [+ masked-latent conv].
    s_rgb = rgb_host.embed(z_rgb, timestep, context)
    s_depth = depth_host.embed(z_depth, timestep, context)
    h_rgb = rgb_host.conv_in(z_rgb, s_rgb) + rgb_ex.input_term(z_depth, masked_rgb)  # [B,C0,h,w]
    h_depth = depth_host.conv_in(z_depth, s_depth) + depth_ex.input_term(z_rgb, masked_depth)  # [B,C0,h,w]
    # 2. Both down + mid passes.
    skips_rgb, mid_rgb = rgb_host.down_mid(h_rgb, s_rgb)  # 12 × [B,C_k,h_k,w_k], [B,C_mid,h/8,w/8] (SD2.1)
    skips_depth, mid_depth = depth_host.down_mid(h_depth, s_depth)
    # 3. What each branch sends: 1×1 convs of its own skips and mid output.
    send_rgb, send_rgb_mid = rgb_ex.send(skips_rgb, mid_rgb)
    send_depth, send_depth_mid = depth_ex.send(skips_depth, mid_depth)
    # 4. Both up passes, each with the other's residuals added to its skips and mid input (ControlNet-style).
    eps_rgb = rgb_host.up(
        mid_rgb + send_depth_mid, [s + r for s, r in zip(skips_rgb, send_depth, strict=True)], s_rgb
    )  # [B,4,h,w]
    eps_depth = depth_host.up(
        mid_depth + send_rgb_mid, [s + r for s, r in zip(skips_depth, send_rgb, strict=True)], s_depth
    )  # [B,4,h,w]
    return torch.cat([eps_rgb, eps_depth], dim=1)  # [B,8,h,w]


# ----------------------------------------------------------------------------------------------------------
# diffusers host and modules


@dataclass
class _DiffusersState:
    emb: torch.Tensor
    context: torch.Tensor
    upsample: bool  # sides not divisible by 2**num_upsamplers: pass explicit upsample sizes


class DiffusersUNetHost:
    """:class:`UNetHost` over a diffusers ``UNet2DConditionModel``, using its submodules (no subclassing)."""

    def __init__(self, unet: nn.Module):
        check_unet_config(unet.config, type(unet).__name__)
        self.unet = unet

    def embed(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> _DiffusersState:
        u = self.unet
        t = torch.as_tensor(timestep, device=x.device)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)  # [B]
        t_emb = u.time_proj(t).to(dtype=x.dtype)  # the sinusoidal projection returns fp32
        emb = u.time_embedding(t_emb, None)  # [B,4·C0]
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        up_factor = 2**u.num_upsamplers
        return _DiffusersState(emb, context, any(s % up_factor for s in x.shape[-2:]))

    def conv_in(self, x: torch.Tensor, state: _DiffusersState) -> torch.Tensor:
        if self.unet.config.center_input_sample:
            x = 2 * x - 1.0
        return self.unet.conv_in(x)

    def down_mid(self, h: torch.Tensor, state: _DiffusersState) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = [h]
        for block in self.unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=state.emb, encoder_hidden_states=state.context)
            else:
                h, res = block(hidden_states=h, temb=state.emb)
            skips.extend(res)
        mid = self.unet.mid_block(h, state.emb, encoder_hidden_states=state.context)
        return skips, mid

    def up(self, mid: torch.Tensor, skips: list[torch.Tensor], state: _DiffusersState) -> torch.Tensor:
        u, h, skips = self.unet, mid, list(skips)
        for i, block in enumerate(u.up_blocks):
            res = tuple(skips[-len(block.resnets) :])
            skips = skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if state.upsample and i < len(u.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                h = block(
                    hidden_states=h,
                    temb=state.emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=state.context,
                    upsample_size=size,
                )
            else:
                h = block(hidden_states=h, temb=state.emb, res_hidden_states_tuple=res, upsample_size=size)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


class JointNetBranch(nn.Module):
    """One branch: a diffusers UNet and its exchange layers, registered so the state-dict keys are the official
    ones (``conv_in.weight``, …, ``jointnet_down_blocks.0.weight``, …). ``.unet`` is the plain UNet, callable alone."""

    def __init__(self, unet: nn.Module, exchange: ExchangeLayers):
        super().__init__()
        if list(unet.named_parameters(recurse=False)) or list(unet.named_buffers(recurse=False)):
            raise TypeError(f"{type(unet).__name__} holds tensors outside its submodules; cannot wrap it.")
        object.__setattr__(self, "unet", unet)  # not registered: its children are, under their own names
        object.__setattr__(self, "exchange", exchange)
        for name, child in unet.named_children():
            self.add_module(name, child)
        for name, child in exchange.named_children():
            self.add_module(name, child)
        self.host = DiffusersUNetHost(unet)

    @property
    def has_masked_latent_input(self) -> bool:
        return self.exchange.jointnet_masked_latent_conv is not None


class JointNetRGBD(nn.Module):
    """The two-branch JointNet: ``forward(z [B,8,h,w], t, text) -> ε [B,8,h,w]`` (RGB channels 0-3, depth 4-7)."""

    def __init__(self, rgb: JointNetBranch, depth: JointNetBranch):
        super().__init__()
        if rgb.has_masked_latent_input != depth.has_masked_latent_input:
            raise ValueError("Both JointNet branches must come from one model folder (masked-latent conv differs).")
        if rgb.unet.config.in_channels != depth.unet.config.in_channels:
            raise ValueError("The two JointNet branches take different latent channel counts.")
        self.rgb = rgb
        self.depth = depth

    @property
    def latent_channels(self) -> int:
        return int(self.rgb.unet.config.in_channels)

    @property
    def has_masked_latent_input(self) -> bool:
        return self.rgb.has_masked_latent_input

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        masked_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.latent_channels
        check_joint_latent(sample, c, "sample")
        return joint_forward(
            (self.rgb.host, self.rgb.exchange),
            (self.depth.host, self.depth.exchange),
            sample[:, :c],
            sample[:, c:],
            torch.as_tensor(timestep),
            encoder_hidden_states,
            masked_condition,
        )


def check_joint_latent(x: torch.Tensor, channels: int = 4, name: str = "latent") -> None:
    """A clear error for a latent that is not the 8-channel RGB-D latent (e.g. a plain 4-channel SD latent)."""
    if x.ndim != 4 or x.shape[1] != 2 * channels:
        got = f"{x.shape[1]}-channel" if x.ndim == 4 else f"{x.ndim}-D"
        raise ValueError(
            f"JointNet denoises an {2 * channels}-channel RGB-D latent (RGB {channels} + depth {channels}); "
            f"{name} is a {got} latent of shape {tuple(x.shape)}. Join an RGB and a depth latent first "
            "(UniDense Join RGB-D Latents / join_rgbd), or start from an empty latent."
        )


# ----------------------------------------------------------------------------------------------------------
# Official folders


@dataclass
class BranchFiles:
    """One official subfolder read from disk: its config, UNet tensors and ``jointnet_*`` tensors (torch only)."""

    name: str  # "unet" (RGB) or "jointnet" (depth)
    config: dict
    unet_state_dict: dict[str, torch.Tensor]
    exchange_state_dict: dict[str, torch.Tensor]
    exchange_config: ExchangeConfig
    weights_file: str

    def unet_config(self) -> dict:
        """The config as plain diffusers ``UNet2DConditionModel`` kwargs (JointNet-only keys removed)."""
        return {k: v for k, v in self.config.items() if not k.startswith("_") and k not in JOINTNET_CONFIG_KEYS}

    def release(self) -> None:
        """Drop this branch's tensors once they are in a module, so a cast copy or the file's mapping is not kept
        alive beside the module's weights (loaders call it branch by branch)."""
        self.unet_state_dict, self.exchange_state_dict = {}, {}


@dataclass
class JointNetFiles:
    folder: str
    rgb: BranchFiles
    depth: BranchFiles

    @property
    def has_masked_latent_input(self) -> bool:
        return self.rgb.exchange_config.has_masked_latent_input


def split_branch_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(UNet tensors, ``jointnet_*`` exchange tensors) of one official branch file."""
    unet = {k: v for k, v in sd.items() if not k.startswith(JOINTNET_PREFIX)}
    exchange = {k: v for k, v in sd.items() if k.startswith(JOINTNET_PREFIX)}
    return unet, exchange


def find_jointnet_folder(path: str | os.PathLike) -> str:
    """The folder holding ``unet/`` and ``jointnet/``: ``path`` itself or its single sub-folder (zip layout)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"JointNet folder not found: '{path}'. " + JOINTNET_SOURCE_HINT)
    present = [b for b in BRANCHES if os.path.isdir(os.path.join(path, b))]
    if len(present) == len(BRANCHES):
        return path
    subs = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
    nested = [d for d in subs if all(os.path.isdir(os.path.join(path, d, b)) for b in BRANCHES)]
    if not present and len(nested) == 1:
        return os.path.join(path, nested[0])
    missing = [b for b in BRANCHES if b not in present]
    raise CheckpointError(
        f"'{path}' is not a JointNet folder: it lacks {' and '.join(repr(m + '/') for m in missing)}. JointNet needs "
        "both branches: 'unet/' (RGB branch, fine-tuned; not SD2.1's own unet) and 'jointnet/' (depth branch). "
        + JOINTNET_SOURCE_HINT
    )


def read_branch(folder: str, name: str) -> BranchFiles:
    """Read and check one branch subfolder; errors name the file and say what is wrong."""
    sub = os.path.join(folder, name)
    config = load_json(os.path.join(sub, "config.json"))
    weights = find_weights_file(sub)
    check_unet_config(config, f"'{os.path.join(sub, 'config.json')}'")
    unet_sd, exchange_sd = split_branch_state_dict(load_state_dict(weights))
    if not exchange_sd:
        raise CheckpointError(
            f"'{weights}' has no 'jointnet_*' exchange weights: it is a plain UNet (for example SD2.1's own "
            f"unet), not a JointNet branch. Use the '{name}/' folder of a JointNet model. " + JOINTNET_SOURCE_HINT
        )
    if not unet_sd:
        raise CheckpointError(f"'{weights}' holds only 'jointnet_*' tensors; the UNet weights are missing.")
    cfg = ExchangeConfig.from_unet_config(config, f"'{sub}/config.json'")
    if "has_masked_latent_input" not in config:  # very old saves: let the weights tell
        masked = "jointnet_masked_latent_conv.weight" in exchange_sd
        cfg = replace(cfg, has_masked_latent_input=masked)
    check_state_dict(
        exchange_sd,
        cfg.expected_shapes(),
        f"The 'jointnet_*' tensors of '{weights}'",
        "config.json and weights must come from the same JointNet folder. " + JOINTNET_SOURCE_HINT,
    )
    return BranchFiles(name, config, unet_sd, exchange_sd, cfg, weights)


def read_jointnet_folder(path: str | os.PathLike) -> JointNetFiles:
    """Read an official JointNet folder (``unet/`` = RGB, ``jointnet/`` = depth) without building any model.

    The weights are memory-mapped (:func:`load_state_dict`), so both branches are checked here, before anything is
    built, at the cost of reading the keys only."""
    folder = find_jointnet_folder(path)
    rgb, depth = (read_branch(folder, b) for b in BRANCHES)
    if rgb.exchange_config.has_masked_latent_input != depth.exchange_config.has_masked_latent_input:
        raise CheckpointError(
            f"In '{folder}' only one branch has the masked-latent conv (has_masked_latent_input differs between "
            "unet/ and jointnet/); both subfolders must come from the same zip. " + JOINTNET_SOURCE_HINT
        )
    if rgb.exchange_config.in_channels != depth.exchange_config.joint_in_channels:
        raise CheckpointError(f"In '{folder}' the branches disagree on the latent channel count.")
    return JointNetFiles(folder, rgb, depth)


def build_branch(
    unet_config: Mapping[str, Any],
    exchange_config: ExchangeConfig,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    source: str = "JointNet branch",
) -> JointNetBranch:
    """A diffusers branch from its config; with ``state_dict`` (official keys) the weights are checked and loaded."""
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in unet_config.items() if not k.startswith("_") and k not in JOINTNET_CONFIG_KEYS}
    if state_dict is None:
        branch = JointNetBranch(UNet2DConditionModel(**cfg), ExchangeLayers(exchange_config))
        return branch.eval()
    with torch.device("meta"):
        branch = JointNetBranch(UNet2DConditionModel(**cfg), ExchangeLayers(exchange_config))
    expected = {k: tuple(v.shape) for k, v in branch.state_dict().items()}
    check_state_dict(state_dict, expected, source, JOINTNET_SOURCE_HINT)
    branch.load_state_dict(state_dict, strict=True, assign=True)
    return branch.eval().requires_grad_(False)


def load_jointnet(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> JointNetRGBD:
    """Load an official JointNet folder (diffusers modules; needs diffusers).

    One branch at a time: its modules take the file's tensors (no copy), are cast to ``dtype`` and moved to
    ``device``, then the branch's state dict is released, so at most one extra copy of one branch is alive.
    """
    files = read_jointnet_folder(path)
    dtype = dtype or next(iter(files.rgb.unet_state_dict.values())).dtype
    branches = []
    for b in (files.rgb, files.depth):
        sd = {**b.unet_state_dict, **b.exchange_state_dict}
        branch = build_branch(b.unet_config(), b.exchange_config, sd, f"'{b.weights_file}'")
        del sd
        b.release()
        branches.append(branch.to(device=device, dtype=dtype))
    return JointNetRGBD(*branches).eval()


def save_jointnet(model: JointNetRGBD, folder: str | os.PathLike, safe_serialization: bool = True) -> str:
    """Write the official layout (``unet/`` and ``jointnet/``, config.json + weights); ``.bin`` as 0.19.3 did."""
    folder = os.fspath(folder)
    for name, branch in zip(BRANCHES, (model.rgb, model.depth), strict=True):
        sub = os.path.join(folder, name)
        os.makedirs(sub, exist_ok=True)
        cfg = {
            "_class_name": "JointNetModel",
            "_diffusers_version": "0.19.3",
            **{
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in branch.unet.config.items()
                if not k.startswith("_")
            },
            "joint_in_channels": None,
            "has_masked_latent_input": branch.has_masked_latent_input,
        }
        with open(os.path.join(sub, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        sd = {k: v.detach().contiguous() for k, v in branch.state_dict().items()}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(sd, os.path.join(sub, "diffusion_pytorch_model.safetensors"))
        else:
            torch.save(sd, os.path.join(sub, "diffusion_pytorch_model.bin"))
    return folder
