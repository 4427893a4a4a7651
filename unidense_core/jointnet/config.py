"""Checks of a JointNet branch's ``config.json`` (diffusers ``UNet2DConditionModel`` kwargs, JointNet 0.19.3 saves).

A malformed or foreign config must fail here, with the file and the key named, instead of as a KeyError/TypeError in
a model constructor or, worse, as a model that loads and computes something else (Zhang et al., ICLR 2024: both
branches are SD2.1-base UNets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..io.checkpoints import CheckpointError

CONFIG_HINT = "config.json and the weights must come from the same official JointNet folder; unzip it again."
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
# Config keys whose non-default values this implementation does not handle (SD2.1 uses none of them).
UNSUPPORTED: dict[str, Any] = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "num_class_embeds": None,
    "dual_cross_attention": False,
}


def _positive_int(config: Mapping[str, Any], key: str, source: str, default: Any = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: '{key}' must be a positive integer, got {value!r}. {CONFIG_HINT}")
    return value


def _int_list(config: Mapping[str, Any], key: str, source: str, length: int | None = None) -> list[int]:
    value = config.get(key)
    ok = isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or not value or any(v < 1 for v in value) or (length is not None and len(value) != length):
        want = f"{length} positive integers" if length is not None else "a non-empty list of positive integers"
        raise CheckpointError(f"{source}: '{key}' must be {want}, got {value!r}. {CONFIG_HINT}")
    return [int(v) for v in value]


def _block_types(config: Mapping[str, Any], key: str, allowed: tuple[str, ...], n: int, source: str) -> list[str]:
    value = config.get(key)
    if not isinstance(value, list | tuple) or len(value) != n or any(v not in allowed for v in value):
        raise CheckpointError(
            f"{source}: '{key}' must list {n} blocks (one per entry of block_out_channels), each one of "
            f"{list(allowed)}; got {value!r}. JointNet's branches are SD2.1-base UNets. {CONFIG_HINT}"
        )
    return list(value)


def check_unet_config(config: Mapping[str, Any], source: str = "config") -> None:
    """Refuse UNet configs that are malformed or use features the split forward does not implement (SD2.1 uses
    none of them); every error names ``source`` and the key."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source} must hold a JSON object (a UNet config), got {type(config).__name__}.")
    for key, default in UNSUPPORTED.items():
        if config.get(key, default) not in (default, None):
            raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported; JointNet uses SD2.1-base UNets.")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise CheckpointError(f"{source}: mid_block_type={config['mid_block_type']!r} is not supported.")
    block_out = _int_list(config, "block_out_channels", source)
    n = len(block_out)
    _block_types(config, "down_block_types", DOWN_BLOCKS, n, source)
    _block_types(config, "up_block_types", UP_BLOCKS, n, source)
    if isinstance(config.get("layers_per_block", 2), list | tuple):
        raise CheckpointError(
            f"{source}: layers_per_block={config['layers_per_block']!r}; JointNet's exchange layers need one value "
            "for all levels."
        )
    _positive_int(config, "layers_per_block", source, 2)
    for key in ("in_channels", "out_channels"):
        _positive_int(config, key, source, 4)
    if "cross_attention_dim" not in config:
        raise CheckpointError(f"{source}: 'cross_attention_dim' is missing (1024 for SD2.1). {CONFIG_HINT}")
    _positive_int(config, "cross_attention_dim", source)
    for key in ("attention_head_dim", "num_attention_heads"):
        heads = config.get(key)
        if heads is not None and not isinstance(heads, list | tuple):
            _positive_int(config, key, source)
        elif heads is not None:
            _int_list(config, key, source, n)
    if config.get("transformer_layers_per_block", 1) != 1:
        raise CheckpointError(
            f"{source}: transformer_layers_per_block={config['transformer_layers_per_block']!r} is not supported "
            "(SD2.1: 1)."
        )
    groups = _positive_int(config, "norm_num_groups", source, 32)
    bad = [c for c in block_out if c % groups]
    if bad:
        raise CheckpointError(
            f"{source}: norm_num_groups={groups} does not divide the block channels {bad} of block_out_channels "
            f"{block_out}; GroupNorm needs channels that are multiples of it. {CONFIG_HINT}"
        )
    eps = config.get("norm_eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise CheckpointError(f"{source}: 'norm_eps' must be a small positive number, got {eps!r}. {CONFIG_HINT}")


def norm_settings(config: Mapping[str, Any]) -> tuple[int, float]:
    """(GroupNorm groups, eps of the ResNet/output norms) of a checked config (diffusers defaults 32, 1e-5)."""
    return int(config.get("norm_num_groups", 32)), float(config.get("norm_eps", 1e-5))
