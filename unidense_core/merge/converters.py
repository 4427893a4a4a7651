"""MERGE converter blocks (Lin et al., NeurIPS 2025, §3): the pluggable DiT blocks that turn PixArt-α into a
depth estimator, with the official diffusers key names so the released ``depth_converters`` load unchanged.

Pure torch: no diffusers import, so ComfyUI can use the same modules.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..io.checkpoints import (
    CheckpointError,
    check_finite_weights,
    check_state_dict,
    find_weights_file,
    load_json,
    load_state_dict,
    parse_json,
)
from .pos_embed import sincos_2d

logger = logging.getLogger(__name__)

CONVERTER_SOURCE_HINT = (
    "MERGE-B converters come from the Hugging Face repo 'hongk1998/merge-base-depth-v1', folder "
    "'depth_converters/' (config.json + diffusion_pytorch_model.safetensors)."
)


@dataclass(frozen=True)
class ConverterConfig:
    """Shape of a MERGE-B converter container (the official ``xTransformerModel(is_converter=True)``)."""

    num_layers: int = 14  # number of converter blocks = number of groups of base blocks
    num_attention_heads: int = 16  # PixArt-XL: 16 heads × 72
    attention_head_dim: int = 72
    in_channels: int = 8  # cat([image latent, noisy depth latent])
    out_channels: int = 8  # ε (4) + learned σ (4, discarded)
    patch_size: int = 2
    sample_size: int = 64  # latent side the sin-cos table is based on (512 px)
    interpolation_scale: float | None = None  # None -> max(sample_size // 64, 1), as diffusers
    ff_mult: int = 1  # converters use a 1×-wide FFN (PixArt blocks use 4×)
    norm_eps: float = 1e-6

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def pos_interpolation_scale(self) -> float:
        if self.interpolation_scale is not None:
            return float(self.interpolation_scale)
        return float(max(self.sample_size // 64, 1))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ConverterConfig:
        """Read the official config.json, refusing configs of other models with a message that says what it is."""
        class_name = str(data.get("_class_name") or "")
        if data.get("merge_flux_transformer") or "Flux" in class_name:
            raise CheckpointError(
                f"{source} describes MERGE-L converters for FLUX.1-dev; this loader takes MERGE-B (PixArt-α) "
                "converters. Load MERGE-L ones with `merge.flux_converters.load_flux_converters` (or "
                "`merge.variants.load_merge_converters`, which takes either)."
            )
        if data.get("is_converter") is False or data.get("caption_channels"):
            raise CheckpointError(
                f"{source} is a full PixArt transformer config, not a converter container "
                "(is_converter is false / caption_channels set). Point to the 'depth_converters' folder instead."
            )
        if data.get("cross_attention_dim") is not None:
            raise CheckpointError(f"{source}: converters have no cross-attention, but cross_attention_dim is set.")
        for key, supported in (("norm_type", "ada_norm_single"), ("activation_fn", "gelu-approximate")):
            if data.get(key, supported) != supported:
                raise CheckpointError(f"{source}: {key}={data[key]!r} is not supported; MERGE-B uses {supported!r}.")
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Types and ranges of every field (a config.json can hold anything), before anything is built from it."""

        def bad(key: str, want: str) -> CheckpointError:
            return CheckpointError(
                f"{source}: {key} must be {want}, got {getattr(self, key)!r}. The config is damaged or belongs to "
                "another model; use the original config.json. " + CONVERTER_SOURCE_HINT
            )

        for key in ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "sample_size", "ff_mult"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, "a positive integer")
        if self.in_channels != 8:  # cat([image latent, noisy depth latent]) of PixArt-α's 4-channel latents
            raise bad("in_channels", "8 (image latent + depth latent, 4 channels each)")
        if not isinstance(self.out_channels, int) or isinstance(self.out_channels, bool) or self.out_channels < 4:
            raise bad("out_channels", "an integer ≥ 4 (ε of the 4 latent channels, plus the learned σ)")
        for key, optional in (("norm_eps", False), ("interpolation_scale", True)):
            value = getattr(self, key)
            if optional and value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise bad(key, "a positive number" + (" or null" if optional else ""))

    def check_file(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Cheap checks of the config against the file's keys, before expected_shapes() lists num_layers blocks."""
        blocks = {k.split(".")[1] for k in state_dict if k.startswith("transformer_blocks.") and k.count(".") >= 2}
        if self.num_layers != len(blocks):
            raise CheckpointError(
                f"{source}: the config says num_layers={self.num_layers}, but the file holds {len(blocks)} converter "
                "blocks. Use the config.json that came with these weights. " + CONVERTER_SOURCE_HINT
            )
        table = state_dict.get("scale_shift_table")
        if table is not None and tuple(table.shape[-1:]) != (self.hidden_size,):
            raise CheckpointError(
                f"{source}: the config gives width {self.num_attention_heads} × {self.attention_head_dim} = "
                f"{self.hidden_size}, but the file's scale_shift_table is {tuple(table.shape)}. Use the config.json "
                "that came with these weights. " + CONVERTER_SOURCE_HINT
            )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the official state dict with its shape (187 tensors for MERGE-B)."""
        d, p = self.hidden_size, self.patch_size
        inner = d * self.ff_mult
        shapes: dict[str, tuple[int, ...]] = {
            "scale_shift_table": (2, d),
            "pos_embed.proj.weight": (d, self.in_channels, p, p),
            "pos_embed.proj.bias": (d,),
            "proj_out.weight": (p * p * self.out_channels, d),
            "proj_out.bias": (p * p * self.out_channels,),
        }
        for i in range(self.num_layers):
            b = f"transformer_blocks.{i}."
            shapes[b + "scale_shift_table"] = (6, d)
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                shapes[b + f"attn1.{name}.weight"] = (d, d)
                shapes[b + f"attn1.{name}.bias"] = (d,)
            shapes[b + "ff.net.0.proj.weight"] = (inner, d)
            shapes[b + "ff.net.0.proj.bias"] = (inner,)
            shapes[b + "ff.net.2.weight"] = (d, inner)
            shapes[b + "ff.net.2.bias"] = (d,)
        return shapes


class SelfAttention(nn.Module):
    """Multi-head self-attention with diffusers' ``Attention`` names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [B,heads,N,hd]
        out = out.transpose(1, 2).reshape(b, n, d)  # [B,N,D]
        return self.to_out[1](self.to_out[0](out))


class GeluProj(nn.Module):
    """Linear then tanh-GELU, named ``proj`` like diffusers' ``GELU`` activation module."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``net = [GELU proj, dropout, linear]`` as diffusers' ``FeedForward`` (keys ff.net.0.proj, ff.net.2)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class ConverterBlock(nn.Module):
    """A PixArt block without cross-attention (adaLN-single, self-attention, 1×-wide FFN), as MERGE's converter."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 1, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.attn1 = SelfAttention(dim, heads)
        self.ff = FeedForward(dim, dim * ff_mult)

    def forward(self, h: torch.Tensor, t6: torch.Tensor) -> torch.Tensor:
        """h: [B,N,D] tokens; t6: [B,6D] the base model's adaLN-single timestep modulation."""
        b, _, d = h.shape
        mods = (self.scale_shift_table[None] + t6.reshape(b, 6, d)).chunk(6, dim=1)  # 6 × [B,1,D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = F.layer_norm(h, (d,), eps=self.eps) * (1 + scale_msa) + shift_msa  # [B,N,D]
        h = h + gate_msa * self.attn1(x)
        x = F.layer_norm(h, (d,), eps=self.eps) * (1 + scale_mlp) + shift_mlp
        h = h + gate_mlp * self.ff(x)
        return h.clip(-65504, 65504)  # the official block's fp16 guard; a no-op in fp32


class ConverterPatchEmbed(nn.Module):
    """8-channel 2×2 patch embedding plus the fixed sin-cos table, recomputed for each latent size."""

    def __init__(self, cfg: ConverterConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.base_size = cfg.sample_size // cfg.patch_size
        self.interpolation_scale = cfg.pos_interpolation_scale
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self._table: dict[tuple, torch.Tensor] = {}

    def position_table(self, gh: int, gw: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (gh, gw, device, dtype)
        if key not in self._table:
            emb = sincos_2d(self.proj.out_channels, gh, gw, self.base_size, self.interpolation_scale, device)
            self._table = {key: emb.to(dtype)[None]}  # keep one size: sizes rarely change within a run
        return self._table[key]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        h = self.proj(x).flatten(2).transpose(1, 2)  # [B,N,D]
        return h + self.position_table(gh, gw, h.device, h.dtype), (gh, gw)


class MergeConverters(nn.Module):
    """The converter container: patch embedding, one block per group, and the depth read-out head."""

    def __init__(self, cfg: ConverterConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        self.pos_embed = ConverterPatchEmbed(cfg)
        self.transformer_blocks = nn.ModuleList(
            ConverterBlock(d, cfg.num_attention_heads, cfg.ff_mult, cfg.norm_eps) for _ in range(cfg.num_layers)
        )
        self.scale_shift_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.proj_out = nn.Linear(d, cfg.patch_size**2 * cfg.out_channels)

    @property
    def num_groups(self) -> int:
        return self.config.num_layers

    def head(self, h: torch.Tensor, t_emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens [B,N,D] -> latent [B,out,H,W] through the converter's own adaLN head and unpatchify."""
        b, _, d = h.shape
        p, c = self.config.patch_size, self.config.out_channels
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # [B,1,D] each
        h = F.layer_norm(h, (d,), eps=1e-6) * (1 + scale) + shift
        h = self.proj_out(h).reshape(b, grid[0], grid[1], p, p, c)  # [B,h,w,p,p,C]
        return torch.einsum("nhwpqc->nchpwq", h).reshape(b, c, grid[0] * p, grid[1] * p)  # [B,C,H,W]


def infer_config(state_dict: dict[str, torch.Tensor], source: str) -> ConverterConfig:
    """Derive the config of a bare converter state dict (no config.json beside it)."""
    detect_foreign_layout(state_dict, source)
    try:
        d = state_dict["scale_shift_table"].shape[1]
        w = state_dict["pos_embed.proj.weight"]
        ff = state_dict["transformer_blocks.0.ff.net.0.proj.weight"]
        out = state_dict["proj_out.weight"].shape[0]
        p, in_channels, inner = w.shape[-1], w.shape[1], ff.shape[0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source} is not a MERGE converter file: key {exc} is missing. " + CONVERTER_SOURCE_HINT
        ) from exc
    except IndexError as exc:
        raise CheckpointError(
            f"{source} is not a MERGE converter file: a tensor has too few dimensions. " + CONVERTER_SOURCE_HINT
        ) from exc
    if d < 1 or d % 72 != 0 or p < 1:
        raise CheckpointError(
            f"{source}: hidden size {d} is not a PixArt width (multiple of 72), so the head count cannot be "
            "derived. Put the converter's config.json beside the file."
        )
    n_blocks = len({k.split(".")[1] for k in state_dict if k.startswith("transformer_blocks.") and k.count(".") >= 2})
    cfg = ConverterConfig(
        num_layers=n_blocks,
        num_attention_heads=d // 72,
        attention_head_dim=72,
        in_channels=in_channels,
        out_channels=out // (p * p),
        patch_size=p,
        ff_mult=inner // d,
    )
    cfg.validate(source)
    return cfg


def detect_foreign_layout(state_dict: dict, source: str) -> None:
    """Name the model a state dict belongs to when it is not a MERGE-B converter container."""
    keys = state_dict.keys()
    if any(k.startswith(("x_embedder.", "single_transformer_blocks")) for k in keys):
        raise CheckpointError(
            f"{source} holds MERGE-L (FLUX.1-dev) converters; this loader takes MERGE-B (PixArt-α 512). Load them "
            "with `merge.flux_converters.load_flux_converters` (or `merge.variants.load_merge_converters`)."
        )
    if any(k.startswith(("adaln_single.", "caption_projection.", "t_block.", "y_embedder.")) for k in keys):
        raise CheckpointError(
            f"{source} is a full PixArt transformer, not converters. Load it with ComfyUI's UNETLoader and pick the "
            "converter file here. " + CONVERTER_SOURCE_HINT
        )
    if any(k.startswith(("down_blocks.", "input_blocks.", "model.diffusion_model.")) for k in keys):
        raise CheckpointError(f"{source} is a UNet checkpoint, not MERGE converters. " + CONVERTER_SOURCE_HINT)


def _resolve(path: str) -> tuple[str, dict | None]:
    """(weights file, config dict or None) for a converter folder, a repo root, or a single file."""
    if os.path.isdir(path):
        folder = path
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(
            os.path.join(folder, "depth_converters")
        ):
            folder = os.path.join(folder, "depth_converters")
        return find_weights_file(folder), load_json(os.path.join(folder, "config.json"))
    if not os.path.isfile(path):
        raise CheckpointError(f"Converter path not found: '{path}'. " + CONVERTER_SOURCE_HINT)
    sibling = os.path.join(os.path.dirname(path), "config.json")
    if os.path.isfile(sibling):
        return path, load_json(sibling)
    if path.endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # safetensors raises its own error type for broken headers
            raise CheckpointError(
                f"'{path}' is not a readable safetensors file ({exc}); it may be truncated. Download it again."
            ) from exc
        if "config" in meta:
            return path, parse_json(meta["config"], f"The 'config' metadata of '{path}'")
    return path, None


def load_converters(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MergeConverters:
    """Load official MERGE-B converters from a ``depth_converters`` folder, a repo root, or one safetensors file."""
    path = os.fspath(path)
    weights, cfg_dict = _resolve(path)
    sd = load_state_dict(weights)
    detect_foreign_layout(sd, f"'{weights}'")
    cfg = ConverterConfig.from_dict(cfg_dict, f"'{path}'") if cfg_dict is not None else infer_config(sd, f"'{weights}'")
    cfg.check_file(sd, f"Converter file '{weights}'")  # before expected_shapes() lists cfg.num_layers blocks
    check_state_dict(sd, cfg.expected_shapes(), f"Converter file '{weights}'", CONVERTER_SOURCE_HINT)
    check_finite_weights(sd, f"Converter file '{weights}'")
    with torch.device("meta"):
        model = MergeConverters(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.pos_embed._table = {}
    return model.to(device=device, dtype=dtype or next(iter(sd.values())).dtype).eval().requires_grad_(False)


def save_converters(model: MergeConverters, folder: str | os.PathLike) -> str:
    """Write the official folder layout (config.json + diffusion_pytorch_model.safetensors)."""
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = {
        "_class_name": "xTransformerModel",
        "is_converter": True,
        "cross_attention_dim": None,
        **asdict(model.config),
    }
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    out = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    return out
