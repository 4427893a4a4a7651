"""JointNet core: official folder loading, exchange layers, and the joint forward against the spec formulas."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from unidense_core.io.checkpoints import CheckpointError, load_state_dict
from unidense_core.jointnet.model import (
    SD21_BASE_UNET,
    ExchangeConfig,
    JointNetRGBD,
    load_jointnet,
    read_jointnet_folder,
    save_jointnet,
)
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet, tiny_sd21_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads

T = torch.tensor(537)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Official-format folders with random non-zero weights: generation (.bin, as 0.19.3 saved) and inpainting."""
    root = tmp_path_factory.mktemp("jointnet")
    gen = save_jointnet(
        random_jointnet(TINY_SD21_UNET, False, seed=3), root / "rgbd_finetune", safe_serialization=False
    )
    inp = save_jointnet(random_jointnet(TINY_SD21_UNET, True, seed=5), root / "rgbd_inpaint")
    return {"gen": str(gen), "inp": str(inp), "root": root}


def inputs(b=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, h, w, generator=g), torch.randn(b, 5, 32, generator=g)


# ----------------------------------------------------------------------------------------------------------
# The official reference: methods.md §2.2 with plain diffusers UNet calls (none of our modules)


def plain_unet(folder, branch):
    """The branch's UNet as a stock diffusers model, plus the raw official state dict of its file."""
    with open(os.path.join(folder, branch, "config.json"), encoding="utf-8") as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg.pop("joint_in_channels"), cfg.pop("has_masked_latent_input")
    name = next(f for f in os.listdir(os.path.join(folder, branch)) if f.startswith("diffusion_pytorch_model"))
    sd = load_state_dict(os.path.join(folder, branch, name))
    unet = UNet2DConditionModel(**cfg).eval()
    unet.load_state_dict({k: v for k, v in sd.items() if not k.startswith("jointnet_")})
    return unet, sd


def conv(sd, name, x, padding=0):
    return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=padding)


def run_with_input_term(unet, z, t, ctx, extra, **residuals):
    """unet(z) with ``extra`` added to conv_in's output; records skips (conv_in out + down-block res) and mid."""
    rec = {"skips": [], "mid": None}

    def on_conv_in(_m, _i, out):
        out = out + extra
        rec["skips"].append(out)
        return out

    hooks = [unet.conv_in.register_forward_hook(on_conv_in)]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda _m, _i, out: rec["skips"].extend(out[1])))
    hooks.append(unet.mid_block.register_forward_hook(lambda _m, _i, out: rec.__setitem__("mid", out)))
    try:
        eps = unet(z, t, ctx, **residuals).sample
    finally:
        for h in hooks:
            h.remove()
    return eps, rec


def official_joint_eps(folder, z, t, ctx, mask_rgb=None, masked_rgb=None, mask_d=None, masked_d=None):
    """denoiseV2 of the official pipelines, written from the spec formulas."""
    (u_rgb, sd_rgb), (u_d, sd_d) = plain_unet(folder, "unet"), plain_unet(folder, "jointnet")
    z_rgb, z_d = z[:, :4], z[:, 4:]
    # branch inputs: other branch's noisy latent through jointnet_rgb_in_trans [+ masked-latent conv]
    x_rgb, x_d = conv(sd_rgb, "jointnet_rgb_in_trans", z_d, 1), conv(sd_d, "jointnet_rgb_in_trans", z_rgb, 1)
    if mask_rgb is not None:
        rgb_in = torch.cat([z_rgb, mask_rgb, masked_rgb], 1)  # official: cat([z_t, mask, masked_latents])
        d_in = torch.cat([z_d, mask_d, masked_d], 1)
        x_rgb = x_rgb + conv(sd_rgb, "jointnet_masked_latent_conv", torch.cat([rgb_in[:, 4:], d_in[:, 4:]], 1), 1)
        x_d = x_d + conv(sd_d, "jointnet_masked_latent_conv", torch.cat([d_in[:, 4:], rgb_in[:, 4:]], 1), 1)
    # pass 1: each branch's own skips and mid output (residual inputs are added after them, so they don't matter)
    _, f_rgb = run_with_input_term(u_rgb, z_rgb, t, ctx, x_rgb)
    _, f_d = run_with_input_term(u_d, z_d, t, ctx, x_d)

    def sends(sd, f):
        down = [conv(sd, f"jointnet_down_blocks.{k}", s) for k, s in enumerate(f["skips"])]
        return down, conv(sd, "jointnet_mid_block", f["mid"])

    (down_rgb, mid_rgb), (down_d, mid_d) = sends(sd_rgb, f_rgb), sends(sd_d, f_d)
    # pass 2: ControlNet-style residual addition of the other branch's sends
    eps_rgb, _ = run_with_input_term(
        u_rgb, z_rgb, t, ctx, x_rgb, down_block_additional_residuals=down_d, mid_block_additional_residual=mid_d
    )
    eps_d, _ = run_with_input_term(
        u_d, z_d, t, ctx, x_d, down_block_additional_residuals=down_rgb, mid_block_additional_residual=mid_rgb
    )
    return torch.cat([eps_rgb, eps_d], 1)


