"""Tiny random models with the real architectures, for the self-check, the benchmarks and the tests.

Weights are random: these models verify wiring, shapes and formulas, never output quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .dmp.lora import LoraModule, LoraWeights, module_weight_shapes
from .jointnet.model import ExchangeConfig, JointNetRGBD, build_branch
from .merge.converters import ConverterConfig, MergeConverters
from .merge.flux_converters import FluxConverterConfig, MergeFluxConverters

# diffusers PixArtTransformer2DModel kwargs: PixArt-α 512 layout at toy width (4 blocks, 2 heads × 32).
TINY_PIXART = dict(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=4,
    out_channels=8,
    num_layers=4,
    cross_attention_dim=64,
    caption_channels=32,
    sample_size=8,
    patch_size=2,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    use_additional_conditions=False,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
)
# The real PixArt-XL-2-512x512 transformer config (for shape checks and benchmarks).
PIXART_XL_512 = dict(
    TINY_PIXART,
    num_attention_heads=16,
    attention_head_dim=72,
    num_layers=28,
    cross_attention_dim=1152,
    caption_channels=4096,
    sample_size=64,
)

TINY_CONVERTER = ConverterConfig(num_layers=2, num_attention_heads=2, attention_head_dim=32, sample_size=8)

# diffusers FluxTransformer2DModel kwargs: the FLUX.1-dev layout (guidance embedding, 16 latent channels packed
# 2×2 = 64) at toy width: 3 double + 5 single blocks, 2 heads × 16, RoPE axes 4+6+6 = 16.
TINY_FLUX = dict(
    patch_size=1,
    in_channels=64,
    num_layers=3,
    num_single_layers=5,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=16,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
# black-forest-labs/FLUX.1-dev transformer/config.json (for shape checks and benchmarks).
FLUX_DEV = dict(
    TINY_FLUX,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=(16, 56, 56),
)
# MERGE-L converters for TINY_FLUX: 2 groups (double blocks {0,1},{2}; single blocks {0,1,2},{3,4}).
TINY_FLUX_CONVERTER = FluxConverterConfig(
    num_single_layers=2, num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 6, 6)
)
# The FLUX VAE (ae.safetensors) layout at toy width: 16 latent channels, factor 8, FLUX's shift and scale.
TINY_FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# diffusers AutoencoderKL kwargs: 4 levels (factor 8), 4 latent channels, SD scaling factor.
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Give every parameter non-zero random values, so no zero-init can hide a wrong path."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float32) * scale
        r = torch.where(r.abs() < 1e-3, torch.full_like(r, 1e-3), r)  # strictly non-zero
        p.copy_(r.to(p.dtype))
    return module


def tiny_converters(cfg: ConverterConfig = TINY_CONVERTER, seed: int = 1) -> MergeConverters:
    return randomize_(MergeConverters(cfg), seed).eval()


def tiny_pixart(seed: int = 0, **overrides) -> nn.Module:
    """A diffusers PixArtTransformer2DModel (needs diffusers) with random non-zero weights."""
    from diffusers import PixArtTransformer2DModel

    return randomize_(PixArtTransformer2DModel(**{**TINY_PIXART, **overrides}), seed).eval()


def tiny_flux_converters(cfg: FluxConverterConfig = TINY_FLUX_CONVERTER, seed: int = 5) -> MergeFluxConverters:
    return randomize_(MergeFluxConverters(cfg), seed).eval()


def tiny_flux(seed: int = 4, **overrides) -> nn.Module:
    """A diffusers FluxTransformer2DModel (needs diffusers) in the FLUX.1-dev layout with random non-zero weights."""
    from diffusers import FluxTransformer2DModel

    return randomize_(FluxTransformer2DModel(**{**TINY_FLUX, **overrides}), seed).eval()


def tiny_flux_vae(seed: int = 6) -> nn.Module:
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**TINY_FLUX_VAE), seed, scale=0.1).eval()


def tiny_vae(seed: int = 2) -> nn.Module:
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**TINY_VAE), seed, scale=0.1).eval()


# diffusers UNet2DConditionModel kwargs: the SD2.1-base layout (linear attention projections, 64-ch-per-head style
# head counts, flip_sin_to_cos) at toy size with 2 down blocks: 6 down-path skips instead of SD2.1's 12.
TINY_SD21_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),  # head counts, diffusers' SD2 naming: 16 channels per head at every level
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    norm_num_groups=32,
)


def tiny_sd21_unet(seed: int = 0, **overrides) -> nn.Module:
    """A diffusers UNet2DConditionModel (needs diffusers) in the SD2.1 layout with random non-zero weights."""
    from diffusers import UNet2DConditionModel

    return randomize_(UNet2DConditionModel(**{**TINY_SD21_UNET, **overrides}), seed).eval()


# ----------------------------------------------------------------------------------------------------------
# DMP: SD 1.x UNets (diffusers UNet2DConditionModel kwargs)

# The SD 1.x block layout at toy width: 3 cross-attention down blocks + 1 plain, 2 layers each, so the same
# 16 transformer blocks / 32 attention processors (the module names DMP's LoRA keys use). Widths are multiples of
# 32 (GroupNorm) and 8 heads as in SD 1.x, so ComfyUI's SD15 config can hold the same weights.
TINY_SD_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
# CompVis/stable-diffusion-v1-4 unet/config.json (the base DMP was trained on), for shape checks and benchmarks.
SD14_UNET = dict(TINY_SD_UNET, sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768)


def tiny_sd_unet(seed: int = 3, scale: float = 0.05, **overrides) -> nn.Module:
    """A diffusers UNet2DConditionModel (needs diffusers) in the SD 1.x layout with random non-zero weights."""
    from diffusers import UNet2DConditionModel

    return randomize_(UNet2DConditionModel(**{**TINY_SD_UNET, **overrides}), seed, scale).eval()


def random_dmp_lora(
    unet: nn.Module, rank: int = 4, seed: int = 4, scale: float = 0.2, source: str = "random LoRA"
) -> LoraWeights:
    """A LoRA in DMP's layout (q, k, v, out of every attn1/attn2) with random non-zero up and down weights."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name, shape in sorted(module_weight_shapes(unet).items()):
        if (".attn1." in name or ".attn2." in name) and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            down = torch.randn(rank, shape[1], generator=g) * scale  # [r, in]
            up = torch.randn(shape[0], rank, generator=g) * scale  # [out, r]
            modules[name] = LoraModule(down, up)
    return LoraWeights(modules, source, "attn_processor")


