"""TiledPanorama, circular VAE and 3D export in a real ComfyUI: stock samplers, ControlNet hints cut per tile,
mask/area conds, SD1.x UNets (4 and 8 channels) and PixArt.

Skipped (with the reason) unless $COMFYUI_PATH names a ComfyUI checkout; run with ComfyUI's own Python.
"""

import os

import pytest
import torch

from unidense_core.tiling.panorama import PanoramaConfig, draw_offsets, gather, tiled_denoise
from unidense_core.tiny import randomize_

CPU = torch.device("cpu")
CTX = 32  # cross-attention width of the tiny models
# ComfyUI's SD15 UNet config at toy size (2 levels, 1 res block each, cross-attention at both levels)
TINY_UNET = dict(
    use_checkpoint=False,
    image_size=32,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    adm_in_channels=None,
    in_channels=4,
    model_channels=32,
    num_res_blocks=[1, 1],
    transformer_depth=[1, 1],
    channel_mult=[1, 2],
    transformer_depth_middle=1,
    use_linear_in_transformer=False,
    context_dim=CTX,
    transformer_depth_output=[1, 1, 1, 1],
    use_temporal_attention=False,
    use_temporal_resblock=False,
)
NODE_ARGS = dict(
    preset="custom",
    window=0,
    stride=4,
    circular=True,
    random_offset=True,
    full_canvas_fraction=0.4,
    full_canvas_weight=5.0,
    boundary=2,
    ramp_axes="x",
    view_batch_size=3,
    seed=11,
)


# ----------------------------------------------------------------------------------------------------------------
# Tiny models


def sd_unet(comfy, channels=4, seed=0):
    """A ComfyUI SD1.x MODEL (ModelPatcher) with random non-zero weights; ``channels`` in = out (8 = RGB-D)."""
    cfg = comfy.supported_models.SD15(dict(TINY_UNET, in_channels=channels, out_channels=channels))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    model.concat_keys = ()  # ComfyUI would take in_channels > 4 for an inpainting UNet (mask + image concat)
    randomize_(model.diffusion_model, seed, scale=0.1)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


class Pointwise(torch.nn.Module):
    """A per-pixel 'network' (1×1 mixing + context), so a tiled result must equal the untiled one exactly. Its input
    is the latent plus a 4-channel spatial c_concat (ComfyUI's ``noise_concat`` conditioning)."""

    def __init__(self, channels=4, seed=0):
        super().__init__()
        self.dtype = torch.float32
        self.mix = torch.nn.Conv2d(2 * channels, channels, 1)
        self.ctx = torch.nn.Linear(CTX, channels)
        randomize_(self, seed, scale=0.3)

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        return torch.tanh(self.mix(x)) + self.ctx(context.mean(1))[..., None, None] * (
            1 + timesteps[:, None, None, None] / 1e3
        )


def pointwise_model(comfy):
    patcher = sd_unet(comfy)
    patcher.model.diffusion_model = Pointwise()
    return comfy.model_patcher.ModelPatcher(patcher.model, load_device=CPU, offload_device=CPU)


def tiny_controlnet(seed=5):
    import comfy.cldm.cldm as cldm
    import comfy.controlnet as controlnet
    import comfy.ops as ops

    cfg = {k: v for k, v in TINY_UNET.items() if k != "out_channels"}
    net = cldm.ControlNet(hint_channels=3, num_heads=8, num_head_channels=-1, operations=ops.disable_weight_init, **cfg)
    randomize_(net, seed, scale=0.1)
    return controlnet.ControlNet(net, load_device=CPU, manual_cast_dtype=None)


def cond(seed=0, tokens=3, **extra):
    return [[torch.randn(1, tokens, CTX, generator=torch.Generator().manual_seed(seed)), dict(extra)]]


def panorama(comfy, model, **overrides):
    return comfy.node("UniDense_TiledPanorama").execute(model, **{**NODE_ARGS, **overrides})[0]


def sample(comfy, model, shape, pos=None, neg=None, steps=3, cfg=3.0, sampler="euler", seed=1):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    latent = torch.zeros(shape)
    pos = cond(0) if pos is None else pos
    neg = cond(1) if neg is None else neg
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, "normal", pos, neg, latent, seed=seed, disable_pbar=True
    )


