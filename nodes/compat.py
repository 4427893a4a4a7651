"""Which ComfyUI versions UniDense runs on, and every ComfyUI API it touches, checked in one place.

The table in ``docs/comfyui-compatibility.md`` says what each API was in ComfyUI 0.3.64 and in the newest versions
read, and how the pack copes. ``tests/test_compat.py`` checks, on whatever ComfyUI the tests run against, that every
name in :data:`REQUIRED` exists and that :data:`REQUIRED` lists every ``comfy*`` name the node modules use.

Nothing here patches ComfyUI; it only reads (``getattr``, ``importlib.import_module``).
"""

from __future__ import annotations

import importlib
import logging
import re

logger = logging.getLogger(__name__)

MIN_VERSION = (0, 3, 60)  # the oldest ComfyUI tested (API checks, MERGE, server, workflows: docs/...)
NEWEST_VERIFIED = (0, 33, 0)  # the newest ComfyUI the ComfyUI tests passed on
TABLE = "docs/comfyui-compatibility.md"

# The keys a KSAMPLER function's callback dict must carry: ComfyUI >= 0.30 wraps every sampler's callback and reads
# x["i"], x["x"], x["denoised"] (and x.get("sigma"), x.get("sigma_hat")) on the first step, even with no preview.
SAMPLER_CALLBACK_KEYS = frozenset({"i", "x", "denoised", "sigma", "sigma_hat"})

# Every ComfyUI name the node modules use, as a dotted path from an importable module. Classes stand for the methods
# called on their instances (``comfy.model_patcher.ModelPatcher.clone`` is ``model.clone()``). Attributes that ComfyUI
# sets in ``__init__`` (``ModelPatcher.model_options``, ``ControlNet.cond_hint_original``, ``VAE.latent_channels``)
# cannot be looked up on a class; the ComfyUI tests exercise them.
REQUIRED: tuple[str, ...] = (
    # V3 node API (comfy_api.latest; comfy_api.v0_0_2 / v0_0_3 re-export the same objects)
    "comfy_api.latest.ComfyExtension",
    "comfy_api.latest.io.ComfyNode",
    "comfy_api.latest.io.Schema",
    "comfy_api.latest.io.NodeOutput",
    "comfy_api.latest.io.Custom",
    "comfy_api.latest.io.FolderType.output",
    "comfy_api.latest.io.Boolean.Input",
    "comfy_api.latest.io.Int.Input",
    "comfy_api.latest.io.Float.Input",
    "comfy_api.latest.io.String.Input",
    "comfy_api.latest.io.String.Output",
    "comfy_api.latest.io.Combo.Input",
    "comfy_api.latest.io.Image.Input",
    "comfy_api.latest.io.Image.Output",
    "comfy_api.latest.io.Mask.Input",
    "comfy_api.latest.io.Mask.Output",
    "comfy_api.latest.io.Latent.Input",
    "comfy_api.latest.io.Latent.Output",
    "comfy_api.latest.io.Latent.Type",
    "comfy_api.latest.io.Conditioning.Input",
    "comfy_api.latest.io.Conditioning.Output",
    "comfy_api.latest.io.Conditioning.Type",
    "comfy_api.latest.io.Model.Input",
    "comfy_api.latest.io.Model.Output",
    "comfy_api.latest.io.Model.Type",
    "comfy_api.latest.io.Vae.Input",
    "comfy_api.latest.io.Sampler.Output",
    "comfy_api.latest.io.Sigmas.Output",
    "comfy_api.latest.ui.SavedResult",
    "comfy_api.latest.ui.SavedImages",
    # model folders and node helpers
    "folder_paths.models_dir",
    "folder_paths.folder_names_and_paths",
    "folder_paths.supported_pt_extensions",
    "folder_paths.add_model_folder_path",
    "folder_paths.filename_list_cache",
    "folder_paths.get_folder_paths",
    "folder_paths.get_filename_list",
    "folder_paths.get_full_path",
    "folder_paths.get_output_directory",
    "folder_paths.get_save_image_path",
    "node_helpers.conditioning_set_values",
    "latent_preview.prepare_callback",
    # ModelPatcher: patch only clones (object patches, wrappers, additional models, attachments, weight patches)
    "comfy.model_patcher.ModelPatcher",
    "comfy.model_patcher.ModelPatcher.clone",
    "comfy.model_patcher.ModelPatcher.add_object_patch",
    "comfy.model_patcher.ModelPatcher.get_model_object",
    "comfy.model_patcher.ModelPatcher.add_patches",
    "comfy.model_patcher.ModelPatcher.set_additional_models",
    "comfy.model_patcher.ModelPatcher.add_wrapper_with_key",
    "comfy.model_patcher.ModelPatcher.remove_wrappers_with_key",
    "comfy.model_patcher.ModelPatcher.set_attachments",
    "comfy.model_patcher.ModelPatcher.get_attachment",
    "comfy.model_patcher.ModelPatcher.set_model_denoise_mask_function",
    "comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL",
    "comfy.patcher_extension.WrappersMP.OUTER_SAMPLE",
    "comfy.patcher_extension.WrappersMP.CALC_COND_BATCH",
    "comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING",
    "comfy.patcher_extension.WrapperExecutor.new_class_executor",
    # sampling
    "comfy.samplers.KSAMPLER",
    "comfy.samplers.CFGGuider",
    "comfy.samplers.CFGGuider.set_conds",
    "comfy.samplers.CFGGuider.set_cfg",
    "comfy.samplers.CFGGuider.sample",
    "comfy.model_sampling.ModelSamplingDiscrete",
    "comfy.model_sampling.V_PREDICTION",
    "comfy.model_sampling.EDM",
    "comfy.model_sampling.EPS",
    "comfy.latent_formats.Flux",
    "comfy.ldm.flux.layers.timestep_embedding",
    "comfy.ldm.flux.math.attention",
    "comfy.ops.disable_weight_init",
    "comfy_api.latest.io.Int.Output",
    "comfy.model_sampling.X0",
    "comfy.model_sampling.ModelSamplingDiscreteEDM",
    "comfy.model_sampling.ModelSamplingDiscrete.timestep",
    "comfy.sample.sample_custom",
    "comfy.sample.prepare_noise",
    "comfy.sample.fix_empty_latent_channels",
    "comfy.conds.CONDNoiseShape",
    "comfy.conds.CONDNoiseShape._copy_with",
    "comfy.lora.load_lora",
    # models, weights, memory
    "comfy.supported_models.SD15",
    "comfy.supported_models.SD20",
    "comfy.supported_models.SD20.memory_usage_factor",
    "comfy.supported_models.SD20.get_model",
    "comfy.supported_models.SD20.set_inference_dtype",
    "comfy.latent_formats.SD15",
    "comfy.ops.pick_operations",
    "comfy.model_management.get_torch_device",
    "comfy.model_management.unet_offload_device",
    "comfy.model_management.intermediate_device",
    "comfy.model_management.unet_dtype",
    "comfy.model_management.unet_manual_cast",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.utils.unet_to_diffusers",
    "comfy.utils.repeat_to_batch_size",
    "comfy.utils.reshape_mask",
    "comfy.utils.common_upscale",
    "comfy.utils.PROGRESS_BAR_ENABLED",
    "comfy.sd.VAE.encode",
    "comfy.sd.VAE.decode",
    "comfy.sd.VAE.spacial_compression_encode",
    "comfy.sd.VAE.spacial_compression_decode",
    # networks the hosts reach into (MERGE: PixArtMS; JointNet: the SD2.x UNetModel split in three)
    "comfy.ldm.pixart.pixartms.PixArtMS.forward_orig",
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel._forward",
    "comfy.ldm.modules.diffusionmodules.openaimodel.forward_timestep_embed",
    "comfy.ldm.modules.diffusionmodules.util.timestep_embedding",
)


