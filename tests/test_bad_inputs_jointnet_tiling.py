"""Bad inputs of the JointNet, panorama, circular-VAE and file nodes: every row raises a clear error naming the input.

Each row runs a node's ``execute`` in the real ComfyUI (tiny official-format JointNet folders, the tiny VAE) or the
core function behind it, through ``tests/bad_inputs.py::run_case`` (no raw IndexError/KeyError/TypeError/
ZeroDivisionError, no hang). The valid-call tests at the end check that nothing valid returns NaN/Inf and that a
refused export writes no file.
"""

import json
import os
import shutil

import pytest
import torch
from bad_inputs import Case, run_case
from comfy_tiny import comfy_vae

from unidense_core.dense.geometry3d import depth_from_map, save_geometry
from unidense_core.jointnet.inpaint import as_mask
from unidense_core.jointnet.model import ExchangeConfig, save_jointnet
from unidense_core.tiling.panorama import PRESETS, check_canvas
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 8  # latent side of the tiny runs (64 px)
NAN, INF = float("nan"), float("inf")


def cond(seed=0):
    return [[torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def with_bad(x: torch.Tensor, value=NAN, index=None) -> torch.Tensor:
    x = x.clone()
    x[index if index is not None else (0,) * x.ndim] = value
    return x


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_jointnet")
    out = tmp_path_factory.mktemp("bad_output")
    comfy.folder_paths.add_model_folder_path("jointnet", str(root), is_default=True)
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=3), root / "bad_gen")
    save_jointnet(random_jointnet(TINY_SD21_UNET, True, seed=5), root / "bad_inp")
    loader = comfy.node("UniDense_JointNetLoader")
    old_out = comfy.folder_paths.get_output_directory()
    comfy.folder_paths.set_output_directory(str(out))
    yield dict(
        comfy=comfy,
        root=root,
        out=out,
        gen=loader.execute("bad_gen", "fp32")[0],
        inp=loader.execute("bad_inp", "fp32")[0],
        vae=comfy_vae(comfy),
        node=comfy.node,
    )
    comfy.folder_paths.set_output_directory(old_out)


# ----------------------------------------------------------------------------------------------------------------
# Helpers that run one node


def broken_folder(env, name: str, edit_config=None, edit_files=None) -> str:
    """A copy of the tiny generation folder with its unet/config.json (or files) broken; returns its model name."""
    dst = env["root"] / name
    if not dst.exists():
        shutil.copytree(env["root"] / "bad_gen", dst)
        cfg_path = dst / "unet" / "config.json"
        if edit_config is not None:
            cfg = json.loads(cfg_path.read_text())
            cfg_path.write_text(json.dumps(edit_config(cfg)))
        if edit_files is not None:
            edit_files(dst)
    return name


def load_broken(env, name: str, edit_config=None, edit_files=None):
    return load(env, broken_folder(env, name, edit_config, edit_files))


def config_text(text: str):
    return lambda folder: (folder / "unet" / "config.json").write_text(text)


def load(env, name, dtype="fp32"):
    return env["node"]("UniDense_JointNetLoader").execute(name, dtype)


def edited(**changes):
    def edit(cfg):
        for k, v in changes.items():
            if v is DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        return cfg

    return edit


DROP = object()


def inpaint(env, preset="rgb2j", model="inp", **kw):
    return env["node"]("UniDense_ChannelInpaintRGBD").execute(env[model], cond(), cond(1), preset, **kw)


