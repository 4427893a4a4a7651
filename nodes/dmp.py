"""DMP nodes: load a DMP LoRA onto an SD 1.x MODEL, the deterministic interpolation sampler (also as SAMPLER +
SIGMAS for SamplerCustomAdvanced), the read-outs per task and the processing resolution."""

from __future__ import annotations

import comfy.lora
import comfy.model_management as mm
import comfy.model_sampling
import comfy.samplers
import comfy.supported_models
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io

from ..unidense_core.dense.readout import (
    NORMALIZE,
    depth_to_display,
    dmp_depth,
    dmp_normals,
    normalize_depth,
    normals_to_image,
)
from ..unidense_core.dmp.lora import LoraWeights, check_lora_fits, load_lora
from ..unidense_core.dmp.sampler import (
    DEFAULT_STEPS,
    MAX_STEPS,
    MIN_STEPS,
    OFFICIAL_GUIDANCE,
    VARIANTS,
    check_steps,
    check_variant,
    dmp_sigmas,
    sample_interp,
)
from ..unidense_core.io.checks import (
    check_choice,
    check_conditioning,
    check_finite,
    check_image,
    check_latent,
    check_number,
    check_reference,
)
from ..unidense_core.io.resolution import RESIZE_SIDES, resize_for_processing, resize_image

CATEGORY = "UniDense/DMP"
LORA_FOLDER = "loras"  # ComfyUI's stock LoRA folder; official checkpoint folders go to loras/dmp/<name>/
LATENT_CHANNELS = 4
LORA_WHERE = (
    "Download a checkpoint folder (e.g. depth-hypersim-notext) from the Google Drive folder linked in the "
    "README of github.com/shinying/dmp into models/loras/dmp/ and pick its pytorch_lora_weights file."
)


class DMPModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
    """SD 1.4's discrete schedule (scaled-linear β 0.00085-0.012, T = 1000) in v-prediction, as DMP was trained."""


def is_v_prediction(model_sampling) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.V_PREDICTION) and not isinstance(
        model_sampling, comfy.model_sampling.EDM
    )


def check_sd1_model(model_config, name: str = "model") -> None:
    """DMP runs SD 1.x UNets (ComfyUI's SD15 family with 4 latent channels); anything else is refused by name."""
    unet_config = getattr(model_config, "unet_config", None) or {}
    if not isinstance(model_config, comfy.supported_models.SD15) or unet_config.get("in_channels", 4) != 4:
        raise ValueError(
            f"The DMP sampler runs SD 1.x UNet models (ComfyUI's SD15: SD 1.4, SD 1.5 and their fine-tunes) with a "
            f"DMP LoRA; this {name} is {type(model_config).__name__}. Load sd-v1-4.ckpt with Load Checkpoint and the "
            "LoRA with 'UniDense Load DMP LoRA'."
        )


def v_prediction_clone(model):
    """A clone that ComfyUI samples as DMP's v-prediction model, whatever the base's own prediction type."""
    m = model.clone()
    m.add_object_patch("model_sampling", DMPModelSampling())
    return m


def unet_weight_map(model) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """diffusers module name -> ComfyUI weight key, and -> weight shape, for a UNet MODEL (SD 1.x/2.x/XL)."""
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    if not mapping:
        raise ValueError(
            f"DMP needs an SD 1.x UNet MODEL (the checkpoints were trained on SD 1.4); this MODEL is "
            f"{type(model.model).__name__}, which is not a UNet. Load e.g. sd-v1-4.ckpt with Load Checkpoint."
        )
    sd = model.model.diffusion_model.state_dict()
    keys, shapes = {}, {}
    for dk, ck in mapping.items():
        if dk.endswith(".weight") and ck in sd:
            name = dk[: -len(".weight")]
            keys[name] = f"diffusion_model.{ck}"
            shapes[name] = tuple(sd[ck].shape)
    return keys, shapes


def lora_patched_clone(model, lora: LoraWeights, strength: float = 1.0):
    """A clone with ``lora`` as ComfyUI weight patches (merged into the weights when the model loads)."""
    keys, shapes = unet_weight_map(model)
    check_lora_fits(lora, shapes, f"this MODEL ({type(model.model.model_config).__name__})")
    patches = comfy.lora.load_lora(lora.comfy_state_dict(), {n: keys[n] for n in lora.modules}, log_missing=False)
    if len(patches) != len(lora.modules):
        raise RuntimeError(f"ComfyUI made {len(patches)} LoRA patches out of {len(lora.modules)} modules.")
    m = model.clone()
    added = m.add_patches(patches, strength)
    if len(added) != len(patches):
        raise RuntimeError(f"ComfyUI applied {len(added)} of {len(patches)} LoRA patches to the model.")
    return m