# ----------------------------------------------------------------------------------------------------------
# Exchange layers and folders


def test_exchange_layout_of_sd21_base():
    cfg = ExchangeConfig.from_unet_config(SD21_BASE_UNET)
    assert cfg.skip_channels == (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
    params = sum(torch.Size(s).numel() for s in cfg.expected_shapes().values())
    assert params == 11_491_520  # methods.md §2.2
    masked = ExchangeConfig.from_unet_config({**SD21_BASE_UNET, "has_masked_latent_input": True})
    assert masked.expected_shapes()["jointnet_masked_latent_conv.weight"] == (320, 10, 3, 3)
    assert sum(torch.Size(s).numel() for s in masked.expected_shapes().values()) - params == 29_120


@pytest.mark.parametrize("kind", ["gen", "inp"])
def test_official_folder_loads_unchanged(folders, kind):
    model = load_jointnet(folders[kind])
    for branch, sub in ((model.rgb, "unet"), (model.depth, "jointnet")):
        _, sd = plain_unet(folders[kind], sub)
        mine = branch.state_dict()
        assert set(mine) == set(sd)  # state-dict keys are the official ones
        assert all(torch.equal(mine[k], sd[k]) for k in sd)
        assert all(v.abs().min() > 0 for k, v in sd.items() if k.startswith("jointnet_"))  # non-zero exchange
    assert model.has_masked_latent_input == (kind == "inp")


def test_zero_exchange_gives_each_branch_its_own_unet(folders):
    model = load_jointnet(folders["gen"])
    for branch in (model.rgb, model.depth):
        for p in branch.exchange.parameters():
            p.data.zero_()
    z, ctx = inputs()
    with torch.no_grad():
        out = model(z, T, ctx)
        own_rgb = model.rgb.unet(z[:, :4], T, ctx).sample
        own_depth = model.depth.unet(z[:, 4:], T, ctx).sample
    assert torch.equal(out[:, :4], own_rgb) and torch.equal(out[:, 4:], own_depth)


@pytest.mark.parametrize("size", [(8, 8), (9, 12)])
def test_joint_forward_matches_official_formulas(folders, size):
    model = load_jointnet(folders["gen"])
    z, ctx = inputs(h=size[0], w=size[1])
    with torch.no_grad():
        ours = model(z, T, ctx)
        ref = official_joint_eps(folders["gen"], z, T, ctx)
    assert ours.shape == ref.shape == (2, 8, *size)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the exchange matters: each branch's own UNet alone gives something else
    with torch.no_grad():
        alone = model.rgb.unet(z[:, :4], T, ctx).sample
    assert (alone - ours[:, :4]).abs().max() > 1e-2


def test_masked_latent_forward_matches_official_formulas(folders):
    model = load_jointnet(folders["inp"])
    z, ctx = inputs(seed=1)
    g = torch.Generator().manual_seed(7)
    m_rgb = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    m_d = 1 - m_rgb
    z0 = torch.randn(2, 8, 8, 8, generator=g)
    zm_rgb, zm_d = (m_rgb < 0.5) * z0[:, :4], (m_d < 0.5) * z0[:, 4:]
    masked = torch.cat([m_rgb, zm_rgb, m_d, zm_d], 1)  # [B,10,h,w]
    with torch.no_grad():
        ours = model(z, T, ctx, masked)
        ref = official_joint_eps(folders["inp"], z, T, ctx, m_rgb, zm_rgb, m_d, zm_d)
        generate_all = model(z, T, ctx)  # no input on the inpainting model = masks 1, latents 0
        ref_all = official_joint_eps(
            folders["inp"], z, T, ctx, torch.ones_like(m_rgb), 0 * zm_rgb, torch.ones_like(m_d), 0 * zm_d
        )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(generate_all, ref_all, rtol=1e-5, atol=1e-5)
    assert (ours - generate_all).abs().max() > 1e-2


def test_batch_items_are_independent(folders):
    model = load_jointnet(folders["gen"])
    z, ctx = inputs(b=3)
    with torch.no_grad():
        full = model(z, T, ctx)
        one = model(z[1:2], T, ctx[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Bad input


def test_folder_without_jointnet_keys_is_refused(folders, tmp_path):
    bad = tmp_path / "sd21_unet_only"
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), bad)
    tiny_sd21_unet().save_pretrained(bad / "unet", safe_serialization=True)  # SD2.1's own UNet in place of unet/
    with pytest.raises(CheckpointError, match=r"no 'jointnet_\*' exchange weights.*plain UNet"):
        read_jointnet_folder(bad)


def test_folder_missing_a_branch_is_refused(folders, tmp_path):
    only_unet = tmp_path / "half"
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), only_unet)
    for f in os.listdir(only_unet / "jointnet"):
        os.remove(only_unet / "jointnet" / f)
    os.rmdir(only_unet / "jointnet")
    with pytest.raises(CheckpointError, match=r"lacks 'jointnet/'.*both branches"):
        load_jointnet(only_unet)
    with pytest.raises(CheckpointError, match="not found"):
        load_jointnet(tmp_path / "nowhere")


