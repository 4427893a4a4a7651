"""Tiny ComfyUI models for the ComfyUI-layer tests (imported only when a real ComfyUI is present)."""

import torch

from unidense_core.tiny import TINY_PIXART, tiny_vae


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


def comfy_sd15_from_diffusers(comfy, unet):
    """ComfyUI's SD15 model (its own UNetModel) holding a diffusers UNet2DConditionModel's weights."""
    cfg = unet.config
    n = len(cfg.block_out_channels)
    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": cfg.block_out_channels[0],
        "num_res_blocks": [cfg.layers_per_block] * n,
        "channel_mult": [c // cfg.block_out_channels[0] for c in cfg.block_out_channels],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_linear_in_transformer": False,
        "context_dim": cfg.cross_attention_dim,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    model_config = comfy.supported_models.SD15(unet_config)  # sets num_heads 8, as SD 1.x
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    mapping = comfy.utils.unet_to_diffusers(model_config.unet_config)
    missing, unexpected = model.diffusion_model.load_state_dict(
        {mapping[k]: v for k, v in unet.state_dict().items()}, strict=False
    )
    assert not missing and not unexpected, (missing, unexpected)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_vae(comfy):
    """A real ComfyUI VAE (comfy.sd.VAE) holding the weights of the tiny diffusers VAE."""
    import comfy.sd as comfy_sd  # imported here: ComfyUI is on sys.path only in the ComfyUI tests

    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return comfy_sd.VAE(sd=tiny_vae().state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})