def sample_dmp_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, oracle=False):
    """:func:`sample_interp` with checks only ComfyUI can make: the model must be in v-prediction, the noise off."""
    base = getattr(getattr(model, "inner_model", None), "inner_model", None)  # KSamplerX0Inpaint -> guider -> model
    if base is not None:
        check_sd1_model(getattr(base, "model_config", None), "MODEL")
    ms = getattr(base, "model_sampling", None)
    if ms is not None and not is_v_prediction(ms):
        raise ValueError(
            f"The DMP sampler needs the MODEL in v-prediction, but it samples as {type(ms).__name__}. Load the LoRA "
            "with 'UniDense Load DMP LoRA' (it sets v-prediction), or add ModelSamplingDiscrete (v_prediction)."
        )
    noise = getattr(model, "noise", None)
    if noise is not None and torch.count_nonzero(noise) > 0:
        raise ValueError("DMP starts from the image latent without noise: give SamplerCustomAdvanced 'DisableNoise'.")
    check_finite(x, "latent_image", "BChw")
    out = sample_interp(model, x, sigmas, extra_args, callback, disable, oracle=oracle)
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise RuntimeError(
            f"The DMP sampler produced {bad} non-finite value(s) out of {out.numel()} from finite inputs: the model "
            "overflowed (fp16?) or holds NaN weights. Load the model in fp32/bf16, or check the checkpoint and LoRA."
        )
    return out


def check_image_latent(model, latent: dict) -> torch.Tensor:
    """The image latent of a LATENT, checked against what DMP and the MODEL need."""
    check_sd1_model(getattr(getattr(model, "model", None), "model_config", None))
    samples = check_latent(latent, "latent_image")
    if samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"latent_image has {samples.shape[1]} channels: it comes from another VAE family (SD3/Flux have 16). "
            "DMP needs the 4-channel SD 1.x VAE latent: encode the image with VAEEncode and the SD 1.x "
            "checkpoint's VAE."
        )
    if torch.count_nonzero(samples) == 0:
        raise ValueError(
            "latent_image is all zeros (an empty latent?). DMP predicts from the image: connect VAEEncode(image)."
        )
    return samples


def progress_callback(model, steps: int):
    """Progress bar with latent preview (comfy.utils.ProgressBar), and a cancellation point after every step."""
    preview = latent_preview.prepare_callback(model, steps)

    def callback(step, x0, x, total_steps):
        preview(step, x0, x, total_steps)
        mm.throw_exception_if_processing_interrupted()

    return callback


def _lora_files() -> list[str]:
    return folder_paths.get_filename_list(LORA_FOLDER)


def _resize_back(image_bhwc: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """Bicubic resize of an IMAGE-like [B,H,W,C] tensor to the reference image's size (official DMP)."""
    if reference is None:
        return image_bhwc
    size = tuple(reference.shape[1:3])
    return resize_image(image_bhwc.movedim(-1, 1), size, "bicubic").movedim(1, -1)


def _check_readout(decoded: torch.Tensor, reference: torch.Tensor | None) -> None:
    check_image(decoded, "decoded", channels=(3, 4))
    if reference is not None:
        check_reference(reference)


# ----------------------------------------------------------------------------------------------------------
# Nodes


class LoadDMPLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_LoadDMPLora",
            display_name="UniDense Load DMP LoRA",
            category=CATEGORY,
            description="Load a DMP task LoRA (Lee et al., CVPR 2024: depth, normals, segmentation, albedo, shading) "
            "onto an SD 1.x MODEL, unchanged from the official checkpoint (diffusers attention-processor or peft "
            "keys). Checks that every LoRA module fits the model, and sets v-prediction (DMP's objective).",
            inputs=[
                io.Model.Input("model", tooltip="SD 1.x (the DMP checkpoints were trained on SD 1.4: sd-v1-4.ckpt)."),
                io.Combo.Input(
                    "lora_name",
                    options=_lora_files(),
                    tooltip="From models/loras, e.g. dmp/depth-hypersim-notext/pytorch_lora_weights.safetensors "
                    "(or .bin). An adapter_config.json beside a peft file gives its alpha.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-4.0,
                    max=4.0,
                    step=0.01,
                    tooltip="Multiplies the LoRA update. 1.0 = official (DMP's LoRAs have no alpha: scale 1).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="The model with the LoRA, sampled as v-prediction. The input MODEL is unchanged.",
                )
            ],
        )

    @classmethod
    def execute(cls, model: io.Model.Type, lora_name: str, strength: float = 1.0) -> io.NodeOutput:
        check_number(strength, "strength")
        path = folder_paths.get_full_path(LORA_FOLDER, lora_name)
        if path is None:
            raise FileNotFoundError(f"'{lora_name}' was not found in the loras model folder. {LORA_WHERE}")
        m = lora_patched_clone(model, load_lora(path), strength)
        m.add_object_patch("model_sampling", DMPModelSampling())
        return io.NodeOutput(m)


class DeterministicInterpolationSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DeterministicInterpolationSampler",
            display_name="UniDense DMP Deterministic Interpolation Sampler",
            category=CATEGORY,
            description="DMP's sampler: DDIM (η = 0, leading spacing) from the image latent without noise, in "
            "v-prediction, ending at ᾱ_0 as the official code (5 steps: t = 801, 601, 401, 201, 1). Deterministic "
            "(no seed). Returns the prediction latent for VAEDecode.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="SD 1.x with a DMP LoRA (UniDense Load DMP LoRA); sampled as v-prediction."
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="'-notext' checkpoints: the empty prompt (CLIPTextEncode with no text). Captioned "
                    "checkpoints: a caption of the image.",
                ),
                io.Latent.Input(
                    "latent_image",
                    tooltip="VAEEncode of the image with the SD 1.x VAE (see UniDense Processing "
                    "Resolution for the size).",
                ),
                io.Int.Input(
                    "steps",
                    default=DEFAULT_STEPS,
                    min=MIN_STEPS,
                    max=MAX_STEPS,
                    tooltip="UNet evaluations. Official: 5 (demo range 2-20). 1 evaluates only t = 1 and stays close "
                    "to the image.",
                ),
                io.Combo.Input(
                    "variant",
                    options=list(VARIANTS),
                    default="standard",
                    tooltip="standard: diffusers DDIM, the official default (re-estimates the input latent each "
                    "step). oracle: the paper's construction (--use-oracle-ddim), keeps the true image latent.",
                ),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=1.0,
                    max=20.0,
                    step=0.1,
                    tooltip=f"1.0 for '-notext' checkpoints (no CFG). Captioned checkpoints: {OFFICIAL_GUIDANCE} "
                    "(official), with the empty prompt as negative.",
                ),
                io.Conditioning.Input(
                    "negative", optional=True, tooltip="Only with cfg > 1: the empty prompt (official)."
                ),
            ],
            outputs=[io.Latent.Output(display_name="prediction", tooltip="Decode with VAEDecode, then a read-out.")],
        )

    @classmethod
    def execute(
        cls,
        model: io.Model.Type,
        positive: io.Conditioning.Type,
        latent_image: io.Latent.Type,
        steps: int = DEFAULT_STEPS,
        variant: str = "standard",
        cfg: float = 1.0,
        negative: io.Conditioning.Type | None = None,
    ) -> io.NodeOutput:
        check_steps(steps)
        check_variant(variant)
        check_number(cfg, "cfg")
        if cfg != 1.0 and negative is None:
            raise ValueError(f"cfg {cfg} needs a negative conditioning (officially the empty prompt); or set cfg 1.0.")
        samples = check_image_latent(model, latent_image)
        context_dim = model.model.model_config.unet_config.get("context_dim")
        check_conditioning(positive, "positive", context_dim)
        if negative is not None:
            check_conditioning(negative, "negative", context_dim)
        m = v_prediction_clone(model)
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(positive, negative if negative is not None else positive)
        guider.set_cfg(cfg)
        sampler = comfy.samplers.KSAMPLER(sample_dmp_comfy, extra_options={"oracle": variant == "oracle"})
        mm.throw_exception_if_processing_interrupted()
        out = guider.sample(
            torch.zeros_like(samples),
            samples,
            sampler,
            dmp_sigmas(steps),
            callback=progress_callback(m, steps),
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=0,
        )
        result = {k: v for k, v in latent_image.items() if k != "noise_mask"}
        result["samples"] = out.to(mm.intermediate_device())
        return io.NodeOutput(result)


class DMPSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DMPSampler",
            display_name="UniDense DMP Sampler (SamplerCustomAdvanced)",
            category=CATEGORY,
            description="DMP's deterministic DDIM as a SAMPLER. Use with SamplerCustomAdvanced, DisableNoise, "
            "'UniDense DMP Sigmas', a v-prediction MODEL (UniDense Load DMP LoRA) and the VAEEncode LATENT. Same "
            "result as the Deterministic Interpolation Sampler node.",
            inputs=[
                io.Combo.Input(
                    "variant",
                    options=list(VARIANTS),
                    default="standard",
                    tooltip="standard: official diffusers DDIM. oracle: keeps the true image latent (paper).",
                )
            ],
            outputs=[
                io.Sampler.Output(display_name="SAMPLER", tooltip="For SamplerCustomAdvanced (with DisableNoise).")
            ],
        )

    @classmethod
    def execute(cls, variant: str = "standard") -> io.NodeOutput:
        check_variant(variant)
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_dmp_comfy, extra_options={"oracle": variant == "oracle"}))


class DMPSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DMPSigmas",
            display_name="UniDense DMP Sigmas",
            category=CATEGORY,
            description="DMP's schedule in σ-space: σ at t = 801, 601, 401, 201, 1 (5 steps) and at the final "
            "ᾱ_0 (σ = 0.0292, not 0, as the official DDIM).",
            inputs=[io.Int.Input("steps", default=DEFAULT_STEPS, min=MIN_STEPS, max=MAX_STEPS, tooltip="Official: 5.")],
            outputs=[io.Sigmas.Output(display_name="SIGMAS", tooltip="The official DDIM timesteps as sigmas.")],
        )

    @classmethod
    def execute(cls, steps: int = DEFAULT_STEPS) -> io.NodeOutput:
        check_steps(steps)
        return io.NodeOutput(dmp_sigmas(steps))


