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


def flux_unet_config(diffusers_flux) -> dict:
    """ComfyUI's Flux unet_config for a diffusers FluxTransformer2DModel (what model_detection reads from a file)."""
    cfg = diffusers_flux.config
    return {
        "image_model": "flux",
        "in_channels": cfg.in_channels // 4,  # latent channels; packed 2×2 inside ComfyUI's Flux
        "out_channels": (cfg.out_channels or cfg.in_channels) // 4,
        "vec_in_dim": cfg.pooled_projection_dim,
        "context_in_dim": cfg.joint_attention_dim,
        "hidden_size": cfg.num_attention_heads * cfg.attention_head_dim,
        "mlp_ratio": 4.0,
        "num_heads": cfg.num_attention_heads,
        "depth": cfg.num_layers,
        "depth_single_blocks": cfg.num_single_layers,
        "axes_dim": list(cfg.axes_dims_rope),
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": cfg.guidance_embeds,
    }


def diffusers_flux_to_comfy(comfy, state_dict, unet_config) -> dict:
    """diffusers FLUX keys -> ComfyUI/BFL keys with comfy.utils.flux_to_diffusers: fused qkv (+mlp) rows and the
    final modulation's swapped halves (diffusers (scale, shift) -> BFL (shift, scale))."""
    key_map = comfy.utils.flux_to_diffusers(
        {k: unet_config[k] for k in ("depth", "depth_single_blocks", "hidden_size")}
    )
    out: dict[str, torch.Tensor] = {}
    for dk, target in key_map.items():
        if dk not in state_dict:
            continue
        v = state_dict[dk]
        if isinstance(target, str):
            out[target] = v
        elif target[1] is None:  # (name, None, fn): a transformed copy, e.g. swap_scale_shift
            out[target[0]] = target[2](v)
        else:
            name, (dim, start, size) = target
            if name not in out:
                shape = list(v.shape)
                shape[dim] = 0
                out[name] = torch.empty(shape, dtype=v.dtype)
            buf = out[name]
            if buf.shape[dim] < start + size:
                pad = list(buf.shape)
                pad[dim] = start + size - buf.shape[dim]
                buf = torch.cat([buf, torch.empty(pad, dtype=v.dtype)], dim=dim)
            buf.narrow(dim, start, size).copy_(v)
            out[name] = buf
    return out


def comfy_flux_from_diffusers(comfy, diffusers_flux, weight_dtype=torch.float32, manual_cast_dtype=None):
    """A ComfyUI FLUX MODEL (its own Flux network, as the stock loaders build it) holding the diffusers weights.

    ``weight_dtype=torch.float8_e4m3fn, manual_cast_dtype=torch.float32`` stores the weights in fp8 and computes in
    fp32 through ComfyUI's casting ops, as ComfyUI runs the fp8 FLUX files.
    """
    unet_config = flux_unet_config(diffusers_flux)
    cls = comfy.supported_models.Flux if unet_config["guidance_embed"] else comfy.supported_models.FluxSchnell
    model_config = cls(unet_config)
    model_config.set_inference_dtype(weight_dtype, manual_cast_dtype)
    model = model_config.get_model({})
    sd = diffusers_flux_to_comfy(comfy, diffusers_flux.state_dict(), unet_config)
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_flux_vae(comfy):
    """A real ComfyUI VAE with 16 latent channels, as the FLUX VAE gives (toy width; ComfyUI's config path builds an
    AutoencoderKL with quant convs, which the real ae.safetensors lacks: the latent interface is the same)."""
    import comfy.sd as comfy_sd
    from diffusers import AutoencoderKL

    from unidense_core.tiny import TINY_FLUX_VAE, randomize_

    kw = dict(TINY_FLUX_VAE, use_quant_conv=True, use_post_quant_conv=True)
    ddconfig = {
        "double_z": True,
        "z_channels": 16,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    sd = randomize_(AutoencoderKL(**kw), 7, scale=0.1).state_dict()
    vae = comfy_sd.VAE(sd=sd, config={"params": {"ddconfig": ddconfig, "embed_dim": 16}})
    vae.latent_channels = 16
    return vae