def random_jointnet(
    unet_config: Mapping[str, Any], has_masked_latent_input: bool = False, seed: int = 0, scale: float = 0.2
) -> JointNetRGBD:
    """A JointNet with random non-zero weights everywhere (exchange convs included), for tests and benchmarks."""
    ex = ExchangeConfig.from_unet_config({**unet_config, "has_masked_latent_input": has_masked_latent_input})
    rgb = randomize_(build_branch(unet_config, ex), seed, scale)
    depth = randomize_(build_branch(unet_config, ex), seed + 1, scale)
    return JointNetRGBD(rgb, depth).eval()


class BlockAutoencoder(nn.Module):
    """A linear autoencoder with diffusers' ``AutoencoderKL`` interface, for training tests: the latent of each 8×8
    block holds the block's mean R, G and B and its horizontal luminance slope (an orthonormal projection), and the
    decoder is the transpose. It reconstructs block averages exactly, so a depth map decoded from a predicted latent
    can be scored against the truth; a random AutoencoderKL would decode noise and hide what training learned.
    """

    def __init__(self, factor: int = 8, scaling_factor: float = 0.18215, posterior_std: float = 0.01):
        super().__init__()
        from types import SimpleNamespace

        f = factor
        ramp = torch.linspace(-1, 1, f).expand(f, f)  # [f,f] varies along x
        basis = torch.zeros(4, 3, f, f)
        for c in range(3):
            basis[c, c] = 1.0  # block mean of channel c
        basis[3] = ramp / 3.0  # horizontal slope of the luminance
        basis = basis.flatten(1)
        basis = basis / basis.norm(dim=1, keepdim=True)  # orthonormal rows: [4, 3·f·f]
        self.register_buffer("basis", basis, persistent=False)
        self.factor, self.posterior_std = f, posterior_std
        self.config = SimpleNamespace(scaling_factor=scaling_factor, latent_channels=4)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def encode(self, x: torch.Tensor):
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        b, _, h, w = x.shape
        f = self.factor
        patches = x.reshape(b, 3, h // f, f, w // f, f).permute(0, 2, 4, 1, 3, 5).reshape(b, h // f, w // f, -1)
        mean = (patches @ self.basis.to(x.dtype).T).permute(0, 3, 1, 2)  # [B,4,h,w]
        logvar = torch.full_like(mean, 2 * math.log(self.posterior_std))
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)))

    def decode(self, z: torch.Tensor):
        from diffusers.models.autoencoders.vae import DecoderOutput

        b, _, h, w = z.shape
        f = self.factor
        patches = z.permute(0, 2, 3, 1) @ self.basis.to(z.dtype)  # [B,h,w,3·f·f]
        x = patches.reshape(b, h, w, 3, f, f).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, h * f, w * f)
        return DecoderOutput(sample=x)