def core_euler(comfy, model, shape, config, seed_offsets, steps=3, cfg=3.0, seed=1, tokens=3):
    """The same run without ComfyUI's sampler: Euler on the core's tiled_denoise with apply_model per tile (through
    the model's own wrappers, e.g. JointNet's two-branch forward)."""
    import comfy.patcher_extension as pe

    comfy.model_management.load_models_gpu([model, *model.get_nested_additional_models()])
    options = {"wrappers": pe.copy_nested_dicts(model.wrappers)}
    bm = model.model
    ms = bm.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", steps)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)  # EPS noise scaling at sigma_max
    offsets = draw_offsets(steps, config.stride, torch.Generator().manual_seed(seed_offsets))
    pos, neg = cond(0, tokens)[0][0], cond(1, tokens)[0][0]
    with torch.no_grad():
        for i in range(steps):
            s = sigmas[i]

            def fn(tiles, views, s=s):
                n = tiles.shape[0]  # one call for uncond and cond, in ComfyUI's batch order
                ctx = torch.cat([neg.expand(n, -1, -1), pos.expand(n, -1, -1)])
                x2, t2 = torch.cat([tiles, tiles]), s.expand(2 * n)
                d_neg, d_pos = bm.apply_model(x2, t2, c_crossattn=ctx, transformer_options=options).chunk(2)
                return [d_pos, d_neg]

            d_pos, d_neg = tiled_denoise(fn, x, config, step=i, num_steps=steps, offset=offsets[i])
            d = d_neg + (d_pos - d_neg) * cfg
            x = x + (x - d) / s * (sigmas[i + 1] - s)
    return bm.process_latent_out(x)


def node_config(**overrides):
    a = {**NODE_ARGS, **overrides}
    return PanoramaConfig(
        window=a["window"] or None,
        stride=a["stride"],
        circular=a["circular"],
        random_offset=a["random_offset"],
        full_canvas_fraction=a["full_canvas_fraction"],
        full_canvas_weight=a["full_canvas_weight"],
        boundary=a["boundary"],
        ramp_axes=a["ramp_axes"],
        view_batch_size=a["view_batch_size"],
    )


ONE_TILE = dict(stride=8, random_offset=False, full_canvas_fraction=0.0, boundary=0)


# ----------------------------------------------------------------------------------------------------------------
# Registration


def test_nodes_register_with_tooltips(comfy):
    for node_id, category in (
        ("UniDense_TiledPanorama", "UniDense/Panorama"),
        ("UniDense_CircularVAEDecode", "UniDense/Panorama"),
        ("UniDense_CircularVAEEncode", "UniDense/Panorama"),
        ("UniDense_SaveRGBD3D", "UniDense/3D"),
    ):
        info = comfy.node(node_id).GET_NODE_INFO_V1()
        assert info["category"] == category and info["display_name"]
        for name, spec in info["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_node_returns_a_clone_and_replaces_itself(comfy):
    base = sd_unet(comfy)
    m = panorama(comfy, base)
    m2 = panorama(comfy, m, seed=3)
    assert not base.wrappers and base.model_options == {"transformer_options": {}}
    assert len(m2.wrappers["calc_cond_batch"]["unidense_panorama"]) == 1
    with pytest.raises(ValueError, match="random_offset"):
        panorama(comfy, base, circular=False)


# ----------------------------------------------------------------------------------------------------------------
# Exactness and parity


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_one_full_tile_equals_untiled_sd15(comfy, sampler):
    base = sd_unet(comfy)
    shape = (1, 4, 8, 8)
    ref = sample(comfy, base, shape, sampler=sampler, steps=2)
    out = sample(comfy, panorama(comfy, base, **ONE_TILE), shape, sampler=sampler, steps=2)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("channels", [4, 8])
def test_comfy_sampler_matches_core_loop(comfy, channels):
    """Through KSampler's path (CALC_COND_BATCH wrapper, offsets per step, whole canvas for i <= int(0.4·N)) ==
    Euler on the core's tiled_denoise. 8 channels: an RGB-D-sized MODEL tiles like any other."""
    base = sd_unet(comfy, channels)
    shape = (1, channels, 8, 16)
    out = sample(comfy, panorama(comfy, base), shape)
    ref = core_euler(comfy, base, shape, node_config(), NODE_ARGS["seed"])
    assert out.shape == shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)  # fp32 batch effects; a misplaced tile is O(0.1)
    other_seed = sample(comfy, panorama(comfy, base, seed=12), shape)
    assert not torch.allclose(other_seed, out, atol=1e-3)  # the offsets matter


