"""LoRA weights for SD UNets: read the official DMP checkpoints unchanged, check them against a UNet, apply them.

Accepted layouts (all keyed by diffusers ``UNet2DConditionModel`` module names):

* diffusers attention-processor LoRA, as DMP saves it with ``unet.save_attn_procs`` (diffusers 0.20):
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`` [r, in] / ``.up.weight``
  [out, r], for ``to_q, to_k, to_v, to_out`` (-> ``to_out.0``); no alpha, so the scale is 1.0.
* peft / diffusers ≥ 0.26: ``[unet.|base_model.model.]<module>.lora_A[.default].weight`` / ``lora_B``; the scale is
  ``lora_alpha / r`` from ``adapter_config.json`` (or the safetensors ``lora_adapter_metadata``), else 1.0.
* diffusers 0.21-0.25 ``LoRACompatibleLinear``: ``[unet.]<module>.lora.down.weight`` / ``.lora.up.weight``.
* an optional ``<module>.alpha`` tensor next to any of them (kohya/ComfyUI convention): scale = alpha / rank.

A folder (the official checkpoints are folders) is read through ``pytorch_lora_weights.safetensors``, then
``.bin``, then peft's ``adapter_model.safetensors`` / ``.bin``. ``.bin`` files are loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..io.checkpoints import CheckpointError, _fmt, check_finite_weights, load_json, load_state_dict, parse_json

logger = logging.getLogger(__name__)

LORA_FILE_NAMES = (
    "pytorch_lora_weights.safetensors",
    "pytorch_lora_weights.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_PREFIX = r"(?:unet\.base_model\.model\.|base_model\.model\.|unet\.)?"
_ATTN_PROC = re.compile(
    _PREFIX + r"(?P<mod>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<kind>down|up)\.weight"
)
_PEFT = re.compile(_PREFIX + r"(?P<mod>.+)\.(?P<kind>lora_A|lora_B)(?:\.default)?\.weight")
_COMPAT = re.compile(_PREFIX + r"(?P<mod>.+)\.lora(?:_linear_layer)?\.(?P<kind>down|up)\.weight")
_ALPHA = re.compile(_PREFIX + r"(?P<mod>.+)\.alpha")
_OTHER_MODELS = ("text_encoder.", "text_encoder_2.", "lora_te", "te_", "transformer.")

SD1_HINT = (
    "DMP checkpoints are LoRAs for Stable Diffusion 1.x (trained on SD 1.4, 768-wide cross-attention); "
    "a LoRA for SD 2.x has 1024-wide cross-attention and one for SDXL a different block layout."
)


@dataclass(frozen=True)
class LoraModule:
    """One low-rank update ΔW = scale · up @ down of a Linear (or Conv2d) weight."""

    down: torch.Tensor  # [r, in] (conv: [r, in, kh, kw])
    up: torch.Tensor  # [out, r] (conv: [out, r, 1, 1])
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA keyed by diffusers UNet module names (``...attn1.to_q``, ``...attn1.to_out.0``)."""

    modules: dict[str, LoraModule]
    source: str
    layout: str  # "attn_processor" | "peft" | "lora_compatible" | "mixed"

    @property
    def num_parameters(self) -> int:
        return sum(m.down.numel() + m.up.numel() for m in self.modules.values())

    def comfy_state_dict(self) -> dict[str, torch.Tensor]:
        """The same LoRA in the layout ComfyUI's LoRA adapter reads: ``<name>.lora_up/.lora_down.weight`` and
        ``<name>.alpha`` = scale · rank (ComfyUI applies alpha / rank)."""
        out = {}
        for name, m in self.modules.items():
            out[f"{name}.lora_up.weight"] = m.up
            out[f"{name}.lora_down.weight"] = m.down
            out[f"{name}.alpha"] = torch.tensor(m.scale * m.rank, dtype=torch.float32)
        return out


# ----------------------------------------------------------------------------------------------------------
# Reading


