"""MERGE-L converters (Lin et al., NeurIPS 2025, §3, FLUX.1-dev): FLUX single-stream blocks that run before the
frozen FLUX blocks, with the official diffusers key names so the released ``depth_converters`` load unchanged.

The container is the official ``xFluxTransformer2DModel(merge_flux_transformer=True, num_layers=0,
num_single_layers=G)``: a 128-input ``x_embedder`` (packed ``[noisy depth, image]``), G converters for the
double-block stage (``single_transformer_blocks_in_dual``, image tokens only), G for the single-block stage
(``single_transformer_blocks``, the joint sequence), and its own ``norm_out``/``proj_out`` head.
Pure torch: no diffusers import, so ComfyUI can use the same modules; attention (with the base model's RoPE) is
supplied by the host that runs the base model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.checkpoints import (
    CheckpointError,
    check_state_dict,
    find_weights_file,
    load_json,
    load_state_dict,
    safetensors_shapes,
)

logger = logging.getLogger(__name__)

FLUX_CONVERTER_SOURCE_HINT = (
    "MERGE-L converters come from the Hugging Face repo 'hongk1998/merge-large-depth-v1', folder "
    "'depth_converters/' (config.json + diffusion_pytorch_model.safetensors, bf16, 2.9 GB)."
)
FLUX_DEV_WIDTH = 3072  # FLUX.1 hidden size (24 heads × 128)
FLUX_DEV_BLOCKS = (19, 38)  # double, single: the official group split hard-codes these for full-width converters

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class FluxConverterConfig:
    """Shape of a MERGE-L converter container (the official ``xFluxTransformer2DModel`` config.json)."""

    num_single_layers: int = 5  # number of groups: converters per stage (5 in the released model)
    num_attention_heads: int = 24  # FLUX.1: 24 heads × 128
    attention_head_dim: int = 128
    in_channels: int = 128  # packed cat([noisy depth latent, image latent]): 2 × 16 channels × 2×2 patch
    out_channels: int = 64  # packed velocity: 16 channels × 2×2
    patch_size: int = 1  # FLUX packs 2×2 patches before x_embedder; the transformer patch is 1
    mlp_ratio: float = 4.0  # FLUX single blocks: MLP 4× wide (not in the official config; fixed there too)
    # the base model's RoPE split: only kept for the saved config (RoPE comes from the base model at run time)
    axes_dims_rope: tuple[int, ...] = field(default=(16, 56, 56), compare=False)
    guidance_embeds: bool = True  # FLUX.1-dev's guidance embedding (fed 0 in depth mode)

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FluxConverterConfig:
        """Read the official config.json, refusing other models' configs with a message that says what they are."""
        class_name = data.get("_class_name", "")
        if data.get("is_converter") or class_name == "xTransformerModel":
            raise CheckpointError(
                f"{source} describes MERGE-B converters (PixArt-α 512), not MERGE-L (FLUX.1-dev). Use them with "
                "PixArt-XL-2-512x512, or get the FLUX ones: " + FLUX_CONVERTER_SOURCE_HINT
            )
        if not data.get("merge_flux_transformer"):
            raise CheckpointError(
                f"{source} is a full FLUX transformer config ({class_name or 'no _class_name'}, "
                "merge_flux_transformer not set), not a MERGE-L converter container. Load the FLUX model with "
                "ComfyUI's 'Load Diffusion Model' and point here to the converters. " + FLUX_CONVERTER_SOURCE_HINT
            )
        if data.get("num_layers", 0) != 0:
            raise CheckpointError(f"{source}: num_layers={data['num_layers']}; MERGE-L converter containers have 0.")
        if data.get("patch_size", 1) != 1:
            raise CheckpointError(f"{source}: patch_size={data['patch_size']}; MERGE-L converters use 1 (packed).")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names and v is not None}
        if "axes_dims_rope" in kw:
            kw["axes_dims_rope"] = tuple(kw["axes_dims_rope"])
        if data.get("out_channels") is None and "in_channels" in kw:
            kw["out_channels"] = kw["in_channels"]  # the official class: out_channels or in_channels
        ints = ("num_single_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels")
        bad = [k for k in ints if k in kw and (not isinstance(kw[k], int) or isinstance(kw[k], bool))]
        if bad:
            raise CheckpointError(f"{source}: {', '.join(bad)} must be integers, got {[kw[k] for k in bad]}.")
        cfg = cls(**kw)
        if cfg.in_channels != 2 * cfg.out_channels:
            raise CheckpointError(
                f"{source}: in_channels={cfg.in_channels}, out_channels={cfg.out_channels}; MERGE-L converters take "
                "[noisy depth, image] and return the depth velocity, so in_channels must be 2 × out_channels."
            )
        if cfg.num_single_layers < 1:
            raise CheckpointError(f"{source}: num_single_layers={cfg.num_single_layers}; it must be at least 1.")
        return cfg

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the official state dict with its shape (146 tensors for the released MERGE-L)."""
        d, hd, mlp = self.hidden_size, self.attention_head_dim, self.mlp_hidden
        shapes: dict[str, tuple[int, ...]] = {
            "x_embedder.weight": (d, self.in_channels),
            "x_embedder.bias": (d,),
            "norm_out.linear.weight": (2 * d, d),
            "norm_out.linear.bias": (2 * d,),
            "proj_out.weight": (self.patch_size**2 * self.out_channels, d),
            "proj_out.bias": (self.patch_size**2 * self.out_channels,),
        }
        for stage in ("single_transformer_blocks_in_dual", "single_transformer_blocks"):
            for i in range(self.num_single_layers):
                b = f"{stage}.{i}."
                shapes[b + "norm.linear.weight"] = (3 * d, d)
                shapes[b + "norm.linear.bias"] = (3 * d,)
                shapes[b + "proj_mlp.weight"] = (mlp, d)
                shapes[b + "proj_mlp.bias"] = (mlp,)
                shapes[b + "proj_out.weight"] = (d, d + mlp)
                shapes[b + "proj_out.bias"] = (d,)
                shapes[b + "attn.norm_q.weight"] = (hd,)
                shapes[b + "attn.norm_k.weight"] = (hd,)
                for name in ("to_q", "to_k", "to_v"):
                    shapes[b + f"attn.{name}.weight"] = (d, d)
                    shapes[b + f"attn.{name}.bias"] = (d,)
        return shapes

    def to_official_dict(self) -> dict:
        """The config.json the official ``save_pretrained`` writes (our fields plus the class markers)."""
        data = asdict(self)
        data.pop("mlp_ratio")
        data["axes_dims_rope"] = list(self.axes_dims_rope)
        return {
            "_class_name": "xFluxTransformer2DModel",
            "merge_flux_transformer": True,
            "merge_dual_rotary_emb_type": False,
            "num_layers": 0,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            **data,
        }


class _AdaNorm(nn.Module):
    """Holds ``linear`` as diffusers' AdaLayerNormZeroSingle / AdaLayerNormContinuous do (keys ``*.linear.*``)."""

    def __init__(self, dim: int, chunks: int, ops=nn):
        super().__init__()
        self.linear = ops.Linear(dim, chunks * dim)