def test_pixart_tiles(comfy):
    import comfy.patcher_extension as patcher_extension
    from comfy_tiny import comfy_pixart_from_diffusers

    from unidense_core.tiny import tiny_pixart

    base = comfy_pixart_from_diffusers(comfy, tiny_pixart())
    pos, neg = [[torch.randn(1, 3, 32), {}]], [[torch.randn(1, 3, 32), {}]]
    one = dict(ONE_TILE, stride=34)
    square = (1, 4, 34, 34)  # ComfyUI's PixArt needs (H+W)/2 >= 33 latent px per tile
    ref = sample(comfy, base, square, pos, neg, steps=2)
    assert torch.equal(sample(comfy, panorama(comfy, base, **one), square, pos, neg, steps=2), ref)
    seen = []

    def spy(executor, *args, **kw):
        seen.append(tuple(args[0].shape))
        return executor(*args, **kw)

    m = panorama(comfy, base, stride=17, view_batch_size=2)
    m.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    wide = sample(comfy, m, (1, 4, 34, 68), pos, neg, steps=2)
    assert torch.isfinite(wide).all() and wide.shape == (1, 4, 34, 68)
    # step 0 (the whole canvas joins: int(2·0.4) = 0): 2 batches of 2 tiles × (cond, uncond) + the canvas;
    # step 1: the tiles only
    assert seen == [(4, 4, 34, 34), (4, 4, 34, 34), (2, 4, 34, 68), (4, 4, 34, 34), (4, 4, 34, 34)]


@pytest.fixture(scope="module")
def jointnet(comfy, tmp_path_factory):
    """The real JointNet RGB-D MODEL ('UniDense Load JointNet' on a tiny official-format folder)."""
    from unidense_core.jointnet.model import save_jointnet
    from unidense_core.tiny import TINY_SD21_UNET, random_jointnet

    root = tmp_path_factory.mktemp("jointnet_pano")
    comfy.folder_paths.add_model_folder_path("jointnet", str(root), is_default=True)
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=3), root / "rgbd_pano_tiny")
    return comfy.node("UniDense_JointNetLoader").execute("rgbd_pano_tiny", "fp32")[0]


def test_jointnet_rgbd_panorama(comfy, jointnet):
    """TiledPanorama on the 8-channel JointNet MODEL makes RGB-D panoramas: one whole tile == untiled, and a wide
    canvas through KSampler == the core loop over the model's own two-branch forward."""
    pos, neg = cond(0, 5), cond(1, 5)
    square = (1, 8, 8, 8)
    ref = sample(comfy, jointnet, square, pos, neg, steps=2)
    assert torch.equal(sample(comfy, panorama(comfy, jointnet, **ONE_TILE), square, pos, neg, steps=2), ref)
    wide = (1, 8, 8, 16)
    out = sample(comfy, panorama(comfy, jointnet), wide, pos, neg)
    ref = core_euler(comfy, jointnet, wide, node_config(), NODE_ARGS["seed"], tokens=5)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out[:, :4], out[:, 4:], atol=1e-2)  # two different halves: image and depth


# ----------------------------------------------------------------------------------------------------------------
# ControlNet, masks, areas


def controlled(comfy, hint, pos=None, neg=None, strength=1.0):
    apply = comfy.nodes.ControlNetApplyAdvanced()
    pos = cond(0) if pos is None else pos
    neg = cond(1) if neg is None else neg
    return apply.apply_controlnet(pos, neg, tiny_controlnet(), hint, strength, 0.0, 1.0)


def position_hint(height_px, width_px, seed=0):
    """An IMAGE whose channels encode the column and row, so any crop tells where it came from."""
    yy, xx = torch.meshgrid(torch.arange(height_px), torch.arange(width_px), indexing="ij")
    noise = torch.rand(height_px, width_px, generator=torch.Generator().manual_seed(seed))
    return torch.stack([xx / width_px, yy / height_px, noise], dim=-1)[None].float()