# ----------------------------------------------------------------------------------------------------------
# Official-format folders (diffusers / transformers layouts) for the standalone pipelines and the CLI

TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_clip_text(folder: str, seed: int = 5) -> None:
    """``text_encoder/`` (CLIPTextModel, 32 wide) and ``tokenizer/`` (CLIP BPE over single letters) in ``folder``."""
    import json
    import os

    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _LETTERS:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tok = os.path.join(folder, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    with open(os.path.join(tok, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(tok, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    special = {"unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    with open(os.path.join(tok, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_max_length": 77, "pad_token": "<|endoftext|>", **special}, f)
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=77, **ids, **TINY_CLIP_TEXT)
    randomize_(CLIPTextModel(config), seed, 0.1).save_pretrained(os.path.join(folder, "text_encoder"))


def write_t5_text(folder: str, seed: int = 6) -> None:
    """``text_encoder/`` (T5EncoderModel, 32 wide) and ``tokenizer/`` (a unigram vocabulary of letters)."""
    import os

    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{c}", -1.0) for c in _LETTERS] + [(c, -2.0) for c in _LETTERS]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(os.path.join(folder, "tokenizer"))
    model = T5EncoderModel(T5Config(vocab_size=len(vocab), **TINY_T5))
    randomize_(model, seed, 0.1).save_pretrained(os.path.join(folder, "text_encoder"))


def write_sd_folder(folder: str, unet: nn.Module | None = None, vae: nn.Module | None = None, text: bool = True) -> str:
    """A local diffusers Stable Diffusion folder: ``unet/`` (if given), ``vae/``, ``text_encoder/``, ``tokenizer/``
    and ``scheduler/`` (SD's scaled-linear schedule, DDIM with leading spacing and steps_offset 1)."""
    import os

    from diffusers import DDIMScheduler

    if unet is not None:
        unet.save_pretrained(os.path.join(folder, "unet"))
    (vae if vae is not None else tiny_vae()).save_pretrained(os.path.join(folder, "vae"))
    if text:
        write_clip_text(folder)
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(os.path.join(folder, "scheduler"))
    return folder


def write_pixart_folder(
    folder: str, transformer: nn.Module | None = None, vae: nn.Module | None = None, text: bool = True
) -> str:
    """A local diffusers PixArt-α folder: ``transformer/``, ``vae/``, ``scheduler/`` (DPM-Solver++) and, with
    ``text``, a tiny T5 ``text_encoder/`` + ``tokenizer/``."""
    import os

    from diffusers import DPMSolverMultistepScheduler

    (transformer if transformer is not None else tiny_pixart()).save_pretrained(os.path.join(folder, "transformer"))
    (vae if vae is not None else tiny_vae()).save_pretrained(os.path.join(folder, "vae"))
    if text:
        write_t5_text(folder)
    DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        os.path.join(folder, "scheduler")
    )
    return folder
