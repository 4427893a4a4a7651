"""Tiny ComfyUI models for the ComfyUI-layer tests (imported only when a real ComfyUI is present)."""

import torch

from unidense_core.tiny import TINY_PIXART


def comfy_pixart_from_diffusers(comfy, diffusers_model):
    """A ComfyUI PixArt (loaded as PixArt-Σ, as ComfyUI does for α-512) with the diffusers model's weights."""
    cfg = diffusers_model.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    unet_config = {
        "image_model": "pixart_sigma",
        "depth": cfg.num_layers,
        "hidden_size": hidden,
        "num_heads": cfg.num_attention_heads,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "caption_channels": cfg.caption_channels,
        "model_max_length": 8,
        "micro_condition": False,
        "pe_interpolation": None,
    }
    model_config = comfy.supported_models.PixArtSigma(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    key_map = comfy.utils.pixart_to_diffusers({"depth": cfg.num_layers, "hidden_size": hidden})
    src = diffusers_model.state_dict()
    out = {}
    for dk, target in key_map.items():
        if dk not in src:
            continue
        if isinstance(target, str):
            out[target] = src[dk]
        else:
            name, (dim, start, size) = target[0], target[1]
            if name not in out:
                shape = list(src[dk].shape)
                shape[dim] = 0
                out[name] = torch.empty(shape)
            buf = out[name]
            need = start + size
            if buf.shape[dim] < need:
                pad = list(buf.shape)
                pad[dim] = need - buf.shape[dim]
                buf = torch.cat([buf, torch.empty(pad)], dim=dim)
            buf.narrow(dim, start, size).copy_(src[dk])
            out[name] = buf
    missing, unexpected = model.diffusion_model.load_state_dict(out, strict=False)
    missing = [k for k in missing if not k.endswith("y_embedding")]  # the CFG null caption is unused here
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        model.diffusion_model.y_embedder.y_embedding.normal_()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def tiny_pixart_config():
    return dict(TINY_PIXART)
