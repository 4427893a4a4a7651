"""MERGE-B core: converter loading, Group Reuse plan and the forward against the official formulas."""

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed

from unidense_core.io.checkpoints import CheckpointError
from unidense_core.merge.converters import ConverterConfig, load_converters, save_converters
from unidense_core.merge.forward import GroupReusePlan, MergePixArtTransformer
from unidense_core.merge.pos_embed import sincos_2d
from unidense_core.tiny import TINY_CONVERTER, randomize_, tiny_converters, tiny_pixart


def official_converter_blocks(cfg, state_dict):
    """The official converter block rebuilt from diffusers' own BasicTransformerBlock (no code of ours)."""
    d = cfg.hidden_size
    blocks = torch.nn.ModuleList(
        BasicTransformerBlock(
            d,
            cfg.num_attention_heads,
            cfg.attention_head_dim,
            cross_attention_dim=None,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            attention_bias=True,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            ff_inner_dim=d * cfg.ff_mult,
        )
        for _ in range(cfg.num_layers)
    )
    blocks.load_state_dict(
        {k[len("transformer_blocks.") :]: v for k, v in state_dict.items() if k.startswith("transformer_blocks.")}
    )
    return blocks.eval()


def official_merge_forward(fixed, conv_sd, cfg, z_img, z_t, t, context, mask):
    """methods.md §1.2 pseudo-code, written with diffusers modules only."""
    d = cfg.hidden_size
    pe = PatchEmbed(
        height=cfg.sample_size,
        width=cfg.sample_size,
        patch_size=cfg.patch_size,
        in_channels=cfg.in_channels,
        embed_dim=d,
        interpolation_scale=1,
    )
    pe.load_state_dict(
        {"proj.weight": conv_sd["pos_embed.proj.weight"], "proj.bias": conv_sd["pos_embed.proj.bias"]}, strict=False
    )
    blocks = official_converter_blocks(cfg, conv_sd)
    b = z_t.shape[0]
    h = pe(torch.cat([z_img, z_t], dim=1))
    t6, t_emb = fixed.adaln_single(t, {"resolution": None, "aspect_ratio": None}, batch_size=b, hidden_dtype=h.dtype)
    c = fixed.caption_projection(context).view(b, -1, d)
    bias = ((1 - mask.float()) * -10000.0).unsqueeze(1)
    share = len(fixed.transformer_blocks) // cfg.num_layers
    for i, blk in enumerate(fixed.transformer_blocks):
        h = blocks[i // share](h, timestep=t6)
        h = blk(h, encoder_hidden_states=c, encoder_attention_mask=bias, timestep=t6)
    shift, scale = (conv_sd["scale_shift_table"][None] + t_emb[:, None]).chunk(2, dim=1)
    h = torch.nn.functional.layer_norm(h, (d,), eps=1e-6) * (1 + scale) + shift
    h = torch.nn.functional.linear(h, conv_sd["proj_out.weight"], conv_sd["proj_out.bias"])
    gh, gw = z_t.shape[-2] // 2, z_t.shape[-1] // 2
    h = h.reshape(b, gh, gw, 2, 2, 8)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(b, 8, gh * 2, gw * 2)


def inputs(b=2, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_img = torch.randn(b, 4, h, w, generator=g)
    z_t = torch.randn(b, 4, h, w, generator=g)
    ctx = torch.randn(b, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * b)
    t = torch.tensor([999, 423][:b])
    return z_img, z_t, t, ctx, mask


@pytest.mark.parametrize("h,w", [(8, 8), (8, 12), (12, 6)])
def test_sincos_table_matches_diffusers_patch_embed(h, w):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(64, (h, w), base_size=4, interpolation_scale=1.0, output_type="pt")
    torch.testing.assert_close(sincos_2d(64, h, w, base_size=4), ref.float(), rtol=0, atol=1e-6)


def test_group_reuse_plan_pixart_alpha():
    plan = GroupReusePlan(28, 14)
    assert plan.share == 2
    assert plan.groups()[0] == [0, 1] and plan.groups()[-1] == [26, 27]
    assert [plan.group_of(b) for b in range(28)] == [b // 2 for b in range(28)]
    with pytest.raises(ValueError, match="evenly"):
        GroupReusePlan(28, 5)


@pytest.mark.parametrize("h,w", [(8, 8), (8, 12)])
def test_depth_forward_matches_official_formulas(h, w):
    fixed = tiny_pixart()
    conv = tiny_converters()
    sd = conv.state_dict()
    assert all((v != 0).all() for v in sd.values()), "every converter parameter must be non-zero"
    model = MergePixArtTransformer(fixed, conv)
    z_img, z_t, t, ctx, mask = inputs(h=h, w=w)
    with torch.no_grad():
        ours = model(z_t, t, ctx, mask, mode="depth", image_latent=z_img)
        ref = official_merge_forward(fixed, sd, TINY_CONVERTER, z_img, z_t, t, ctx, mask)
    assert ours.shape == (2, 8, h, w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the image latent matters and sits in the first 4 input channels
    with torch.no_grad():
        swapped = model(z_img, t, ctx, mask, mode="depth", image_latent=z_t)
    assert (swapped - ours).abs().max() > 1e-3


def test_every_converter_and_block_is_used():
    fixed = tiny_pixart()
    conv = tiny_converters()
    model = MergePixArtTransformer(fixed, conv)
    calls = []
    for i, blk in enumerate(conv.transformer_blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: calls.append(("conv", i)))
    for i, blk in enumerate(fixed.transformer_blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: calls.append(("fixed", i)))
    z_img, z_t, t, ctx, mask = inputs()
    with torch.no_grad():
        model(z_t, t, ctx, mask, mode="depth", image_latent=z_img)
    assert calls == [
        ("conv", 0),
        ("fixed", 0),
        ("conv", 0),
        ("fixed", 1),
        ("conv", 1),
        ("fixed", 2),
        ("conv", 1),
        ("fixed", 3),
    ]


def test_generate_mode_is_bit_identical_to_base():
    fixed = tiny_pixart()
    before = {k: v.clone() for k, v in fixed.state_dict().items()}
    model = MergePixArtTransformer(fixed, tiny_converters())
    z_img, z_t, t, ctx, mask = inputs()
    with torch.no_grad():
        base = fixed(z_t, encoder_hidden_states=ctx, encoder_attention_mask=mask, timestep=t, return_dict=False)[0]
        model(z_t, t, ctx, mask, mode="depth", image_latent=z_img)  # a depth pass in between changes nothing
        gen = model(z_t, t, ctx, mask, mode="generate")
    assert torch.equal(gen, base)
    assert all(torch.equal(before[k], v) for k, v in fixed.state_dict().items())


def test_official_folder_and_single_file_load(tmp_path):
    conv = tiny_converters()
    save_converters(conv, tmp_path / "repo" / "depth_converters")
    for path in (
        tmp_path / "repo",
        tmp_path / "repo" / "depth_converters",
        tmp_path / "repo" / "depth_converters" / "diffusion_pytorch_model.safetensors",
    ):
        loaded = load_converters(path)
        assert loaded.config == TINY_CONVERTER
        for k, v in conv.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


def test_official_key_count_and_params_at_full_size():
    cfg = ConverterConfig()
    shapes = cfg.expected_shapes()
    assert len(shapes) == 187
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 111_747_488


def test_bare_file_infers_pixart_xl_config(tmp_path):
    from safetensors.torch import save_file

    cfg = ConverterConfig(num_layers=1)  # full width, one block keeps the file small
    sd = {k: torch.zeros(s) for k, s in cfg.expected_shapes().items()}
    save_file(sd, tmp_path / "merge_depth.safetensors")
    assert load_converters(tmp_path / "merge_depth.safetensors").config == cfg


def _write(tmp_path, sd, name="bad.safetensors"):
    from safetensors.torch import save_file

    save_file(sd, tmp_path / name)
    return tmp_path / name


def test_bad_files_give_clear_errors(tmp_path):
    good = tiny_converters().state_dict()
    with pytest.raises(CheckpointError, match="FLUX"):
        load_converters(_write(tmp_path, {"x_embedder.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match="full PixArt transformer"):
        load_converters(_write(tmp_path, {"adaln_single.linear.weight": torch.zeros(2, 2), **good}))
    shapes = dict(good)
    shapes["proj_out.weight"] = torch.zeros(16, 64)
    save_converters(tiny_converters(), tmp_path / "f")
    _write(tmp_path / "f", shapes, "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"proj_out.weight: file \(16, 64\) vs expected \(32, 64\)"):
        load_converters(tmp_path / "f")
    truncated = tmp_path / "trunc.safetensors"
    raw = (tmp_path / "f" / "diffusion_pytorch_model.safetensors").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_converters(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_converters(tmp_path / "nothing_here")


def test_converters_for_another_base_are_refused():
    fixed = tiny_pixart(num_layers=3)
    with pytest.raises(ValueError, match="evenly"):
        MergePixArtTransformer(fixed, tiny_converters())
    wide = randomize_(tiny_pixart(attention_head_dim=16))
    with pytest.raises(ValueError, match="width"):
        MergePixArtTransformer(wide, tiny_converters())


def test_depth_mode_input_errors():
    model = MergePixArtTransformer(tiny_pixart(), tiny_converters())
    z_img, z_t, t, ctx, mask = inputs()
    with pytest.raises(ValueError, match="image_latent"):
        model(z_t, t, ctx, mask, mode="depth")
    with pytest.raises(ValueError, match="multiples of 16"):
        model(z_t[..., :7], t, ctx, mask, mode="depth", image_latent=z_img[..., :7])
    with pytest.raises(ValueError, match="mode must be"):
        model(z_t, t, ctx, mask, mode="normals")


def test_mixed_precision_base_and_converters():
    """A bf16 base with fp32 converters (or the reverse) runs and stays close to the fp32 result."""
    fixed, conv = tiny_pixart(), tiny_converters()
    z_img, z_t, t, ctx, mask = inputs()
    with torch.no_grad():
        ref = MergePixArtTransformer(fixed, conv)(z_t, t, ctx, mask, mode="depth", image_latent=z_img)
        for fd, cd in ((torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)):
            f2, c2 = tiny_pixart().to(fd), tiny_converters().to(cd)
            out = MergePixArtTransformer(f2, c2)(
                z_t.to(fd), t, ctx.to(fd), mask, mode="depth", image_latent=z_img.to(fd)
            )
            assert out.dtype == cd
            assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 0.1