class _QKV(nn.Module):
    """``attn.to_q/k/v`` and the RMS q/k norms of diffusers' pre-only ``FluxAttention`` (no output projection)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ops=nn):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm_q = ops.RMSNorm(head_dim, eps=1e-6)
        self.norm_k = ops.RMSNorm(head_dim, eps=1e-6)
        self.to_q = ops.Linear(dim, heads * head_dim)
        self.to_k = ops.Linear(dim, heads * head_dim)
        self.to_v = ops.Linear(dim, heads * head_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,S,D] -> q, k, v [B,H,S,hd] (q and k RMS-normalised)."""
        q, k, v = (
            p(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v)
        )
        return self.norm_q(q), self.norm_k(k), v


class FluxConverterBlock(nn.Module):
    """A FLUX single-stream block (diffusers ``FluxSingleTransformerBlock`` keys); the host supplies the attention.

    ``ops`` provides ``Linear`` and ``RMSNorm`` (``torch.nn`` by default; ComfyUI passes its casting ops so that
    low-VRAM partial loading can stream the weights).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0, ops=nn):
        super().__init__()
        mlp = int(dim * mlp_ratio)
        self.norm = _AdaNorm(dim, 3, ops)
        self.proj_mlp = ops.Linear(dim, mlp)
        self.proj_out = ops.Linear(dim + mlp, dim)
        self.attn = _QKV(dim, heads, head_dim, ops)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, rope: Any, attention: Attention) -> torch.Tensor:
        """x [B,S,D] tokens, temb [B,D] the base model's conditioning vector, rope in the host's own form."""
        shift, scale, gate = self.norm.linear(F.silu(temb)).chunk(3, dim=1)  # 3 × [B,D]
        n = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]  # [B,S,D]
        mlp = F.gelu(self.proj_mlp(n), approximate="tanh")  # [B,S,mlp]
        a = attention(*self.attn(n), rope).to(x.dtype)  # [B,S,D]
        x = x + gate[:, None] * self.proj_out(torch.cat([a, mlp], dim=2))
        return x.clip(-65504, 65504) if x.dtype == torch.float16 else x  # the official fp16 guard


class MergeFluxConverters(nn.Module):
    """The MERGE-L converter container: input embedding, 2 × G converter blocks and the depth read-out head."""

    def __init__(self, cfg: FluxConverterConfig, operations=None):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        ops = nn if operations is None else operations  # a namespace with Linear and RMSNorm

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                FluxConverterBlock(d, cfg.num_attention_heads, cfg.attention_head_dim, cfg.mlp_ratio, ops)
                for _ in range(cfg.num_single_layers)
            )

        self.x_embedder = ops.Linear(cfg.in_channels, d)
        self.single_transformer_blocks_in_dual = blocks()
        self.single_transformer_blocks = blocks()
        self.norm_out = _AdaNorm(d, 2, ops)
        self.proj_out = ops.Linear(d, cfg.patch_size**2 * cfg.out_channels)

    @property
    def num_groups(self) -> int:
        return self.config.num_single_layers

    def head(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Image tokens [B,N,D] -> packed velocity [B,N,64] (diffusers AdaLayerNormContinuous: scale first)."""
        scale, shift = self.norm_out.linear(F.silu(temb).to(h.dtype)).chunk(2, dim=1)  # [B,D] each
        h = F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out(h)