def resolve_lora_file(path: str | os.PathLike) -> str:
    """A LoRA file, or the weights file inside a LoRA folder (the official DMP checkpoints are folders)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in LORA_FILE_NAMES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(
            f"No LoRA weights in folder '{path}': expected one of {', '.join(LORA_FILE_NAMES)} "
            "(the official DMP checkpoint folders hold pytorch_lora_weights.safetensors or .bin)."
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"LoRA file not found: '{path}'.")
    return path


# A plain module name or name suffix ("to_q", "attn1.to_q", "down_blocks.0.attentions.0..."): our own linear-time
# pattern. Pattern keys taken from a file are never compiled as regular expressions (see _pattern_value).
_MODULE_NAME = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


@dataclass(frozen=True)
class PeftConfig:
    """The peft hyper-parameters that set a LoRA's scale (``adapter_config.json``), checked when read."""

    r: int | None = None  # None: each module's own rank
    lora_alpha: float | None = None  # None: = r (scale 1)
    rank_pattern: dict[str, tuple[int, int]] = field(default_factory=dict)  # name or suffix -> (file order, rank)
    alpha_pattern: dict[str, tuple[int, float]] = field(default_factory=dict)  # name or suffix -> (order, alpha)
    use_rslora: bool = False


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_peft_config(data: Mapping, source: str) -> PeftConfig:
    """Check an adapter config's types and pattern keys; errors name ``source`` and the bad entry."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{source}: {what}. Restore the adapter config peft wrote with this LoRA (adapter_config.json beside "
            "adapter_model.safetensors); without one the scale comes from the file's alpha tensors, else 1.0."
        )

    r, alpha = data.get("r"), data.get("lora_alpha")
    if r is not None and not _positive_int(r):
        raise bad(f"'r' must be a positive integer, got {r!r}")
    if alpha is not None and not _finite_number(alpha):
        raise bad(f"'lora_alpha' must be a finite number, got {alpha!r}")
    rslora = data.get("use_rslora") or False
    if not isinstance(rslora, bool):
        raise bad(f"'use_rslora' must be true or false, got {rslora!r}")
    patterns = {}
    for key, ok, want in (
        ("rank_pattern", _positive_int, "a positive integer"),
        ("alpha_pattern", _finite_number, "a finite number"),
    ):
        table = data.get(key) or {}
        if not isinstance(table, Mapping):
            raise bad(f"'{key}' must be an object mapping module names to values, got {type(table).__name__}")
        for name, value in table.items():
            if not isinstance(name, str) or len(name) > 1000 or not _MODULE_NAME.fullmatch(name):
                raise bad(
                    f"'{key}' key {str(name)[:80]!r} is not a plain module name. UniDense matches these keys as module "
                    "names or name suffixes (e.g. 'attn1.to_q'), as peft does for plain names, and never runs a "
                    "regular expression taken from a file; replace it with the module names it stands for"
                )
            if not ok(value):
                raise bad(f"'{key}' value for '{name}' must be {want}, got {value!r}")
        patterns[key] = {name: (i, value) for i, (name, value) in enumerate(table.items())}
    return PeftConfig(r, alpha, patterns["rank_pattern"], patterns["alpha_pattern"], rslora)


def _adapter_config(file: str) -> PeftConfig | None:
    """peft hyper-parameters: adapter_config.json beside the file, else the safetensors LoRA metadata."""
    cfg_path = os.path.join(os.path.dirname(file), "adapter_config.json")
    if os.path.isfile(cfg_path):
        return read_peft_config(load_json(cfg_path), f"'{cfg_path}'")
    if file.endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        try:
            with safe_open(file, framework="pt") as f:
                raw = (f.metadata() or {}).get("lora_adapter_metadata")
        except Exception as exc:  # safetensors raises its own error type for broken headers
            raise CheckpointError(
                f"'{file}' is not a readable safetensors file ({exc}); it may be truncated. Download it again."
            ) from exc
        if raw:
            source = f"The 'lora_adapter_metadata' of '{file}'"
            meta = parse_json(raw, source)
            return read_peft_config({k.removeprefix("unet."): v for k, v in meta.items()}, source)
    return None


def _pattern_value(patterns: Mapping[str, tuple[int, float]], name: str) -> float | None:
    """peft's ``get_pattern_key`` for plain names: the first key (in file order) equal to ``name`` or to a suffix of
    it that starts after a dot. One dictionary look-up per suffix, so the time is bounded whatever the file holds."""
    parts = name.split(".")
    hits = [patterns[s] for s in (".".join(parts[i:]) for i in range(len(parts))) if s in patterns]
    return min(hits)[1] if hits else None


def _peft_scale(config: PeftConfig, name: str, rank: int) -> float:
    r = _pattern_value(config.rank_pattern, name)
    r = r if r is not None else (config.r if config.r is not None else rank)
    alpha = _pattern_value(config.alpha_pattern, name)
    alpha = alpha if alpha is not None else (config.lora_alpha if config.lora_alpha is not None else r)
    if r != rank:
        raise CheckpointError(f"adapter config says rank {r} for '{name}', but its weights have rank {rank}.")
    return float(alpha) / (math.sqrt(rank) if config.use_rslora else rank)


def parse_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "LoRA", config: PeftConfig | Mapping | None = None
) -> LoraWeights:
    """Group a LoRA state dict into :class:`LoraModule` s keyed by diffusers UNet module names.

    Every tensor must be floating point and finite, every rank ≥ 1 and every alpha one finite number: a LoRA holding
    a NaN would turn every output of the model NaN.
    """
    if config is not None and not isinstance(config, PeftConfig):
        config = read_peft_config(config, f"{source}: adapter config")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    layouts: set[str] = set()
    unknown, other_model = [], []
    for key, value in state_dict.items():
        if key.startswith(_OTHER_MODELS):
            other_model.append(key)
            continue
        if m := _ATTN_PROC.fullmatch(key):
            name = f"{m['mod']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
            kind, layout = m["kind"], "attn_processor"
        elif m := _PEFT.fullmatch(key):
            name, kind, layout = m["mod"], "down" if m["kind"] == "lora_A" else "up", "peft"
        elif m := _COMPAT.fullmatch(key):
            name, kind, layout = m["mod"], m["kind"], "lora_compatible"
        elif m := _ALPHA.fullmatch(key):
            if value.numel() != 1:
                raise CheckpointError(f"{source}: '{key}' must hold one number, got shape {tuple(value.shape)}.")
            alphas[m["mod"]] = float(value.float().item())
            if not math.isfinite(alphas[m["mod"]]):
                raise CheckpointError(f"{source}: '{key}' is {alphas[m['mod']]}; an alpha must be a finite number.")
            continue
        else:
            unknown.append(key)
            continue
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: '{key}' holds {value.dtype} values; LoRA weights are floating point.")
        if kind in pairs.setdefault(name, {}):
            raise CheckpointError(f"{source} holds two '{kind}' weights for module '{name}' (e.g. '{key}').")
        pairs[name][kind] = value
        layouts.add(layout)
    if other_model:
        raise CheckpointError(
            f"{source} has {len(other_model)} keys for another model than the UNet ({_fmt(other_model, 3)}); "
            "only UNet LoRAs are supported here (DMP trains the UNet only)."
        )
    if unknown:
        raise CheckpointError(
            f"{source} has {len(unknown)} keys in no supported LoRA layout ({_fmt(unknown, 3)}). Supported: the "
            "official DMP/diffusers attention-processor keys ('...attn1.processor.to_q_lora.down.weight'), peft "
            "keys ('...attn1.to_q.lora_A.weight') and '...to_q.lora.down.weight'. Kohya 'lora_unet_...' files load "
            "with ComfyUI's own LoraLoaderModelOnly."
        )
    if not pairs:
        raise CheckpointError(f"{source} holds no LoRA weights.")
    modules = {}
    for name, p in pairs.items():
        if set(p) != {"down", "up"}:
            raise CheckpointError(f"{source}: module '{name}' has only a '{next(iter(p))}' weight, not both.")
        down, up = p["down"], p["up"]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise CheckpointError(
                f"{source}: module '{name}' has down {tuple(down.shape)} and up {tuple(up.shape)}, "
                "which do not form a low-rank pair ([r, in] and [out, r])."
            )
        rank = int(down.shape[0])
        if rank < 1:
            raise CheckpointError(f"{source}: module '{name}' has rank 0 (down {tuple(down.shape)}): no update.")
        if name in alphas:
            scale = alphas.pop(name) / rank
        elif config is not None and "peft" in layouts:
            scale = _peft_scale(config, name, rank)
        else:
            scale = 1.0  # diffusers attn-processor LoRAs have no alpha (network_alpha None): official DMP scale
        modules[name] = LoraModule(down, up, scale)
    check_finite_weights(state_dict, source)
    if alphas:
        raise CheckpointError(f"{source} has alpha values without weights: {_fmt(sorted(alphas), 3)}.")
    if layouts == {"peft"} and config is None and not any(k.endswith(".alpha") for k in state_dict):
        logger.warning("%s: peft LoRA without adapter_config.json or alpha values; using scale 1.0.", source)
    layout = layouts.pop() if len(layouts) == 1 else "mixed"
    return LoraWeights(modules, source, layout)


def load_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA file or folder (official DMP checkpoint folders unchanged)."""
    file = resolve_lora_file(path)
    return parse_lora_state_dict(load_state_dict(file), f"LoRA '{file}'", _adapter_config(file))


