"""Bad inputs for MERGE-L (FLUX.1-dev): every row must raise quickly with a message naming the input and the fix.

Core rows need no ComfyUI; node rows run the real nodes in a real ComfyUI (tests/comfyui_env.py).
"""

import json

import pytest
import torch
from bad_inputs import Case, run_case

from unidense_core.merge.converters import save_converters
from unidense_core.merge.flux_converters import FluxConverterConfig, load_flux_converters, save_flux_converters
from unidense_core.merge.flux_forward import MergeFluxTransformer
from unidense_core.merge.flux_pipeline import MergeFluxPipeline
from unidense_core.merge.variants import load_merge_converters
from unidense_core.tiny import tiny_converters, tiny_flux, tiny_flux_converters, tiny_flux_vae, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Official-layout folders and broken files, written once."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("merge_l_bad")
    save_flux_converters(tiny_flux_converters(), root / "merge-large-depth-v1" / "depth_converters")
    save_converters(tiny_converters(), root / "merge-base-depth-v1" / "depth_converters")
    good = root / "merge-large-depth-v1" / "depth_converters" / "diffusion_pytorch_model.safetensors"
    raw = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    save_file(tiny_flux().state_dict(), root / "flux_transformer.safetensors")
    save_file({"transformer.single_blocks.0.lora_A.weight": torch.zeros(2, 2)}, root / "flux_lora.safetensors")
    full = root / "full_config" / "depth_converters"
    full.mkdir(parents=True)
    (full / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel", "num_layers": 19}))
    save_file(tiny_flux_converters().state_dict(), full / "diffusion_pytorch_model.safetensors")
    return root


def pipe():
    empty = (torch.randn(1, 4, 32), torch.randn(1, 16))
    return MergeFluxPipeline(tiny_flux(), tiny_flux_converters(), tiny_flux_vae(), empty_prompt=empty)


def depth_call(z, image_latent):
    conv = tiny_flux_converters()
    ctx, pooled, sigma = torch.randn(1, 4, 32), torch.randn(1, 16), torch.tensor([0.5])
    return MergeFluxTransformer(tiny_flux(), conv)(z, sigma, ctx, pooled, "depth", image_latent=image_latent)


Z = torch.randn(1, 16, 8, 8)
# (node, what, call(root), expected message)
CORE_ROWS = [
    ("load_flux_converters", "merge_b_folder", lambda r: load_flux_converters(r / "merge-base-depth-v1"), "MERGE-B"),
    ("load_flux_converters", "truncated", lambda r: load_flux_converters(r / "truncated.safetensors"), "truncated"),
    ("load_flux_converters", "full_flux_file", lambda r: load_flux_converters(r / "flux_transformer.safetensors"),
     "full FLUX transformer"),
    ("load_flux_converters", "lora", lambda r: load_flux_converters(r / "flux_lora.safetensors"), "LoRA"),
    ("load_flux_converters", "full_flux_config", lambda r: load_flux_converters(r / "full_config"),
     "full FLUX transformer config"),
    ("load_flux_converters", "missing", lambda r: load_flux_converters(r / "nowhere"), "not found.*merge-large"),
    ("load_merge_converters", "flux_file", lambda r: load_merge_converters(r / "flux_transformer.safetensors"), "FLUX"),
    ("FluxConverterConfig", "in_out_mismatch",
     lambda r: FluxConverterConfig.from_dict({"merge_flux_transformer": True, "in_channels": 64}), "2 × out_channels"),
    ("FluxConverterConfig", "string_groups",
     lambda r: FluxConverterConfig.from_dict({"merge_flux_transformer": True, "num_single_layers": "5"}), "integers"),
    ("MergeFluxTransformer", "schnell",
     lambda r: MergeFluxTransformer(tiny_flux(guidance_embeds=False), tiny_flux_converters()), "schnell"),
    ("MergeFluxTransformer", "pixart_base", lambda r: MergeFluxTransformer(tiny_pixart(), tiny_flux_converters()),
     "not a FLUX transformer"),
    ("MergeFluxTransformer", "other_width",
     lambda r: MergeFluxTransformer(tiny_flux(attention_head_dim=8, axes_dims_rope=(2, 2, 4)), tiny_flux_converters()),
     "width"),
    ("merge_l_forward", "odd_latent", lambda r: depth_call(Z[..., :7], Z[..., :7]), "multiples of 16"),
    ("merge_l_forward", "sd_vae_latent", lambda r: depth_call(Z[:, :4], Z[:, :4]), "FLUX VAE"),
    ("estimate_depth", "tiny_image", lambda r: pipe().estimate_depth(torch.rand(1, 3, 8, 64)), "at least 16"),
    ("estimate_depth", "zero_steps", lambda r: pipe().estimate_depth(torch.rand(1, 3, 32, 32), 0), "at least 1"),
    ("estimate_depth", "posterior_mode", lambda r: pipe().estimate_depth(torch.rand(1, 3, 32, 32), 1, posterior="mean"),
     "'sample'"),
    ("estimate_depth", "latents_not_tensor", lambda r: pipe().estimate_depth(torch.rand(1, 3, 32, 32), 1, None, "x"),
     "latents must"),
]  # fmt: skip


@pytest.mark.parametrize("row", CORE_ROWS, ids=lambda row: f"{row[0]}-{row[1]}")
def test_core_bad_inputs(files, row):
    node, what, call, match = row
    run_case(Case(node, what, lambda: call(files), match))


# ----------------------------------------------------------------------------------------------------------
# Nodes in a real ComfyUI


@pytest.fixture(scope="module")
def env(comfy, files):
    from comfy_tiny import comfy_flux_from_diffusers, comfy_flux_vae, comfy_pixart_from_diffusers, comfy_vae

    comfy.folder_paths.add_model_folder_path("merge_converters", str(files), is_default=True)
    load = comfy.node("UniDense_LoadConverter")
    return dict(
        comfy=comfy,
        flux=comfy_flux_from_diffusers(comfy, tiny_flux()),
        schnell=comfy_flux_from_diffusers(comfy, tiny_flux(guidance_embeds=False)),
        fill=comfy_flux_from_diffusers(comfy, tiny_flux(in_channels=384, out_channels=64)),
        depth_dev=comfy_flux_from_diffusers(comfy, tiny_flux(in_channels=128, out_channels=64)),
        pixart=comfy_pixart_from_diffusers(comfy, tiny_pixart()),
        conv_l=load.execute("merge-large-depth-v1/depth_converters/diffusion_pytorch_model.safetensors", "fp32")[0],
        conv_b=load.execute("merge-base-depth-v1/depth_converters/diffusion_pytorch_model.safetensors", "fp32")[0],
        flux_vae=comfy_flux_vae(comfy),
        sd_vae=comfy_vae(comfy),
    )


def flux_cond(tokens=512, pooled=True):
    extra = {"pooled_output": torch.randn(1, 16)} if pooled else {}
    return [[torch.randn(1, tokens, 32), extra]]


IMAGE = torch.rand(1, 32, 48, 3)
NAN_IMAGE = IMAGE.clone()
NAN_IMAGE[0, 3, 4, 1] = float("nan")


def node(e, node_id):
    return e["comfy"].node(node_id)


def switch(e, model, conv, mode="depth"):
    return node(e, "UniDense_ModeSwitch").execute(e[model], e[conv], mode, "pixart_alpha")


def cond_l(e, cond, vae="flux_vae", image=IMAGE, res=0):
    return node(e, "UniDense_MergeLDepthConditioning").execute(cond, e[vae], image, res)


def depth_without_image(e):
    m = switch(e, "flux", "conv_l")[0]
    latent, c = torch.zeros(1, 16, 4, 6), flux_cond()
    return e["comfy"].sample.sample(m, torch.randn_like(latent), 1, 1.0, "euler", "simple", c, c, latent)


LOAD = "UniDense_LoadConverter"
# (node, what, call(env), expected message)
NODE_ROWS = [
    ("ModeSwitch", "merge_b_on_flux", lambda e: switch(e, "flux", "conv_b"), "MERGE-B converters .*MERGE-L"),
    ("ModeSwitch", "merge_l_on_pixart", lambda e: switch(e, "pixart", "conv_l"), "MERGE-L converters .*PixArt"),
    ("ModeSwitch", "schnell", lambda e: switch(e, "schnell", "conv_l"), "FLUX.1-schnell"),
    ("ModeSwitch", "schnell_generate", lambda e: switch(e, "schnell", "conv_l", "generate"), "FLUX.1-schnell"),
    ("ModeSwitch", "fill_dev", lambda e: switch(e, "fill", "conv_l"), "Fill-dev"),
    ("ModeSwitch", "depth_dev", lambda e: switch(e, "depth_dev", "conv_l"), "Depth-dev"),
    ("LoadConverter", "flux_transformer", lambda e: node(e, LOAD).execute("flux_transformer.safetensors", "auto"),
     "full FLUX transformer"),
    ("LoadConverter", "truncated", lambda e: node(e, LOAD).execute("truncated.safetensors", "auto"), "truncated"),
    ("MergeLDepthConditioning", "no_pooled", lambda e: cond_l(e, flux_cond(pooled=False)), "pooled CLIP"),
    ("MergeLDepthConditioning", "empty_conditioning", lambda e: cond_l(e, []), "non-empty"),
    ("MergeLDepthConditioning", "sd_vae", lambda e: cond_l(e, flux_cond(), "sd_vae"), "16-channel FLUX VAE"),
    ("MergeLDepthConditioning", "nan_image", lambda e: cond_l(e, flux_cond(), image=NAN_IMAGE), "non-finite"),
    ("MergeLDepthConditioning", "tiny_image", lambda e: cond_l(e, flux_cond(), image=torch.rand(1, 8, 48, 3)),
     "at least 16"),
    ("MergeLDepthConditioning", "resolution", lambda e: cond_l(e, flux_cond(), res=100), "multiple of 16"),
    ("MergeDepthConditioning", "flux_vae",
     lambda e: node(e, "UniDense_MergeDepthConditioning").execute(flux_cond(), e["flux_vae"], IMAGE, "native"),
     "MERGE-L Depth Conditioning"),
    ("KSampler", "depth_without_image", depth_without_image, "no image latent"),
]  # fmt: skip


@pytest.mark.parametrize("row", NODE_ROWS, ids=lambda row: f"{row[0]}-{row[1]}")
def test_node_bad_inputs(env, row):
    name, what, call, match = row
    run_case(Case(name, what, lambda: call(env), match))
    assert not env["flux"].wrappers and not env["flux"].get_additional_models()  # inputs are never mutated