# ----------------------------------------------------------------------------------------------------------
# Loading


def detect_foreign_flux_layout(keys, source: str) -> None:
    """Name the model a state dict belongs to when it is not a MERGE-L converter container."""
    keys = list(keys)
    if any(k.startswith(("pos_embed.proj.", "transformer_blocks.")) for k in keys) and not any(
        k.startswith("single_transformer_blocks_in_dual.") for k in keys
    ):
        if any(".attn1." in k for k in keys):
            raise CheckpointError(
                f"{source} holds MERGE-B converters (PixArt-α 512), not MERGE-L (FLUX.1-dev). Use them with "
                "PixArt-XL-2-512x512, or get the FLUX ones: " + FLUX_CONVERTER_SOURCE_HINT
            )
        raise CheckpointError(
            f"{source} is a full FLUX transformer (diffusers keys), not MERGE-L converters. Load it with ComfyUI's "
            "'Load Diffusion Model'. " + FLUX_CONVERTER_SOURCE_HINT
        )
    if any(k.startswith(("double_blocks.", "model.diffusion_model.", "img_in.", "time_in.")) for k in keys):
        raise CheckpointError(
            f"{source} is a FLUX model in the original (BFL/ComfyUI) layout, not MERGE-L converters. Load it with "
            "'Load Diffusion Model'. " + FLUX_CONVERTER_SOURCE_HINT
        )
    if any(".lora_" in k or "lora_down" in k or "lora_A" in k for k in keys):
        raise CheckpointError(f"{source} is a LoRA, not MERGE-L converters. " + FLUX_CONVERTER_SOURCE_HINT)