def save_lora_attn_procs(lora: LoraWeights, folder: str | os.PathLike, safe: bool = True) -> str:
    """Write a LoRA in DMP's official layout (``save_attn_procs``): for tests and for converting peft LoRAs."""
    sd = {}
    for name, m in lora.modules.items():
        if m.scale != 1.0:
            raise ValueError(f"The attention-processor layout has no alpha; '{name}' has scale {m.scale}.")
        mod, proj = name.rsplit(".", 1) if not name.endswith(".to_out.0") else (name[: -len(".to_out.0")], "to_out")
        sd[f"{mod}.processor.{proj}_lora.down.weight"] = m.down.contiguous()
        sd[f"{mod}.processor.{proj}_lora.up.weight"] = m.up.contiguous()
    os.makedirs(folder, exist_ok=True)
    if safe:
        from safetensors.torch import save_file

        path = os.path.join(os.fspath(folder), "pytorch_lora_weights.safetensors")
        save_file(sd, path)
    else:
        path = os.path.join(os.fspath(folder), "pytorch_lora_weights.bin")
        torch.save(sd, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Checking and applying


def module_weight_shapes(unet: nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shapes of the Linear/Conv2d modules of a diffusers UNet (peft wrappers unwrapped)."""
    shapes = {}
    for name, mod in unet.named_modules():
        if ".lora_" in name or not isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        shapes[name.removesuffix(".base_layer")] = tuple(mod.weight.shape)
    return shapes


def check_lora_fits(lora: LoraWeights, target_shapes: Mapping[str, tuple[int, ...]], model_name: str) -> None:
    """Every LoRA module must exist in the model with matching in/out sizes; otherwise a :class:`CheckpointError`
    listing the first missing modules and mismatched shapes (never a silent partial or empty load)."""
    missing, mismatched = [], []
    for name, m in lora.modules.items():
        shape = target_shapes.get(name)
        if shape is None:
            missing.append(name)
            continue
        want_out, want_in = shape[0], shape[1]
        if m.up.shape[0] != want_out or m.down.shape[1] != want_in or m.down.shape[2:] != tuple(shape[2:]):
            mismatched.append(
                f"{name}: LoRA down {tuple(m.down.shape)} / up {tuple(m.up.shape)} vs model weight {tuple(shape)}"
            )
    if not missing and not mismatched:
        return
    n = len(lora.modules)
    if len(missing) == n:
        raise CheckpointError(
            f"{lora.source} matches none of the modules of {model_name}: its {n} modules (e.g. {_fmt(missing, 3)}) "
            f"do not exist there (the model has e.g. {_fmt(sorted(target_shapes), 2)}). Is it a LoRA for another "
            f"architecture? {SD1_HINT}"
        )
    parts = [f"{lora.source} does not fit {model_name} ({n - len(missing) - len(mismatched)} of {n} modules fit)."]
    if mismatched:
        parts.append(f"Shape mismatches: {_fmt(mismatched, 3)}.")
    if missing:
        parts.append(f"Modules not in the model: {_fmt(missing, 3)}.")
    parts.append(SD1_HINT)
    raise CheckpointError(" ".join(parts))


def apply_lora_peft(unet: nn.Module, lora: LoraWeights, strength: float = 1.0, adapter_name: str = "dmp") -> nn.Module:
    """Inject ``lora`` into a diffusers UNet with peft (in place) and return it: W·h + strength·scale·up(down(h)).

    Per-module ranks and scales go through peft's ``rank_pattern`` / ``alpha_pattern``; the resulting scalings and
    the loaded keys are checked, so a LoRA that does not fit raises instead of loading partly.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    check_lora_fits(lora, module_weight_shapes(unet), "the UNet")
    names = list(lora.modules)
    ranks = {n: m.rank for n, m in lora.modules.items()}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(
        r=r0,
        lora_alpha=r0,
        target_modules=names,
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != r0},
        alpha_pattern={re.escape(n): m.scale * strength * m.rank for n, m in lora.modules.items()},
        lora_dropout=0.0,
        bias="none",
    )
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    sd = {}
    for n, m in lora.modules.items():
        sd[f"{n}.lora_A.weight"] = m.down
        sd[f"{n}.lora_B.weight"] = m.up
    result = set_peft_model_state_dict(unet, sd, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"peft did not place {len(unexpected)} LoRA tensors: {_fmt(unexpected, 3)}.")
    placed = {name.removesuffix(".base_layer"): mod for name, mod in unet.named_modules() if hasattr(mod, "scaling")}
    for n, m in lora.modules.items():
        layer = placed.get(n)
        got = None if layer is None else layer.scaling.get(adapter_name)
        if got is None or not math.isclose(got, m.scale * strength, rel_tol=1e-6, abs_tol=1e-12):
            raise RuntimeError(f"peft set scale {got} on '{n}', expected {m.scale * strength}.")
    return unet