class DMPDepthReadout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DMPDepthReadout",
            display_name="UniDense DMP Depth Read-out",
            category=CATEGORY,
            description="Official DMP depth read-out: mean of the decoded channels, clamped at 0, × target_scale "
            "(else min-max per image). DMP gives depth (near = small). Outputs a ControlNet-ready IMAGE and the raw "
            "float depth as a MASK.",
            inputs=[
                io.Image.Input("decoded", tooltip="VAEDecode of the DMP prediction latent."),
                io.Float.Input(
                    "target_scale",
                    default=0.0,
                    min=0.0,
                    max=1000.0,
                    step=0.1,
                    tooltip="The checkpoint's training scale: 8 for the paper's bedroom depth model (metres). 0 = "
                    "unknown (e.g. depth-hypersim-notext): raw depth is min-max normalised per image, as the "
                    "official code does.",
                ),
                io.Boolean.Input(
                    "near_white", default=True, tooltip="On: near = white, as SD depth ControlNets (MiDaS) expect."
                ),
                io.Combo.Input(
                    "normalize",
                    options=list(NORMALIZE),
                    default="per_image",
                    tooltip="Display image only: stretch to [0, 1] per image or over the batch (steadier for "
                    "video); none shows depth / target_scale. The raw output is never changed.",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="The original input image: outputs are resized back to its size (bicubic, official).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="depth_image", tooltip="3-channel depth for ControlNet / preview."),
                io.Mask.Output(
                    display_name="depth_raw", tooltip="Float depth [B,H,W], near = small (metres × target_scale)."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        decoded: torch.Tensor,
        target_scale: float = 0.0,
        near_white: bool = True,
        normalize: str = "per_image",
        reference_image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        _check_readout(decoded, reference_image)
        check_number(target_scale, "target_scale", 0.0)
        check_choice(normalize, "normalize", NORMALIZE)
        depth = dmp_depth(decoded, target_scale, channel_dim=-1)  # [B,H,W]
        depth = _resize_back(depth.unsqueeze(-1), reference_image)[..., 0].clamp(min=0)
        shown = depth / target_scale if target_scale > 0 else depth
        shown = depth_to_display(normalize_depth(shown, normalize), near_is_low=True, near_white=near_white)
        return io.NodeOutput(shown, depth)


class DMPNormalsReadout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DMPNormalsReadout",
            display_name="UniDense DMP Normals Read-out",
            category=CATEGORY,
            description="DMP surface normals: the decoded image as unit vectors in [−1, 1] (2·rgb − 1, normalised), "
            "in the checkpoint's own camera convention, plus a [0, 1] visualisation.",
            inputs=[
                io.Image.Input("decoded", tooltip="VAEDecode of the DMP normals prediction latent."),
                io.Boolean.Input(
                    "flip_y",
                    default=False,
                    tooltip="Negate the green (y) channel in both outputs, to switch between the OpenGL and DirectX "
                    "normal-map conventions.",
                ),
                io.Image.Input(
                    "reference_image", optional=True, tooltip="The original input image: resize back to its size."
                ),
            ],
            outputs=[
                io.Image.Output(display_name="normals_image", tooltip="Visualisation (n + 1)/2 in [0, 1]."),
                io.Image.Output(
                    display_name="normals", tooltip="Raw unit normals [B,H,W,3] in [−1, 1] (not for preview/save)."
                ),
            ],
        )

    @classmethod
    def execute(
        cls, decoded: torch.Tensor, flip_y: bool = False, reference_image: torch.Tensor | None = None
    ) -> io.NodeOutput:
        _check_readout(decoded, reference_image)
        image = _resize_back(decoded[..., :3], reference_image).clamp(0, 1)
        normals = dmp_normals(image, channel_dim=-1)  # [B,H,W,3]
        if flip_y:
            normals = normals * torch.tensor([1.0, -1.0, 1.0], dtype=normals.dtype, device=normals.device)
        return io.NodeOutput(normals_to_image(normals, channel_dim=-1), normals)


class DMPImageReadout(io.ComfyNode):
    TASKS = ("segmentation", "albedo", "shading")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_DMPImageReadout",
            display_name="UniDense DMP Image Read-out",
            category=CATEGORY,
            description="DMP's RGB tasks (segmentation colours, albedo, shading): the decoded image is the "
            "prediction (official: x/2 + 0.5, clamped); this node brings it back to the input size.",
            inputs=[
                io.Image.Input("decoded", tooltip="VAEDecode of the DMP prediction latent."),
                io.Combo.Input(
                    "task",
                    options=list(cls.TASKS),
                    default="albedo",
                    tooltip="Which DMP LoRA made the prediction (documentation only: the read-out is the same "
                    "for all three).",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="The original input image: resize back to its size (bicubic, official).",
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The decoded map as an image in [0, 1].")],
        )

    @classmethod
    def execute(
        cls, decoded: torch.Tensor, task: str = "albedo", reference_image: torch.Tensor | None = None
    ) -> io.NodeOutput:
        _check_readout(decoded, reference_image)
        check_choice(task, "task", cls.TASKS)
        return io.NodeOutput(_resize_back(decoded[..., :3], reference_image).clamp(0, 1))


class ProcessingResolution(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_ProcessingResolution",
            display_name="UniDense Processing Resolution",
            category=CATEGORY,
            description="Resize an image for an estimator, aspect ratio kept: the chosen side becomes "
            "processing_resolution, then both sides are rounded to multiples of 8 (the VAE factor). Read-out nodes "
            "bring the prediction back to the input size (give them the original as reference_image).",
            inputs=[
                io.Image.Input("image", tooltip="Image(s) to estimate."),
                io.Int.Input(
                    "processing_resolution",
                    default=512,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Length of the chosen side in pixels (a multiple of 8); 0 = native size (rounded to "
                    "multiples of 8). DMP was trained at 512×512.",
                ),
                io.Combo.Input(
                    "side",
                    options=list(RESIZE_SIDES)[::-1],
                    default="shorter",
                    tooltip="shorter: DMP's official pipeline (shorter side → 512). longer: diffusers Marigold "
                    "(longer side → processing_resolution; less memory on wide images).",
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="Resized image (bicubic, antialiased).")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, processing_resolution: int = 512, side: str = "shorter") -> io.NodeOutput:
        check_image(image, "image", channels=(3, 4))
        check_choice(side, "side", RESIZE_SIDES)
        pixels = image[..., :3].movedim(-1, 1)  # [B,3,H,W]
        out = resize_for_processing(pixels, processing_resolution, 8, side, "bicubic")
        return io.NodeOutput(out.movedim(1, -1).contiguous())


NODES: list[type[io.ComfyNode]] = [
    LoadDMPLora,
    DeterministicInterpolationSampler,
    DMPSampler,
    DMPSigmas,
    DMPDepthReadout,
    DMPNormalsReadout,
    DMPImageReadout,
    ProcessingResolution,
]