def infer_flux_config(shapes: dict[str, tuple[int, ...]], source: str) -> FluxConverterConfig:
    """Derive the config of a bare MERGE-L converter file (no config.json beside it) from its tensor shapes."""
    detect_foreign_flux_layout(shapes, source)
    try:
        d, cin = shapes["x_embedder.weight"]
        hd = shapes["single_transformer_blocks.0.attn.norm_q.weight"][0]
        mlp = shapes["single_transformer_blocks.0.proj_mlp.weight"][0]
        out = shapes["proj_out.weight"][0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source} is not a MERGE-L converter file: key {exc} is missing. " + FLUX_CONVERTER_SOURCE_HINT
        ) from exc
    if d % hd:
        raise CheckpointError(f"{source}: width {d} is not a multiple of the head size {hd}.")
    groups = len({k.split(".")[1] for k in shapes if k.startswith("single_transformer_blocks.")})
    return FluxConverterConfig(
        num_single_layers=groups,
        num_attention_heads=d // hd,
        attention_head_dim=hd,
        in_channels=cin,
        out_channels=out,
        mlp_ratio=mlp / d,
    )


def resolve_converter_path(path: str, source_hint: str) -> tuple[str, dict | None]:
    """(weights file, config dict or None) for a ``depth_converters`` folder, a repo root, or a single file."""
    if os.path.isdir(path):
        folder = path
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(
            os.path.join(folder, "depth_converters")
        ):
            folder = os.path.join(folder, "depth_converters")
        return find_weights_file(folder), load_json(os.path.join(folder, "config.json"))
    if not os.path.isfile(path):
        raise CheckpointError(f"Converter path not found: '{path}'. " + source_hint)
    sibling = os.path.join(os.path.dirname(path), "config.json")
    return path, (load_json(sibling) if os.path.isfile(sibling) else None)


def inspect_flux_converters(path: str | os.PathLike) -> tuple[str, FluxConverterConfig]:
    """Check an official MERGE-L converter file without reading its weights: config, keys and shapes.

    Returns (weights file, config). Everything is checked from the config and the safetensors header, so a wrong
    or truncated 2.9 GB file is refused before anything is allocated.
    """
    path = os.fspath(path)
    weights, cfg_dict = resolve_converter_path(path, FLUX_CONVERTER_SOURCE_HINT)
    if not weights.endswith((".safetensors", ".sft")):
        sd = load_state_dict(weights)  # a pickle has no header: it is read (weights only) to be checked
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
    else:
        shapes = safetensors_shapes(weights)
    detect_foreign_flux_layout(shapes, f"'{weights}'")
    cfg = FluxConverterConfig.from_dict(cfg_dict, f"'{path}'") if cfg_dict else infer_flux_config(shapes, weights)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    check_state_dict(meta, cfg.expected_shapes(), f"Converter file '{weights}'", FLUX_CONVERTER_SOURCE_HINT)
    return weights, cfg


def load_flux_converters(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    operations=None,
) -> MergeFluxConverters:
    """Load official MERGE-L converters (a ``depth_converters`` folder, a repo root or one safetensors file).

    ``operations``: the Linear/RMSNorm classes to build with (default ``torch.nn``), e.g. ComfyUI's ``comfy.ops``.
    """
    weights, cfg = inspect_flux_converters(path)
    sd = load_state_dict(weights)
    bad = [k for k, v in sd.items() if not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"'{weights}': tensors {bad[:3]} are not floating point; the file is not converters.")
    with torch.device("meta"):
        model = MergeFluxConverters(cfg, operations)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype or next(iter(sd.values())).dtype).eval().requires_grad_(False)


def save_flux_converters(model: MergeFluxConverters, folder: str | os.PathLike) -> str:
    """Write the official folder layout (config.json + diffusion_pytorch_model.safetensors)."""
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model.config.to_official_dict(), f, indent=2)
    out = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    return out