def test_controlnet_hint_is_cut_per_tile(comfy, monkeypatch):
    import comfy.controlnet as controlnet

    base = sd_unet(comfy)
    height, width, steps = 8, 16, 3
    hint = position_hint(height * 8, width * 8)
    pos, neg = controlled(comfy, hint)
    calls = []
    original = controlnet.ControlNet.get_control

    def recording(self, x_noisy, t, cond_, batched_number, transformer_options):
        out = original(self, x_noisy, t, cond_, batched_number, transformer_options)
        calls.append((float(t[0]), x_noisy.shape[0] // batched_number, self.cond_hint.clone()))
        return out

    monkeypatch.setattr(controlnet.ControlNet, "get_control", recording)
    out = sample(comfy, panorama(comfy, base), (1, 4, height, width), pos, neg, steps=steps)
    assert torch.isfinite(out).all()
    ms = base.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", steps).tolist()
    full_hint = hint.movedim(-1, 1)  # [1,3,64,256], the canvas' pixel size already
    tiler_cfg = node_config()
    offsets = draw_offsets(steps, tiler_cfg.stride, torch.Generator().manual_seed(NODE_ARGS["seed"]))
    from unidense_core.tiling.panorama import include_full_canvas, plan_views

    for step in range(steps):
        views = plan_views(height, width, tiler_cfg, offsets[step], include_full_canvas(step, steps, 0.4))
        expected = [gather(full_hint, v, 8) for v in views]
        seen = []
        for t, n_tiles, h in calls:
            if abs(t - sigmas[step]) < 1e-6 * sigmas[step]:
                seen += [h[i : i + 1] for i in range(n_tiles)] if h.shape[0] > 1 else [h]
        assert len(seen) == len(expected)  # one ControlNet evaluation per tile (cond and uncond batched)
        for got, want in zip(seen, expected, strict=True):
            assert torch.equal(got, want)  # each tile sees exactly its own part of the hint (wrapped, rolled)
        assert any(v.is_full for v in views) == (step <= 1)
    assert any(h.shape[-1] == 8 * 8 and not torch.equal(h[:1, 0, 0, 0], full_hint[:1, 0, 0, 0]) for _, _, h in calls)


def test_controlnet_one_full_tile_equals_untiled(comfy):
    base = sd_unet(comfy)
    hint = position_hint(64, 64)
    pos, neg = controlled(comfy, hint)
    ref = sample(comfy, base, (1, 4, 8, 8), pos, neg, steps=2)
    pos, neg = controlled(comfy, hint)
    assert torch.equal(sample(comfy, panorama(comfy, base, **ONE_TILE), (1, 4, 8, 8), pos, neg, steps=2), ref)
    assert not torch.equal(sample(comfy, base, (1, 4, 8, 8), steps=2), ref)  # the ControlNet does act


def test_hint_of_another_aspect_is_an_error(comfy):
    base = sd_unet(comfy)
    pos, neg = controlled(comfy, position_hint(64, 64))
    with pytest.raises(ValueError, match=r"aspect .*resize or pad the hint image to 256×64 px"):
        sample(comfy, panorama(comfy, base), (1, 4, 8, 32), pos, neg)


def test_mask_and_area_conds_match_untiled(comfy):
    """With a per-pixel network every tiling gives the untiled result, if masks and areas are cut correctly
    (including areas that wrapped tiles cut at the seam). Plain areas here are < 8 latent px (or span the width) to
    avoid ComfyUI's area edge feathering, whose ramp length depends on the crop size."""
    model = pointwise_model(comfy)
    height, width = 8, 32
    mask = torch.rand(1, height, width, generator=torch.Generator().manual_seed(3))
    spatial = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(4))  # a spatial model cond
    pos = cond(0) + cond(2, mask=mask, mask_strength=0.7) + cond(3, area=(4, 7, 3, 20), strength=0.8)
    pos += cond(4, area=(4, width, 2, 0))  # the full width: continuous across the seam in wrapped tiles
    # area + mask (what ConditioningSetMask's set_area_to_bounds makes; no feathering): wrapped tiles see both ends
    pos += cond(6, area=(3, 26, 5, 3), mask=mask.flip(-1), strength=0.5)
    neg = cond(1) + cond(5, mask=1 - mask)
    for c in pos + neg:
        c[1]["noise_concat"] = spatial
    shape = (1, 4, height, width)
    ref = sample(comfy, model, shape, pos, neg)
    out = sample(comfy, panorama(comfy, model), shape, pos, neg)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)  # fp32 rounding; a misplaced crop is O(1)
    plain = [[c[0], {"noise_concat": spatial}] for c in cond(0) + cond(1)]
    ungated = sample(comfy, model, shape, plain[:1], plain[1:])
    assert not torch.allclose(ungated, ref, atol=1e-3)  # the masks and areas do matter
    shifted = [[c[0], {**c[1], "noise_concat": torch.roll(spatial, 1, -1)}] for c in pos]
    assert not torch.allclose(sample(comfy, panorama(comfy, model), shape, shifted, neg), ref, atol=1e-3)


def test_bad_canvas_fails_before_sampling(comfy):
    base = sd_unet(comfy)
    with pytest.raises(ValueError, match="multiple of the stride"):
        sample(comfy, panorama(comfy, base), (1, 4, 8, 30))
    with pytest.raises(ValueError, match="larger than the canvas height"):
        sample(comfy, panorama(comfy, base, window=16), (1, 4, 8, 32))


# ----------------------------------------------------------------------------------------------------------------
# Circular VAE