def img(b=1, h=64, w=64, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def sample_ksampler(env, model, pos, neg, latent, steps=1):
    return env["comfy"].nodes.common_ksampler(model, 0, steps, 7.5, "euler", "ddim_uniform", pos, neg, latent)


def sample_custom_advanced(env, model, pos, neg, latent, steps=1):
    nodes = env["comfy"].nodes.NODE_CLASS_MAPPINGS
    guider = nodes["CFGGuider"]().get_guider(model, pos, neg, 7.5)[0]
    sampler = nodes["KSamplerSelect"]().get_sampler("euler")[0]
    sigmas = nodes["BasicScheduler"]().get_sigmas(model, "ddim_uniform", steps, 1.0)[0]
    noise = nodes["RandomNoise"]().get_noise(0)[0]
    return nodes["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, latent)


def empty_latent(env, w=64, h=64):
    return env["comfy"].nodes.NODE_CLASS_MAPPINGS["EmptyLatentImage"]().generate(w, h, 1)[0]


def inpaint_then_sample(env, model_key, route, latent_of):
    model, pos, neg, latent = inpaint(env, "rgb2j", model_key, rgbd_latent={"samples": torch.randn(1, 8, H, W)}).args
    return route(env, model, pos, neg, latent_of(env, latent))


def other_latent_same_size(env, latent):
    return {"samples": torch.randn_like(latent["samples"]), "noise_mask": latent["noise_mask"]}


def tiled(env, preset="jointnet_pano", **custom):
    args = dict(
        window=0,
        stride=32,
        circular=True,
        random_offset=True,
        full_canvas_fraction=0.4,
        full_canvas_weight=5.0,
        boundary=8,
        ramp_axes="x",
        view_batch_size=8,
        seed=0,
    )
    args.update(custom)
    return env["node"]("UniDense_TiledPanorama").execute(env["gen"], preset, **args)[0]


def tiled_run(env, preset, width_px, height_px, latent=None):
    model = tiled(env, preset)
    latent = latent or empty_latent(env, width_px, height_px)
    return sample_ksampler(env, model, cond(), cond(1), latent)


def save3d(
    env,
    image=None,
    depth=None,
    projection="perspective",
    kind="disparity",
    fmt="glb_mesh",
    scale=1.0,
    shift=0.05,
    fov=60.0,
    step=1,
    ratio=0.0,
    prefix="bad/rgbd",
):
    image = img(1, 8, 8) if image is None else image
    depth = img(1, 8, 8, seed=1) if depth is None else depth
    node = env["node"]("UniDense_SaveRGBD3D")
    return node.execute(image, depth, projection, kind, fmt, scale, shift, fov, step, ratio, prefix)


def depth16(env, depth, normalize=False, prefix="bad/depth"):
    return env["node"]("UniDense_SaveDepth16").execute(depth, prefix, normalize)


def decode(env, z, padding=1, offset=0):
    return env["node"]("UniDense_CircularVAEDecode").execute({"samples": z}, env["vae"], padding, offset)


def encode(env, pixels, padding=1):
    return env["node"]("UniDense_CircularVAEEncode").execute(pixels, env["vae"], padding)


def z8(b=1, h=H, w=W):
    return {"samples": torch.randn(b, 8, h, w)}


def split(env, latent):
    return env["node"]("UniDense_SplitRGBDLatent").execute(latent)


def join(env, rgb, depth):
    return env["node"]("UniDense_JoinRGBDLatent").execute({"samples": rgb}, {"samples": depth})


def depth_decode(env, latent, normalize="none"):
    return env["node"]("UniDense_JointNetDepthDecode").execute(env["vae"], latent, True, normalize)


def stripes():
    """Depth 0/1 in alternate columns: every triangle spans a far/near ratio of about 100."""
    return (torch.arange(8).remainder(2).float()[None, None, :, None]).expand(1, 8, 8, 3)


def remove_depth_branch(folder):
    shutil.rmtree(folder / "jointnet")


def truncate_weights(folder):
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


# ----------------------------------------------------------------------------------------------------------------
# The table: (node, what, call(env), message regex)

# fmt: off
ROWS = [
    # JointNetLoader: combo values through the API, names, malformed folders and configs
    ("JointNetLoader", "weight_dtype_unknown", lambda e: load(e, "bad_gen", "fp64"), r"weight_dtype must be one of"),
    ("JointNetLoader", "model_missing", lambda e: load(e, "no_such_model"), r"'no_such_model' was not found"),
    ("JointNetLoader", "model_name_empty", lambda e: load(e, ""), r"model_name must name a folder"),
    ("JointNetLoader", "model_name_outside", lambda e: load(e, "../../etc"), r"'\.\./\.\./etc' was not found"),
    ("JointNetLoader", "config_not_json", lambda e: load_broken(e, "c_json", edit_files=config_text("{not json")),
     r"config\.json' is not valid JSON"),
    ("JointNetLoader", "config_is_list", lambda e: load_broken(e, "c_list", edit_files=config_text("[1, 2]")),
     r"config\.json' should hold a JSON object"),
    ("JointNetLoader", "config_no_block_out", lambda e: load_broken(e, "c_blocks", edited(block_out_channels=DROP)),
     r"config\.json'.*'block_out_channels' must be"),
    ("JointNetLoader", "config_block_out_text", lambda e: load_broken(e, "c_bo", edited(block_out_channels="32,64")),
     r"'block_out_channels' must be"),
    ("JointNetLoader", "config_no_cross_attention", lambda e: load_broken(e, "c_x", edited(cross_attention_dim=DROP)),
     r"'cross_attention_dim' is missing"),
    ("JointNetLoader", "config_down_blocks", lambda e: load_broken(e, "c_d", edited(down_block_types=["DownBlock2D"])),
     r"'down_block_types' must list 2"),
    ("JointNetLoader", "config_heads_length", lambda e: load_broken(e, "c_h", edited(attention_head_dim=[2, 4, 8])),
     r"'attention_head_dim' must be 2 positive"),
    ("JointNetLoader", "config_groups_not_dividing", lambda e: load_broken(e, "c_g", edited(norm_num_groups=24)),
     r"norm_num_groups=24 does not divide"),
    ("JointNetLoader", "config_in_channels_text", lambda e: load_broken(e, "c_i", edited(in_channels="four")),
     r"'in_channels' must be a positive integer"),
    ("JointNetLoader", "config_flip_sin", lambda e: load_broken(e, "c_f", edited(flip_sin_to_cos=False)),
     r"flip_sin_to_cos=False is not supported inside ComfyUI"),
    ("JointNetLoader", "weights_truncated", lambda e: load_broken(e, "c_t", edit_files=truncate_weights),
     r"not a readable safetensors file"),
    ("JointNetLoader", "depth_branch_missing", lambda e: load_broken(e, "c_n", edit_files=remove_depth_branch),
     r"lacks 'jointnet/'"),
    # ChannelInpaintRGBD: combo, images, depth, masks, latents, and the LATENT the sampler gets
    ("ChannelInpaintRGBD", "preset_unknown", lambda e: inpaint(e, "depth2rgb"), r"preset must be one of"),
    ("ChannelInpaintRGBD", "image_nan", lambda e: inpaint(e, vae=e["vae"], image=with_bad(img(), NAN, (0, 5, 7, 1))),
     r"image has 1 non-finite.*B=0, H=5, W=7, C=1"),
    ("ChannelInpaintRGBD", "image_empty_batch", lambda e: inpaint(e, vae=e["vae"], image=img(b=0)), r"image is empty"),
    ("ChannelInpaintRGBD", "image_0x0", lambda e: inpaint(e, vae=e["vae"], image=img(h=0, w=0)), r"image is empty"),
    ("ChannelInpaintRGBD", "image_2_channels", lambda e: inpaint(e, vae=e["vae"], image=img(c=2)),
     r"image must have 3 or 4 channels"),
    ("ChannelInpaintRGBD", "depth_inf", lambda e: inpaint(e, "j2rgb", vae=e["vae"], depth=with_bad(img(), INF)),
     r"depth has 1 non-finite.*Inf: 1"),
    ("ChannelInpaintRGBD", "depth_out_of_range", lambda e: inpaint(e, "j2rgb", vae=e["vae"], depth=img() * 8),
     r"depth holds values in \[.*\]; JointNet's depth input is a \[0, 1\] map"),
    ("ChannelInpaintRGBD", "image_depth_batches", lambda e: inpaint(e, "custom", vae=e["vae"], image=img(2),
     depth=img(3), rgb_mask=torch.ones(1, 64, 64)), r"image has 2 images but depth has 3"),
    ("ChannelInpaintRGBD", "rgb_mask_nan", lambda e: inpaint(e, "custom", rgbd_latent=z8(),
     rgb_mask=with_bad(torch.ones(1, 64, 64))), r"rgb_mask has 1 non-finite"),
    ("ChannelInpaintRGBD", "depth_mask_empty", lambda e: inpaint(e, "custom", rgbd_latent=z8(),
     depth_mask=torch.ones(0, 64, 64)), r"depth_mask is empty"),
    ("ChannelInpaintRGBD", "masks_all_keep", lambda e: inpaint(e, "custom", rgbd_latent=z8(),
     rgb_mask=torch.zeros(1, 64, 64), depth_mask=torch.zeros(1, 64, 64)),
     r"Nothing would be generated.*rgb_mask and depth_mask are 0.*PNG has no alpha"),
    ("ChannelInpaintRGBD", "rgbd_latent_nan", lambda e: inpaint(e, rgbd_latent={"samples": with_bad(z8()["samples"])}),
     r"rgbd_latent has 1 non-finite.*B=0, C=0, h=0, w=0"),
    ("ChannelInpaintRGBD", "rgbd_latent_empty", lambda e: inpaint(e, rgbd_latent=z8(b=0)), r"rgbd_latent is empty"),
    ("ChannelInpaintRGBD", "rgbd_latent_not_latent", lambda e: inpaint(e, rgbd_latent=torch.randn(1, 8, H, W)),
     r"rgbd_latent must be a LATENT"),
    ("ChannelInpaintRGBD", "ksampler_empty_latent_inp", lambda e: inpaint_then_sample(e, "inp", sample_ksampler,
     lambda e, _: empty_latent(e)), r"no noise mask.*Connect the 'latent' output"),
    ("ChannelInpaintRGBD", "ksampler_other_size_gen", lambda e: inpaint_then_sample(e, "gen", sample_ksampler,
     lambda e, _: empty_latent(e, 128, 96)), r"no noise mask.*'latent' output"),
    ("ChannelInpaintRGBD", "custom_advanced_empty_latent", lambda e: inpaint_then_sample(e, "gen",
     sample_custom_advanced, lambda e, _: empty_latent(e)), r"no noise mask.*'latent' output"),
    ("ChannelInpaintRGBD", "custom_advanced_other_latent", lambda e: inpaint_then_sample(e, "inp",
     sample_custom_advanced, other_latent_same_size), r"differs from the one.*returned"),
    ("ChannelInpaintRGBD", "masked_latent_other_size", lambda e: inpaint_then_sample(e, "gen", sample_ksampler,
     lambda e, _: {"samples": torch.zeros(1, 8, 12, 16), "noise_mask": torch.ones(1, 1, 12, 16)}),
     r"sample the LATENT"),
    # Split / Join / depth decode
    ("SplitRGBDLatent", "inf", lambda e: split(e, {"samples": with_bad(z8()["samples"], INF)}),
     r"rgbd_latent has 1 non-finite"),
    ("SplitRGBDLatent", "plain_latent", lambda e: split(e, {"samples": torch.randn(1, 4, H, W)}), r"nothing to split"),
    ("SplitRGBDLatent", "empty", lambda e: split(e, z8(b=0)), r"rgbd_latent is empty"),
    ("JoinRGBDLatent", "sizes", lambda e: join(e, torch.randn(1, 4, H, W), torch.randn(1, 4, H, 2 * W)),
     r"rgb latent is .* depth latent is"),
    ("JoinRGBDLatent", "depth_nan", lambda e: join(e, torch.randn(1, 4, H, W), with_bad(torch.randn(1, 4, H, W))),
     r"depth_latent has 1 non-finite"),
    ("JoinRGBDLatent", "batches", lambda e: join(e, torch.randn(2, 4, H, W), torch.randn(3, 4, H, W)),
     r"Batch sizes differ"),
    ("JointNetDepthDecode", "normalize_unknown", lambda e: depth_decode(e, z8(), "minmax"), r"normalize must be one"),
    ("JointNetDepthDecode", "channels", lambda e: depth_decode(e, {"samples": torch.randn(1, 5, H, W)}),
     r"latent must have 4 or 8 channels"),
    ("JointNetDepthDecode", "nan", lambda e: depth_decode(e, {"samples": with_bad(z8()["samples"])}),
     r"latent has 1 non-finite"),
    # TiledPanorama: combos and NaN through the API, canvases a preset cannot tile
    ("TiledPanorama", "preset_unknown", lambda e: tiled(e, "pano"), r"preset must be one of"),
    ("TiledPanorama", "ramp_axes_unknown", lambda e: tiled(e, "custom", ramp_axes="y"), r"ramp_axes must be one of"),
    ("TiledPanorama", "weight_nan", lambda e: tiled(e, "custom", full_canvas_weight=NAN),
     r"full_canvas_weight must be a finite"),
    ("TiledPanorama", "stride_over_window", lambda e: tiled(e, "custom", window=16, stride=24),
     r"stride \(24\) is larger than the window \(16\)"),
    ("TiledPanorama", "preset_width", lambda e: tiled_run(e, "jointnet_pano", 8 * 72, 8 * 32),
     r"multiple of the stride \(32\).*Choose a width of 512 or 768 px.*preset = custom"),
    ("TiledPanorama", "preset_refine_height", lambda e: tiled_run(e, "jointnet_refine", 8 * 96, 8 * 32),
     r"window \(64 latent px = 512 px\) is larger than the canvas height.*at least 512 px tall.*preset = custom"),
    ("TiledPanorama", "latent_nan", lambda e: tiled_run(e, "jointnet_pano", 0, 0,
     {"samples": with_bad(torch.zeros(1, 8, 32, 64))}), r"latent being sampled.*has 1 non-finite"),
    # Circular VAE decode / encode
    ("CircularVAEDecode", "nan", lambda e: decode(e, with_bad(torch.randn(1, 4, 4, 8))), r"samples has 1 non-finite"),
    ("CircularVAEDecode", "empty", lambda e: decode(e, torch.randn(0, 4, 4, 8)), r"samples is empty"),
    ("CircularVAEDecode", "padding_over_width", lambda e: decode(e, torch.randn(1, 4, 4, 8), 9),
     r"padding is 9 latent px.*only 8 latent px \(64 image px\)"),
    ("CircularVAEDecode", "channel_offset", lambda e: decode(e, torch.randn(1, 8, 4, 8), 1, 6),
     r"channels 6\.\.9 do not exist"),
    ("CircularVAEEncode", "0x0", lambda e: encode(e, img(h=0, w=0)), r"pixels is empty"),
    ("CircularVAEEncode", "nan", lambda e: encode(e, with_bad(img(1, 32, 64))), r"pixels has 1 non-finite"),
    ("CircularVAEEncode", "padding_over_width", lambda e: encode(e, img(1, 32, 32), 5),
     r"padding is 5 latent px.*only 4 latent px \(32 image px\)"),
    ("CircularVAEEncode", "2_channels", lambda e: encode(e, img(1, 32, 64, c=2)), r"pixels must have 3 or 4"),
    # SaveRGBD3D
    ("SaveRGBD3D", "image_nan", lambda e: save3d(e, image=with_bad(img(1, 8, 8))), r"image has 1 non-finite"),
    ("SaveRGBD3D", "depth_nan", lambda e: save3d(e, depth=with_bad(img(1, 8, 8), NAN, (0, 2, 3, 0))),
     r"depth has 1 non-finite.*B=0, H=2, W=3"),
    ("SaveRGBD3D", "one_pixel_mesh", lambda e: save3d(e, img(1, 1, 1), img(1, 1, 1)), r"mesh has no triangle"),
    ("SaveRGBD3D", "image_0x0", lambda e: save3d(e, img(1, 0, 0), img(1, 0, 0)), r"image is empty"),
    ("SaveRGBD3D", "empty_batch", lambda e: save3d(e, img(0, 8, 8), img(1, 8, 8)), r"image is empty"),
    ("SaveRGBD3D", "projection_unknown", lambda e: save3d(e, projection="fisheye"), r"projection must be one of"),
    ("SaveRGBD3D", "format_unknown", lambda e: save3d(e, fmt="obj"), r"format must be one of"),
    ("SaveRGBD3D", "depth_kind_unknown", lambda e: save3d(e, kind="metres"), r"depth_kind must be one of"),
    ("SaveRGBD3D", "scale_nan", lambda e: save3d(e, scale=NAN), r"scale must be a finite number"),
    ("SaveRGBD3D", "max_ratio_one", lambda e: save3d(e, ratio=1.0), r"max_depth_ratio\) must be 0 \(off\) or > 1"),
    ("SaveRGBD3D", "all_triangles_dropped", lambda e: save3d(e, depth=stripes(), kind="depth", shift=0.01, ratio=2.0),
     r"mesh has no triangle.*max_depth_ratio"),
    ("SaveRGBD3D", "tall_cylinder", lambda e: save3d(e, projection="cylindrical_360"),
     r"reaches 157.5° above and below the horizon.*under 90°"),
    ("SaveRGBD3D", "prefix_outside", lambda e: save3d(e, prefix="../../outside/x"), r"filename_prefix '\.\./"),
    # SaveDepth16
    ("SaveDepth16", "nan", lambda e: depth16(e, with_bad(torch.rand(1, 8, 8))), r"depth has 1 non-finite"),
    ("SaveDepth16", "empty_batch", lambda e: depth16(e, torch.rand(0, 8, 8)), r"depth is empty"),
    ("SaveDepth16", "0x0", lambda e: depth16(e, torch.rand(1, 0, 0)), r"depth is empty"),
    ("SaveDepth16", "out_of_range", lambda e: depth16(e, torch.rand(1, 8, 8) * 8),
     r"depth holds values in .* quantile_normalize"),
    # Core functions behind the nodes
    ("core", "check_canvas_preset", lambda e: check_canvas(32, 72, PRESETS["jointnet_pano"], preset="jointnet_pano"),
     r"preset = custom to set the window and stride"),
    ("core", "exchange_config_types", lambda e: ExchangeConfig.from_unet_config({"block_out_channels": None}),
     r"not a valid UNet config"),
    ("core", "depth_from_map_nan", lambda e: depth_from_map(with_bad(torch.rand(4, 4)), "disparity"),
     r"depth has 1 non-finite"),
    ("core", "save_geometry_nan", lambda e: save_geometry(str(e["out"] / "x.glb"), with_bad(torch.rand(4, 3)),
     torch.zeros(4, 3, dtype=torch.uint8), None, "glb_points"), r"3D vertices .* non-finite"),
    ("core", "as_mask_nan", lambda e: as_mask(with_bad(torch.ones(1, 4, 4)), "rgb_mask"), r"rgb_mask has 1 non-finite"),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_bad_input_is_a_clear_error(env, row):
    node, what, call, match = row
    run_case(Case(node, what, lambda: call(env), match))


def test_table_covers_every_node():
    owned = {
        "JointNetLoader",
        "ChannelInpaintRGBD",
        "SplitRGBDLatent",
        "JoinRGBDLatent",
        "JointNetDepthDecode",
        "TiledPanorama",
        "CircularVAEDecode",
        "CircularVAEEncode",
        "SaveRGBD3D",
        "SaveDepth16",
    }
    assert owned <= {r[0] for r in ROWS} and len(ROWS) >= 40


# ----------------------------------------------------------------------------------------------------------------
# Valid calls: every tensor out is finite; a refused export leaves no file


def finite(*tensors):
    for t in tensors:
        assert isinstance(t, torch.Tensor) and t.numel() > 0 and torch.isfinite(t).all()


def test_valid_jointnet_calls_are_finite(env):
    node, vae = env["node"], env["vae"]
    image, depth = img(2, seed=1), img(1, seed=2)
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:40, 16:48] = 1
    calls = [
        dict(preset="rgb2j", vae=vae, image=image),
        dict(preset="j2rgb", vae=vae, depth=depth[..., :1], depth_near_white=False),
        dict(preset="custom", vae=vae, image=image, depth=depth, rgb_mask=mask),
        dict(preset="custom", rgbd_latent=z8(), depth_mask=mask[:, ::8, ::8]),  # a latent-size mask
    ]
    for kw in calls:
        model, pos, neg, latent = inpaint(env, **kw).args
        finite(latent["samples"], latent["noise_mask"])
        if "noise_concat" in pos[0][1]:
            finite(pos[0][1]["noise_concat"], neg[0][1]["noise_concat"])
    for key, route in (("gen", sample_ksampler), ("inp", sample_custom_advanced)):
        z = torch.randn(1, 8, H, W, generator=torch.Generator().manual_seed(4))
        model, pos, neg, latent = inpaint(env, "rgb2j", key, rgbd_latent={"samples": z}).args
        out = route(env, model, pos, neg, latent, steps=2)[0]["samples"]
        finite(out)
        assert torch.equal(out[:, :4], z[:, :4])  # the kept image, bit for bit, on both sampler routes
    rgb, dep = node("UniDense_SplitRGBDLatent").execute(z8(2)).args
    finite(rgb["samples"], dep["samples"], node("UniDense_JoinRGBDLatent").execute(rgb, dep)[0]["samples"])
    for normalize in ("none", "quantile", "per_image", "per_batch"):
        for z in (z8(), {"samples": torch.zeros(1, 4, 2, 2)}):  # a constant latent: min == max
            finite(*node("UniDense_JointNetDepthDecode").execute(vae, z, True, normalize).args)


def test_valid_panorama_and_file_calls_are_finite(env):
    latent = {"samples": torch.randn(1, 8, 32, 64, generator=torch.Generator().manual_seed(0))}
    finite(tiled_run(env, "jointnet_pano", 0, 0, latent)[0]["samples"])
    finite(decode(env, torch.randn(1, 8, 4, 8), 8, 4)[0], encode(env, img(1, 32, 64), 8)[0]["samples"])
    trimesh = pytest.importorskip("trimesh")
    zeros = torch.zeros(1, 8, 16, 3)  # disparity 0 with shift 0: the far clip, never inf
    for fmt, image, depth, shift in (("glb_mesh", img(1, 8, 16), zeros, 0.0), ("glb_points", img(1, 1, 1), None, 0.05)):
        first = save3d(env, image, depth if depth is not None else img(1, 1, 1), "perspective", fmt=fmt, shift=shift)
        scene = trimesh.load(os.path.join(env["out"], first[0]), process=False)
        geom = next(iter(scene.geometry.values()))
        assert len(geom.vertices) > 0 and torch.isfinite(torch.as_tensor(geom.vertices)).all()
        assert fmt != "glb_mesh" or len(geom.faces) > 0
    flat = torch.full((2, 8, 8), 0.25)  # quantile_normalize of a constant map: 0, not NaN
    (name,) = depth16(env, flat, normalize=True).args
    assert os.path.isfile(os.path.join(env["out"], name))


def test_refused_export_writes_no_file(env):
    before = set(os.listdir(env["out"]))
    image = img(2, 8, 8)
    image[1, 3, 3, 0] = NAN  # the second image is bad: the first must not be written either
    with pytest.raises(ValueError, match=r"image has 1 non-finite.*B=1"):
        save3d(env, image, img(2, 8, 8), prefix="refused/x")
    with pytest.raises(ValueError, match=r"mesh has no triangle"):
        save3d(env, img(1, 1, 8), img(1, 1, 8), prefix="refused/y")
    assert set(os.listdir(env["out"])) == before and not os.path.exists(os.path.join(env["out"], "refused"))


def test_all_zero_edit_mask_warns(env, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        inpaint(env, "custom", rgbd_latent=z8(), rgb_mask=torch.zeros(1, 64, 64), depth_mask=torch.ones(1, 64, 64))
    assert "rgb_mask is 0 (keep) everywhere" in caplog.text and "PNG has no alpha" in caplog.text


def test_comfy_conversion_refuses_only_what_it_cannot_compute(env):
    import sys

    host = next(m for k, m in sys.modules.items() if k.endswith("nodes.hosts.jointnet"))
    base = json.loads((env["root"] / "bad_gen" / "unet" / "config.json").read_text())
    same = host.ldm_unet_config(base, "base")
    for equivalent in (dict(only_cross_attention=[False, False]), dict(mid_block_only_cross_attention=False)):
        assert host.ldm_unet_config({**base, **equivalent}, "eq") == same
    with pytest.raises(ValueError, match=r"only_cross_attention=\[True, False\] is not supported inside ComfyUI"):
        host.ldm_unet_config({**base, "only_cross_attention": [True, False]}, "'x/config.json'")