def test_zip_layout_with_one_nested_folder_is_found(folders, tmp_path):
    outer = tmp_path / "unzipped"
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), outer / "rgbd_finetune_sd21b")
    assert read_jointnet_folder(outer).folder == str(outer / "rgbd_finetune_sd21b")


def test_mixed_branches_and_truncated_exchange_are_refused(folders, tmp_path):
    mixed = tmp_path / "mixed"
    save_jointnet(random_jointnet(TINY_SD21_UNET, False), mixed)
    inp = random_jointnet(TINY_SD21_UNET, True)
    save_jointnet(inp, tmp_path / "inp")
    for f in os.listdir(tmp_path / "inp" / "jointnet"):
        os.replace(tmp_path / "inp" / "jointnet" / f, mixed / "jointnet" / f)
    with pytest.raises(CheckpointError, match="only one branch has the masked-latent conv"):
        read_jointnet_folder(mixed)
    # config says inpainting model but the masked conv tensors are missing
    from safetensors.torch import load_file, save_file

    f = tmp_path / "inp" / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(f).items() if "masked_latent" not in k}, f)
    with pytest.raises(CheckpointError, match="jointnet_masked_latent_conv.weight"):
        read_jointnet_folder(tmp_path / "inp")


def test_wrong_latent_channels_are_clear_errors(folders):
    gen, inp = load_jointnet(folders["gen"]), load_jointnet(folders["inp"])
    _, ctx = inputs()
    with pytest.raises(ValueError, match=r"8-channel RGB-D latent.*4-channel"):
        gen(torch.randn(2, 4, 8, 8), T, ctx)
    with pytest.raises(ValueError, match="9-channel"):
        gen(torch.randn(2, 9, 8, 8), T, ctx)
    with pytest.raises(ValueError, match="generation model, which has no masked-latent conv"):
        gen(torch.randn(2, 8, 8, 8), T, ctx, torch.zeros(2, 10, 8, 8))
    with pytest.raises(ValueError, match=r"masked-latent input has shape"):
        inp(torch.randn(2, 8, 8, 8), T, ctx, torch.zeros(2, 10, 4, 4))


def test_joint_model_refuses_mismatched_branches():
    a = random_jointnet(TINY_SD21_UNET, False)
    b = random_jointnet(TINY_SD21_UNET, True)
    with pytest.raises(ValueError, match="masked-latent conv differs"):
        JointNetRGBD(a.rgb, b.depth)