class LocalVAE:
    """A stand-in with ComfyUI's VAE interface whose decoder/encoder are local (zero-padded 3×3 blur)."""

    latent_channels = 4

    def spacial_compression_decode(self):
        return 8

    def spacial_compression_encode(self):
        return 8

    @staticmethod
    def _blur(x):
        k = torch.full((x.shape[1], 1, 3, 3), 1 / 9)
        return torch.nn.functional.conv2d(x, k, padding=1, groups=x.shape[1])

    def decode(self, z):  # [B,4,h,w] -> IMAGE [B,8h,8w,3]
        up = z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2)
        return self._blur(up).movedim(1, -1)

    def encode(self, pixels):  # IMAGE -> [B,4,h/8,w/8]
        x = self._blur(pixels.movedim(-1, 1))
        z = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([z, z[:, :1]], dim=1)


def test_circular_decode_and_encode_have_no_seam(comfy):
    dec, enc, vae = comfy.node("UniDense_CircularVAEDecode"), comfy.node("UniDense_CircularVAEEncode"), LocalVAE()
    z = torch.randn(1, 8, 4, 12)

    def decode(latent, offset=0, padding=8):
        return dec.execute({"samples": latent}, vae, padding, offset)[0]

    img = decode(z)
    assert img.shape == (1, 32, 96, 3)
    assert torch.allclose(decode(torch.roll(z, 5, -1)), torch.roll(img, 40, 2), atol=1e-6)  # seamless
    assert not torch.allclose(decode(torch.roll(z, 5, -1), padding=0), torch.roll(decode(z, padding=0), 40, 2))
    assert torch.allclose(decode(z, offset=4), decode(z[:, 4:]))  # the depth half of an RGB-D latent
    with pytest.raises(ValueError, match="channel_offset 0, or 4"):
        decode(z, offset=6)
    pixels = torch.rand(1, 32, 96, 3)
    lat = enc.execute(pixels, vae, 2)[0]["samples"]
    assert lat.shape == (1, 4, 4, 12)
    assert torch.allclose(enc.execute(torch.roll(pixels, 16, 2), vae, 2)[0]["samples"], torch.roll(lat, 2, -1))
    with pytest.raises(ValueError, match="multiples of 8"):
        enc.execute(torch.rand(1, 32, 90, 3), vae, 2)


# ----------------------------------------------------------------------------------------------------------------
# 3D export


def test_save_rgbd_3d_writes_into_the_output_folder(comfy, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    old = comfy.folder_paths.get_output_directory()
    comfy.folder_paths.set_output_directory(str(tmp_path))
    try:
        node = comfy.node("UniDense_SaveRGBD3D")
        image = torch.rand(2, 16, 64, 3)
        depth = torch.rand(1, 8, 32, 3)  # another size: resized to the image
        out = node.execute(image, depth, "cylindrical_360", "disparity", "glb_mesh", 1.0, 0.05, 60.0, 2, 0.0, "pano/x")
    finally:
        comfy.folder_paths.set_output_directory(old)
    model_file = out.args[0]
    assert model_file == "pano/x_00001_.glb"
    assert out.ui["result"] == [model_file, None]  # what core Preview3D shows
    assert [r["filename"] for r in out.ui["3d"]] == ["x_00001_.glb", "x_00002_.glb"]
    assert all(r["subfolder"] == "pano" and r["type"] == "output" for r in out.ui["3d"])
    mesh = next(iter(trimesh.load(os.path.join(tmp_path, model_file), process=False).geometry.values()))
    assert len(mesh.vertices) == 8 * 32 and len(mesh.faces) == 7 * 32 * 2
    with pytest.raises(ValueError, match="2:1"):
        node.execute(image, depth, "equirectangular", "disparity", "glb_mesh", 1.0, 0.05, 60.0, 1, 0.0, "pano/x")


def test_panorama_workflows_are_shipped():
    import json

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")
    types = {}
    for name in ("panorama_sd_360", "panorama_controlnet", "panorama_jointnet_rgbd_to_glb"):
        with open(os.path.join(folder, name + ".json"), encoding="utf-8") as f:
            types[name] = {n["type"] for n in json.load(f)["nodes"]}
        assert {"UniDense_TiledPanorama", "UniDense_CircularVAEDecode", "UniDense_OfficialDDIMKSampler"} <= types[name]
    assert "ControlNetApplyAdvanced" in types["panorama_controlnet"]
    assert {"UniDense_JointNetLoader", "UniDense_SaveRGBD3D", "Preview3D"} <= types["panorama_jointnet_rgbd_to_glb"]
