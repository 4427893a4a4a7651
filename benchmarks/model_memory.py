"""Weight memory of each method's models, computed from their real configs on the meta device (nothing allocated).

    python benchmarks/model_memory.py

Counts the parameters of every model a workflow loads and prints their bytes in the dtypes ComfyUI 0.3.64 uses by
default: on a GPU fp16 for all of them; on the CPU fp32 for diffusion models and the VAE and fp16 for text encoders
(``model_management.unet_dtype`` / ``vae_dtype`` / ``text_encoder_dtype``). These are the weights only: activations
at the workflows' sizes and ComfyUI itself come on top (not computed here). ComfyUI offloads the text encoder after
encoding, so on a GPU the peak is about the largest of (text encoder) and (diffusion model + VAE).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1e9


def count(build) -> int:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
    )


def t5_xxl_encoder():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128)
    cfg.feed_forward_proj = "gated-gelu"
    cfg.is_gated_act, cfg.dense_act_fn = True, "gelu_new"
    return T5EncoderModel(cfg)


def clip_text(hidden: int, layers: int, heads: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads
    )
    return CLIPTextModel(cfg)


def dmp_lora_params() -> int:
    from diffusers import UNet2DConditionModel

    from unidense_core.tiny import SD14_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD14_UNET)
    n = 0
    for name, m in unet.named_modules():
        if (".attn1." in name or ".attn2." in name) and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            n += 4 * (m.in_features + m.out_features)  # rank 4: down [4, in] + up [out, 4]
    return n


def main() -> None:
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    from unidense_core.jointnet.model import SD21_BASE_UNET, ExchangeConfig, build_branch
    from unidense_core.merge.converters import ConverterConfig, MergeConverters
    from unidense_core.tiny import PIXART_XL_512, SD14_UNET

    sd21 = SD21_BASE_UNET
    ex = ExchangeConfig.from_unet_config({**SD21_BASE_UNET, "has_masked_latent_input": True})
    vae = count(sd_vae)
    # (method, component, parameters, kind) with kind: "diffusion", "vae" or "text"
    rows = [
        ("MERGE-B", "PixArt-XL-2-512x512 transformer", count(lambda: PixArtTransformer2DModel(**PIXART_XL_512)), "d"),
        ("MERGE-B", "depth converters (14 blocks)", count(lambda: MergeConverters(ConverterConfig())), "d"),
        ("MERGE-B", "SD VAE", vae, "v"),
        ("MERGE-B", "T5-XXL encoder (generation only)", count(t5_xxl_encoder), "t"),
        ("DMP", "SD 1.4 UNet", count(lambda: UNet2DConditionModel(**SD14_UNET)), "d"),
        ("DMP", "task LoRA (rank 4)", dmp_lora_params(), "d"),
        ("DMP", "SD VAE", vae, "v"),
        ("DMP", "CLIP ViT-L/14 text encoder", count(lambda: clip_text(768, 12, 12)), "t"),
        ("JointNet", "2 x SD 2.1 UNet + exchange layers", 2 * count(lambda: build_branch(SD21_BASE_UNET, ex)), "d"),
        ("JointNet", "SD VAE", vae, "v"),
        ("JointNet", "OpenCLIP ViT-H text encoder", count(lambda: clip_text(1024, 24, 16)), "t"),
        ("JointNet", "SD 2.1 UNet of the checkpoint (unused)", count(lambda: UNet2DConditionModel(**sd21)), "u"),
    ]
    cpu_bytes = {"d": 4, "v": 4, "t": 2, "u": 4}  # "u": loaded by Load Checkpoint with CLIP + VAE, never sampled
    print(f"{'method':9} {'component':36} {'params':>9} {'GPU fp16':>9} {'CPU':>9}")
    totals: dict[str, list[float]] = {}
    for method, name, n, kind in rows:
        gpu, cpu = n * 2 / GB, n * cpu_bytes[kind] / GB
        print(f"{method:9} {name:36} {n / 1e6:8.1f}M {gpu:8.2f}G {cpu:8.2f}G")
        t = totals.setdefault(method, [0.0, 0.0, 0.0, 0.0])
        t[0] += gpu
        t[1] += cpu
        if kind in ("d", "v"):
            t[2] += gpu  # what sampling needs on the GPU: diffusion model + VAE (the text encoder is offloaded)
            t[3] += cpu
    for method, (gpu, cpu, gpu_sampling, cpu_sampling) in totals.items():
        print(
            f"{method}: all weights {gpu:.2f} GB in fp16 / {cpu:.2f} GB as ComfyUI holds them on the CPU; "
            f"diffusion model + VAE {gpu_sampling:.2f} GB fp16 / {cpu_sampling:.2f} GB on the CPU"
        )


if __name__ == "__main__":
    main()
