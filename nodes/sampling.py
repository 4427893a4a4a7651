"""The official DDIM of the JointNet (and SD) pipelines in ComfyUI: its SIGMAS, its SAMPLER for
SamplerCustomAdvanced, and a KSampler-like node that runs both through ComfyUI's own sampling."""

from __future__ import annotations

import math

from comfy_api.latest import io

from ..unidense_core.io.checks import check_latent
from ..unidense_core.sampling.ddim import check_steps, check_strength
from .hosts.sampling import discrete_vp_sampling, model_official_sigmas, official_ddim_sampler, sample_official

CATEGORY = "UniDense/Sampling"
OFFICIAL_STEPS, OFFICIAL_CFG = 50, 7.5  # JointNet (SD2.1-base pipelines): DDIM 50 steps, guidance 7.5
MAX_STEPS = 999  # T − steps_offset for the 1000-step SD schedules
WHAT = (
    "diffusers' DDIM (η = 0, leading spacing, steps_offset 1, ending at ᾱ_0) as the official JointNet / SD "
    "pipelines run it: the same timesteps as euler + ddim_uniform, but started from plain noise and ended at ᾱ_0, "
    "not σ = 0."
)
MODEL_TIP = (
    "Any ε- or v-prediction MODEL with a discrete schedule: SD1.x/2.x, the JointNet RGB-D MODEL, and their "
    "TiledPanorama / Channel Inpaint clones."
)


def steps_input() -> io.Int.Input:
    return io.Int.Input(
        "steps",
        default=OFFICIAL_STEPS,
        min=1,
        max=MAX_STEPS,
        tooltip="DDIM steps (model calls at denoise 1). Official JointNet: 50 (t = 981, 961, …, 1).",
    )


def denoise_input() -> io.Float.Input:
    return io.Float.Input(
        "denoise",
        default=1.0,
        min=0.0,
        max=1.0,
        step=0.01,
        tooltip="The official strength: 1.0 generates from noise (and runs the inpainting presets); below 1 runs the "
        "last int(steps × denoise) steps from the latent noised to the first of them (img2img / edits, e.g. 0.9).",
    )


def check_model_steps(model, steps: int, denoise: float) -> None:
    """Steps and denoise against the MODEL's schedule, before anything runs."""
    table = discrete_vp_sampling(model).sigmas
    check_steps(steps, len(table))
    check_strength(denoise, steps)


class OfficialDDIMSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_OfficialDDIMSigmas",
            display_name="UniDense Official DDIM Sigmas",
            category=CATEGORY,
            description="The official DDIM schedule of a MODEL as SIGMAS: σ at the diffusers timesteps (leading, "
            "offset 1; 50 steps: t = 981 … 1; denoise < 1 keeps the last int(steps × denoise)), then σ(t=0) (0.0292 "
            "for SD), not 0. Use with 'UniDense Official DDIM Sampler' in SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TIP + " Its own noise schedule gives the sigmas."),
                steps_input(),
                denoise_input(),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS", tooltip="For SamplerCustomAdvanced (official DDIM).")],
        )

    @classmethod
    def execute(cls, model: io.Model.Type, steps: int = OFFICIAL_STEPS, denoise: float = 1.0) -> io.NodeOutput:
        check_model_steps(model, steps, denoise)
        return io.NodeOutput(model_official_sigmas(model, steps, denoise))


class OfficialDDIMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_OfficialDDIMSampler",
            display_name="UniDense Official DDIM Sampler",
            category=CATEGORY,
            description=WHAT + " A SAMPLER for SamplerCustomAdvanced with RandomNoise and 'UniDense Official DDIM "
            "Sigmas'. In channel inpainting (UniDense Channel Inpaint RGB-D) the first model call sees the plain noise "
            "in the kept channels too, as the official inpainting pipeline.",
            inputs=[
                io.Boolean.Input(
                    "full_strength",
                    default=True,
                    tooltip="On for SIGMAS with denoise 1.0 (generation, inpainting presets): start from plain noise "
                    "as the official pipelines. Off for SIGMAS with denoise < 1 (edits): start from the latent "
                    "noised to the first sigma (the official img2img). A mismatch is reported as an error.",
                )
            ],
            outputs=[
                io.Sampler.Output(display_name="SAMPLER", tooltip="For SamplerCustomAdvanced (with RandomNoise).")
            ],
        )

    @classmethod
    def execute(cls, full_strength: bool = True) -> io.NodeOutput:
        if not isinstance(full_strength, bool):
            raise ValueError(f"full_strength must be true or false, got {full_strength!r}.")
        return io.NodeOutput(official_ddim_sampler(full_strength))


class OfficialDDIMKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_OfficialDDIMKSampler",
            display_name="UniDense Official DDIM KSampler",
            category=CATEGORY,
            description=WHAT + " A drop-in for KSampler (same noise from the seed, empty latents, noise masks, "
            "progress, preview and cancel) that gives the official result on the same weights and inputs.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TIP),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise (the same noise as KSampler with this seed).",
                ),
                steps_input(),
                io.Float.Input(
                    "cfg",
                    default=OFFICIAL_CFG,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance. Official JointNet: 7.5, with the empty prompt as negative.",
                ),
                io.Conditioning.Input("positive", tooltip="The prompt (JointNet: a caption, SD2.1-base CLIP)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (official JointNet: the empty prompt)."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="EmptyLatentImage to generate (widened to 8 channels for JointNet), the LATENT of "
                    "'UniDense Channel Inpaint RGB-D', or an encoded image for denoise < 1.",
                ),
                denoise_input(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denoised latent (the official result).")],
        )

    @classmethod
    def execute(
        cls,
        model: io.Model.Type,
        seed: int,
        steps: int,
        cfg: float,
        positive: io.Conditioning.Type,
        negative: io.Conditioning.Type,
        latent_image: io.Latent.Type,
        denoise: float = 1.0,
    ) -> io.NodeOutput:
        check_model_steps(model, steps, denoise)
        if not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
            raise ValueError(f"cfg must be a finite number (official JointNet: 7.5), got {cfg!r}.")
        check_latent(latent_image, "latent_image")
        return io.NodeOutput(sample_official(model, positive, negative, latent_image, seed, steps, cfg, denoise))


NODES: list[type[io.ComfyNode]] = [OfficialDDIMKSampler, OfficialDDIMSigmas, OfficialDDIMSampler]