def parse_version(text: str) -> tuple[int, ...]:
    """'0.3.64' -> (0, 3, 64); a suffix after the numbers ('0.4.0rc1', '0.3.64+git') is ignored."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")
    if match is None:
        raise ValueError(f"Not a ComfyUI version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def comfyui_version() -> str | None:
    """The running ComfyUI's version (its ``comfyui_version.py``), or None where that file is missing."""
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return None


def _fmt(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def check_version(version: str | None) -> str | None:
    """Raise for a ComfyUI older than :data:`MIN_VERSION`; return a note for one newer than the verified range."""
    if version is None:
        return None
    v = parse_version(version)
    if v < MIN_VERSION:
        raise ImportError(
            f"UniDense needs ComfyUI {_fmt(MIN_VERSION)} or newer; this ComfyUI is {version}. Update ComfyUI "
            f"(git pull, or ComfyUI-Manager's 'Update ComfyUI'), then restart. Supported versions: {TABLE}."
        )
    if v > NEWEST_VERIFIED:
        return (
            f"UniDense was tested on ComfyUI {_fmt(MIN_VERSION)} to {_fmt(NEWEST_VERIFIED)}; this ComfyUI is "
            f"{version}. The APIs it uses were checked in newer sources ({TABLE}); please report problems."
        )
    return None


def resolve(dotted: str):
    """``getattr`` along ``dotted`` from its top-level module, importing a submodule only where the attribute is not
    there yet (ComfyUI has imported nearly all of them); AttributeError if a part does not exist."""
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ImportError as exc:
        raise AttributeError(f"{parts[0]!r} cannot be imported ({exc})") from exc
    for i, name in enumerate(parts[1:], start=1):
        if not hasattr(obj, name) and hasattr(obj, "__path__"):  # a package whose submodule is not imported yet
            try:
                importlib.import_module(".".join(parts[: i + 1]))
            except ImportError as exc:
                raise AttributeError(f"{'.'.join(parts[: i + 1])!r} cannot be imported ({exc})") from exc
        obj = getattr(obj, name)
    return obj


def missing_api(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The names this ComfyUI lacks (empty on every supported version)."""
    missing = []
    for name in names:
        try:
            resolve(name)
        except AttributeError:
            missing.append(name)
    return missing


def check_comfyui() -> None:
    """At load: refuse a too-old ComfyUI with what to do, and log what a newer one lacks (the nodes using it fail)."""
    note = check_version(comfyui_version())
    if note:
        logger.info(note)
    missing = missing_api()
    if missing:
        logger.warning(
            "UniDense: this ComfyUI (%s) lacks %s; the nodes that use them will fail. Supported versions: %s.",
            comfyui_version() or "unknown version",
            ", ".join(missing),
            TABLE,
        )
