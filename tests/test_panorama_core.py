"""Panorama tiling core: layout, weights, exactness, wrap equivariance, and parity with the official JointNet loop."""

import math

import pytest
import torch
from torch import nn

from unidense_core.tiling.panorama import (
    PRESETS,
    PanoramaConfig,
    View,
    area_runs,
    batch_views,
    check_canvas,
    circular_pad,
    crop_pad,
    draw_offsets,
    gather,
    include_full_canvas,
    plan_views,
    preset,
    scatter_add_,
    tile_weight,
    tiled_apply,
    tiled_denoise,
    weight_sum,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# Toy denoisers


class ToyEps(nn.Module):
    """ε-model whose output depends on the content (zero-padded conv: tile borders matter), on the position inside
    its input (so a misplaced tile shows), on the context and on t. Any channel count."""

    def __init__(self, channels: int = 8, ctx_dim: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1).to(F64)
        self.ctx = nn.Linear(ctx_dim, channels).to(F64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.3)

    def forward(self, z, t, ctx):  # z [N,C,h,w], ctx [N,D]
        h, w = z.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
        pos = torch.sin(0.37 * xx + 0.11 * yy)  # [h,w], tile-local
        return torch.tanh(self.conv(z)) + 0.3 * pos * self.ctx(ctx)[..., None, None] + 1e-3 * t


class CircularConv(nn.Module):
    """A denoiser that commutes with horizontal rolls (circular padding in x, none needed in y)."""

    def __init__(self, channels: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(channels, channels, 1, 5, generator=g, dtype=F64) * 0.3)

    def forward(self, x):
        return torch.tanh(nn.functional.conv2d(nn.functional.pad(x, (2, 2, 0, 0), mode="circular"), self.weight))


def small(**kw) -> PanoramaConfig:
    """The official settings scaled to a 16-high latent (window 16, stride 8, ramp 4)."""
    return PanoramaConfig(**{"stride": 8, "boundary": 4, "view_batch_size": 3, **kw})


# ----------------------------------------------------------------------------------------------------------------
# Layout, presets, weights


def test_official_layout_512x2048():
    views = plan_views(64, 256, PRESETS["jointnet_pano"], offset=5, include_full=True)
    tiles = [v for v in views if not v.is_full]
    assert [v.left for v in tiles] == [(32 * k + 5) % 256 for k in range(8)]
    assert all((v.top, v.height, v.width) == (0, 64, 64) for v in tiles)
    assert views[-1] == View(0, 5, 64, 256, is_full=True)  # the full canvas, shifted by the same offset
    batches = batch_views(views, 8)
    assert [len(b) for b in batches] == [8, 1] and batches[-1][0].is_full


def test_presets_are_the_official_settings():
    pano, refine, md = PRESETS["jointnet_pano"], PRESETS["jointnet_refine"], PRESETS["multidiffusion"]
    assert (pano.window, pano.stride, pano.circular, pano.random_offset) == (None, 32, True, True)
    assert (pano.full_canvas_fraction, pano.full_canvas_weight, pano.boundary, pano.ramp_axes) == (0.4, 5.0, 8, "x")
    assert (refine.window, refine.stride, refine.circular, refine.random_offset) == (64, 32, False, False)
    assert (refine.full_canvas_fraction, refine.ramp_axes, refine.boundary, refine.denoise) == (0.0, "xy", 8, 0.4)
    assert (md.stride, md.boundary, md.random_offset, md.full_canvas_fraction) == (8, 0, False, 0.0)
    assert preset("jointnet_pano", stride=16).stride == 16
    with pytest.raises(ValueError, match="preset must be one of"):
        preset("nope")


def test_full_canvas_steps_follow_official_rule():
    steps = [i for i in range(50) if include_full_canvas(i, 50, 0.4)]
    assert steps == list(range(21))  # i <= int(50 * 0.4)
    assert not any(include_full_canvas(i, 50, 0.0) for i in range(50))


def test_tile_weight_matches_official_formula():
    v = View(0, 0, 64, 64)
    w = tile_weight(v, PRESETS["jointnet_pano"], F64)
    x = torch.arange(64, dtype=F64) + 0.5
    expected = (32 - (x - 32).abs()).clamp(0, 8) / 8
    assert torch.equal(w, expected.expand(64, 64))
    assert w[0, 0] == 0.0625 and w[0, 8] == 1.0  # edge pixel 0.5/8, ramp complete after 8 px
    wxy = tile_weight(v, PRESETS["jointnet_refine"], F64)
    assert torch.equal(wxy, torch.minimum(expected[None, :], expected[:, None]))
    assert torch.equal(tile_weight(View(0, 3, 64, 256, True), PRESETS["jointnet_pano"]), torch.full((64, 256), 5.0))
    assert torch.equal(tile_weight(v, PRESETS["multidiffusion"]), torch.ones(64, 64))


@pytest.mark.parametrize("offset", [0, 3, 7])
@pytest.mark.parametrize("full", [False, True])
def test_weights_sum_correctly_everywhere_including_the_seam(offset, full):
    cfg = small()
    height, width = 16, 64
    views = plan_views(height, width, cfg, offset, include_full=full)
    count = weight_sum(height, width, views, cfg)
    # independent formula: Σ_k ramp((x − 8k − offset) mod W), plus 5 for the full canvas
    x = torch.arange(width, dtype=F64)
    ramp = torch.zeros(width, dtype=F64)
    for k in range(width // 8):
        p = (x - 8 * k - offset) % width
        inside = p < 16
        ramp += torch.where(inside, (8 - (p + 0.5 - 8).abs()).clamp(0, 4) / 4, torch.zeros_like(p))
    expected = ramp.expand(height, width) + (5.0 if full else 0.0)
    assert torch.allclose(count, expected, atol=1e-12)
    assert count.min() > 0
    # a constant and an identity denoiser come back exactly at every pixel, the wrap columns included
    xs = torch.randn(2, 3, height, width, dtype=F64)
    const = tiled_apply(lambda t, vs: torch.full_like(t, 0.7), xs, views, cfg)
    assert torch.allclose(const, torch.full_like(xs, 0.7), atol=1e-12)
    assert torch.allclose(tiled_apply(lambda t, vs: t, xs, views, cfg), xs, atol=1e-12)


def test_gather_and_scatter_wrap():
    canvas = torch.arange(2 * 40, dtype=F64).reshape(2, 40)
    v = View(0, 36, 2, 10)
    tile = gather(canvas, v)
    assert tile.tolist() == [[36, 37, 38, 39, 0, 1, 2, 3, 4, 5], [76, 77, 78, 79, 40, 41, 42, 43, 44, 45]]
    hint = torch.arange(16 * 320, dtype=F64).reshape(16, 320)  # 8 px per latent px
    assert torch.equal(gather(hint, v, scale=8), torch.cat([hint[:, 288:], hint[:, :48]], dim=-1))
    acc = torch.zeros(2, 40, dtype=F64)
    scatter_add_(acc, tile, v)
    assert torch.equal(acc[:, 36:], canvas[:, 36:]) and torch.equal(acc[:, :6], canvas[:, :6])
    assert acc[:, 6:36].abs().sum() == 0


def test_area_runs_in_tile_coordinates():
    v = View(0, 30, 16, 16)  # columns 30..39 then 0..5 of a 40-wide canvas
    assert area_runs((8, 4, 2, 32), v, 40) == [(8, 4, 2, 2)]
    assert area_runs((16, 40, 0, 0), v, 40) == [(16, 16, 0, 0)]  # continuous across the seam: one piece
    assert area_runs((8, 35, 0, 2), v, 40) == [(8, 7, 0, 0), (8, 4, 0, 12)]  # both ends of the area, gap between
    assert area_runs((4, 10, 0, 10), v, 40) == []
    assert area_runs((20, 8, 10, 2), View(8, 0, 16, 16), 40) == [(14, 8, 2, 2)]


def test_offsets_come_from_the_generator():
    a = draw_offsets(50, 32, torch.Generator().manual_seed(3))
    b = draw_offsets(50, 32, torch.Generator().manual_seed(3))
    c = draw_offsets(50, 32, torch.Generator().manual_seed(4))
    assert a == b and a != c and all(0 <= o < 32 for o in a) and len(set(a)) > 5


# ----------------------------------------------------------------------------------------------------------------
# Exactness and equivariance


@pytest.mark.parametrize("circular", [False, True])
def test_one_whole_canvas_tile_is_exactly_untiled(circular):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    net = nn.Conv2d(8, 8, 3, padding=1)
    cfg = PanoramaConfig(stride=16, circular=circular, random_offset=False, full_canvas_fraction=0.0, boundary=0)
    with torch.no_grad():
        out = tiled_denoise(lambda t, vs: net(t), x, cfg)
        assert torch.equal(out, net(x))


def test_rolling_the_canvas_rolls_the_output():
    x = torch.randn(1, 4, 16, 64, dtype=F64)
    net = CircularConv()
    cfg = small()
    with torch.no_grad():
        for k in (1, 3):  # shifts by whole strides, same offset, full canvas on
            a = tiled_denoise(lambda t, vs: net(t), torch.roll(x, 8 * k, -1), cfg, step=0, num_steps=2, offset=5)
            b = torch.roll(tiled_denoise(lambda t, vs: net(t), x, cfg, step=0, num_steps=2, offset=5), 8 * k, -1)
            assert torch.allclose(a, b, atol=1e-12)
        # any shift s: tiles cut the same content when the offset moves with it
        toy = ToyEps(4, seed=2)
        ctx = torch.randn(1, 3, dtype=F64)

        def fn(t, vs):
            return toy(t, 500, ctx.expand(t.shape[0], -1))

        s, o = 13, 2
        a = tiled_denoise(fn, torch.roll(x, s, -1), cfg, step=0, num_steps=2, offset=o)
        b = torch.roll(tiled_denoise(fn, x, cfg, step=0, num_steps=2, offset=o - s), s, -1)
        assert torch.allclose(a, b, atol=1e-12)
        assert not torch.allclose(a, tiled_denoise(fn, x, cfg, step=0, num_steps=2, offset=o), atol=1e-3)


def test_view_batch_size_and_batch_items_are_independent():
    toy = ToyEps(8, seed=1)
    x = torch.randn(2, 8, 16, 64, dtype=F64)
    ctx = torch.randn(2, 3, dtype=F64)

    def fn(t, vs):  # view-major stacking: batch item b of every tile uses context b
        return toy(t, 300, ctx.repeat(len(vs), 1))

    with torch.no_grad():
        ref = tiled_denoise(fn, x, small(view_batch_size=1), step=1, num_steps=4, offset=3)
        assert torch.allclose(tiled_denoise(fn, x, small(view_batch_size=5), step=1, num_steps=4, offset=3), ref)
        one = tiled_denoise(lambda t, vs: toy(t, 300, ctx[1:].repeat(len(vs), 1)), x[1:], small(), 1, 4, 3)
        assert torch.allclose(one, ref[1:], atol=1e-12)


def test_outputs_aggregate_separately_with_shared_weights():
    x = torch.randn(1, 4, 16, 32, dtype=F64)
    a, b = tiled_denoise(lambda t, vs: [t * 2, t + 1], x, small(), offset=1)
    assert torch.allclose(a, 2 * x) and torch.allclose(b, x + 1)


# ----------------------------------------------------------------------------------------------------------------
# Parity with the official procedure (literal re-statement of jointnetpano_pipeline.py's loop, DDIM + CFG)


def sd_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2  # scaled_linear, SD2.1 base
    return torch.cumprod(1 - betas, 0)


def official_views(height, width, window, stride, circular, with_full):
    rows = (height - window) // stride + 1 if height > window else 1
    if circular:
        cols = width // stride if width > window else 1
    else:
        cols = (width - window) // stride + 1 if width > window else 1
    views = [
        (r * stride, r * stride + window, c * stride, c * stride + window) for r in range(rows) for c in range(cols)
    ]
    return views + ([(0, height, 0, width)] if with_full else [])


def official_loop(eps, latents, timesteps, *, window, stride, circular, offsets, vbs, frac, strength, size, xy, g, ctx):
    """The official per-view-batch DDIM aggregation, step by step (batch 1, CFG interleaved per tile)."""
    alphas = sd_alphas()
    n_steps, (height, width) = len(timesteps), latents.shape[-2:]
    views = official_views(height, width, window, stride, circular, frac > 0)
    regular = views[:-1] if frac > 0 else views
    batches = [regular[i : i + vbs] for i in range(0, len(regular), vbs)] + ([views[-1:]] if frac > 0 else [])
    last_full_step = int(n_steps * frac)
    pos = torch.arange(window, dtype=F64) + 0.5
    ramp = (window / 2 - (pos - window / 2).abs()).clamp(0, size) / size
    ramp_w = torch.minimum(ramp[None, :], ramp[:, None]) if xy else ramp[None, :].repeat(window, 1)
    for i, t in enumerate(timesteps):
        value, count = torch.zeros_like(latents), torch.zeros_like(latents)
        off = offsets[i]
        for batch in batches:
            is_full = batch[-1][3] - batch[-1][2] == width
            if is_full and i > last_full_step:
                continue
            crops = []
            for h0, h1, w0, w1 in batch:
                w0, w1 = w0 + off, w1 + off
                if circular and w1 > width:
                    crops.append(torch.cat([latents[..., h0:h1, w0:], latents[..., h0:h1, : w1 - width]], dim=-1))
                else:
                    crops.append(latents[..., h0:h1, w0:w1])
            z = torch.cat(crops)
            z_in = z.repeat_interleave(2, dim=0)  # uncond, cond, uncond, cond, ...
            e = eps(z_in, int(t), torch.cat([ctx] * len(batch)))
            e = e[::2] + g * (e[1::2] - e[::2])
            a_t = alphas[t]
            prev = int(t) - 1000 // n_steps
            a_prev = alphas[prev] if prev >= 0 else alphas[0]  # set_alpha_to_one=False
            x0 = (z - (1 - a_t).sqrt() * e) / a_t.sqrt()
            stepped = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
            for k, (h0, h1, w0, w1) in enumerate(batch):
                w0, w1 = w0 + off, w1 + off
                weight = (
                    torch.full_like(stepped[k : k + 1], strength) if is_full else ramp_w.expand_as(stepped[k : k + 1])
                )
                tile = stepped[k : k + 1] * weight
                if circular and w1 > width:
                    cut = width - w0
                    value[..., h0:h1, w0:] += tile[..., :cut]
                    value[..., h0:h1, : w1 - width] += tile[..., cut:]
                    count[..., h0:h1, w0:] += weight[..., :cut]
                    count[..., h0:h1, : w1 - width] += weight[..., cut:]
                else:
                    value[..., h0:h1, w0:w1] += tile
                    count[..., h0:h1, w0:w1] += weight
        latents = torch.where(count > 0, value / count, value)
    return latents


def ours_euler(eps, latents, timesteps, cfg, offsets, g, ctx):
    """The k-diffusion way: Euler in σ on the aggregated denoised predictions (cond, uncond), then CFG."""
    alphas = sd_alphas()
    sig = [((1 - alphas[t]) / alphas[t]).sqrt() for t in timesteps] + [((1 - alphas[0]) / alphas[0]).sqrt()]
    x = latents / alphas[timesteps[0]].sqrt()
    uncond, cond = ctx[0:1], ctx[1:2]
    for i, t in enumerate(timesteps):
        s, a = sig[i], alphas[t]

        def fn(tiles, views, s=s, a=a, t=t):
            z = tiles * a.sqrt()  # VP model input x/√(1+σ²)
            n = tiles.shape[0]
            return [tiles - s * eps(z, int(t), cond.expand(n, -1)), tiles - s * eps(z, int(t), uncond.expand(n, -1))]

        d_cond, d_uncond = tiled_denoise(fn, x, cfg, step=i, num_steps=len(timesteps), offset=offsets[i])
        d = d_uncond + g * (d_cond - d_uncond)
        x = x + (x - d) / s * (sig[i + 1] - s)
    return x * alphas[0].sqrt()


CASES = {
    "pano_circular_offset_full": dict(height=16, width=64, cfg=small(), window=16),
    "pano_no_wrap_full": dict(height=16, width=56, cfg=small(circular=False, random_offset=False), window=16),
    "refine_xy_two_rows": dict(
        height=24,
        width=40,
        cfg=small(window=16, circular=False, random_offset=False, full_canvas_fraction=0.0, ramp_axes="xy"),
        window=16,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_official_procedure(case):
    c = CASES[case]
    cfg, n_steps = c["cfg"], 10
    timesteps = [int(t) for t in (torch.arange(n_steps) * (1000 // n_steps)).flip(0) + 1]  # DDIM leading, offset 1
    offsets = draw_offsets(n_steps, cfg.stride, torch.Generator().manual_seed(7)) if cfg.random_offset else [0] * 10
    if cfg.random_offset:
        assert len(set(offsets)) > 1
    eps = ToyEps(8, seed=3)  # 8 channels: the RGB-D latent of JointNet
    ctx = torch.randn(2, 3, dtype=F64)  # [uncond, cond]
    z_t = torch.randn(1, 8, c["height"], c["width"], generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        ref = official_loop(
            eps,
            z_t,
            timesteps,
            window=c["window"],
            stride=cfg.stride,
            circular=cfg.circular,
            offsets=offsets,
            vbs=cfg.view_batch_size,
            frac=cfg.full_canvas_fraction,
            strength=cfg.full_canvas_weight,
            size=cfg.boundary,
            xy=cfg.ramp_axes == "xy",
            g=7.5,
            ctx=ctx,
        )
        ours = ours_euler(eps, z_t, timesteps, cfg, offsets, 7.5, ctx)
    assert torch.allclose(ours, ref, atol=1e-9, rtol=0), (ours - ref).abs().max()
    # and it is not a trivial match: a wrong offset or no full canvas changes the result
    with torch.no_grad():
        wrong = ours_euler(eps, z_t, timesteps, cfg, [o + 1 for o in offsets], 7.5, ctx) if cfg.circular else None
    if wrong is not None:
        assert (wrong - ref).abs().max() > 1e-4


def test_aggregating_steps_equals_stepping_the_aggregate():
    """The identity behind the ComfyUI design, for one DDIM step and one k-diffusion Euler step."""
    alphas = sd_alphas()
    a_t, a_s = alphas[801], alphas[601]
    z = torch.randn(1, 8, 16, 48, dtype=F64)
    cfg = small()
    views = plan_views(16, 48, cfg, offset=3, include_full=True)
    eps_tiles = {v: torch.randn(1, 8, v.height, v.width, dtype=F64) for v in views}
    # official: step every tile, then average the stepped tiles
    value, count = torch.zeros_like(z), torch.zeros(16, 48, dtype=F64)
    for v in views:
        zv, e = gather(z, v), eps_tiles[v]
        stepped = a_s.sqrt() * (zv - (1 - a_t).sqrt() * e) / a_t.sqrt() + (1 - a_s).sqrt() * e
        w = tile_weight(v, cfg, F64)
        scatter_add_(value, stepped * w, v)
        scatter_add_(count, w, v)
    official = value / count
    # ours: average the denoised predictions, then one Euler step on the canvas
    s_t, s_s = ((1 - a_t) / a_t).sqrt(), ((1 - a_s) / a_s).sqrt()
    x = z / a_t.sqrt()
    d = tiled_apply(lambda t, vs: t - s_t * torch.cat([eps_tiles[v] for v in vs]), x, views, cfg)
    ours = (x + (x - d) / s_t * (s_s - s_t)) * a_s.sqrt()
    assert torch.allclose(ours, official, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Circular padding helpers


def test_circular_pad_and_crop():
    x = torch.arange(10, dtype=F64).reshape(1, 1, 1, 10)
    p = circular_pad(x, 3)
    assert p.flatten().tolist() == [7, 8, 9, *range(10), 0, 1, 2]
    assert torch.equal(crop_pad(p, 3), x)
    assert torch.equal(crop_pad(torch.zeros(1, 5, 24, 3), 8, dim=2), torch.zeros(1, 5, 8, 3))
    with pytest.raises(ValueError, match="cannot wrap more than once"):
        circular_pad(x, 11)


def test_circular_decode_has_no_seam():
    """A local 'decoder' (×8 nearest + 3×3 blur with zero padding) is exactly roll-equivariant after circular
    padding, so the decoded 360° image continues across its ends; decoding without padding is not."""
    blur = torch.full((3, 3, 3, 3), 1 / 27, dtype=F64)

    def decode(z):
        up = z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2)
        return nn.functional.conv2d(up, blur, padding=1)

    z = torch.randn(1, 4, 4, 12, dtype=F64)

    def padded(zz):
        return crop_pad(decode(circular_pad(zz, 1)), 8)

    assert torch.allclose(padded(torch.roll(z, 5, -1)), torch.roll(padded(z), 40, -1), atol=1e-12)
    assert not torch.allclose(decode(torch.roll(z, 5, -1)), torch.roll(decode(z), 40, -1), atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: errors that say what to choose


BAD = {
    "width_not_multiple_of_stride": (64, 250, PRESETS["jointnet_pano"], r"multiple of the stride \(32\).*1792 or 2048"),
    "no_wrap_width_not_window_plus_k_stride": (
        64,
        250,
        PanoramaConfig(circular=False, random_offset=False),
        r"window \+ k·stride.*1792 or 2048",
    ),
    "window_taller_than_canvas": (64, 256, PanoramaConfig(window=96), "larger than the canvas height"),
    "window_wider_than_canvas": (64, 48, PanoramaConfig(stride=16), "larger than the canvas width"),
    "wrap_on_a_canvas_narrower_than_the_window": (64, 32, PanoramaConfig(stride=16), "same columns twice"),
    "offset_without_wrap": (64, 256, PanoramaConfig(circular=False), "random_offset .* circular"),
    "stride_larger_than_window": (32, 256, PanoramaConfig(window=16, stride=32), "never be denoised"),
    "height_not_window_plus_k_stride": (100, 256, PanoramaConfig(window=64, circular=False, random_offset=False),
                                        "canvas height"),
    "bad_ramp_axes": (64, 256, PanoramaConfig(ramp_axes="y"), "ramp_axes"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_errors(case):
    height, width, cfg, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        check_canvas(height, width, cfg)


def test_good_canvases_pass():
    assert check_canvas(64, 256, PRESETS["jointnet_pano"]) == 64
    assert check_canvas(128, 512, PRESETS["jointnet_refine"]) == 64
    assert check_canvas(64, 256, PRESETS["multidiffusion"]) == 64
    n_md = len(plan_views(64, 256, PRESETS["multidiffusion"]))
    n_pano = len(plan_views(64, 256, PRESETS["jointnet_pano"]))
    assert (n_md, n_pano) == (32, 8)
    assert len(plan_views(128, 512, PRESETS["jointnet_refine"])) == 3 * 15
    assert math.isclose(weight_sum(64, 256, plan_views(64, 256, PRESETS["multidiffusion"]),
                                   PRESETS["multidiffusion"]).min().item(), 8.0)  # fmt: skip
