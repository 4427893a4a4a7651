"""MERGE-L core: converter loading, the official group split and the forward against the official formulas."""

import json
import os

import pytest
import torch
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

from unidense_core.io.checkpoints import CheckpointError
from unidense_core.merge.flux_converters import (
    FluxConverterConfig,
    MergeFluxConverters,
    inspect_flux_converters,
    load_flux_converters,
    save_flux_converters,
)
from unidense_core.merge.flux_forward import (
    FluxGroupPlan,
    MergeFluxTransformer,
    image_ids,
    official_groups,
    pack_latents,
    unpack_latents,
)
from unidense_core.tiny import FLUX_DEV, TINY_FLUX_CONVERTER, randomize_, tiny_flux, tiny_flux_converters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~20x faster than 2 contended threads


def official_converter_blocks(cfg, state_dict, stage):
    """The official converters rebuilt from diffusers' own FluxSingleTransformerBlock (no code of ours)."""
    blocks = torch.nn.ModuleList(
        FluxSingleTransformerBlock(cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim)
        for _ in range(cfg.num_single_layers)
    )
    p = stage + "."
    blocks.load_state_dict({k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)})
    return blocks.eval()


def official_merge_l_forward(flux, conv_sd, cfg, z_img, z_t, sigma, ctx, pooled):
    """methods.md §1.3 (``MERGEFluxTransformerModel.merge_forward``), written with diffusers modules only."""
    dual = official_converter_blocks(cfg, conv_sd, "single_transformer_blocks_in_dual")
    single = official_converter_blocks(cfg, conv_sd, "single_transformer_blocks")
    norm_out = AdaLayerNormContinuous(cfg.hidden_size, cfg.hidden_size, elementwise_affine=False, eps=1e-6)
    norm_out.load_state_dict(
        {"linear.weight": conv_sd["norm_out.linear.weight"], "linear.bias": conv_sd["norm_out.linear.bias"]}
    )
    b, _, h, w = z_t.shape

    def pack(z):  # diffusers FluxPipeline._pack_latents
        return z.view(b, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, 64)

    x = torch.cat([pack(z_t), pack(z_img)], dim=2)  # the official pipeline concatenates packed latents (dim=2)
    hid = torch.nn.functional.linear(x, conv_sd["x_embedder.weight"], conv_sd["x_embedder.bias"])
    temb = flux.time_text_embed(sigma * 1000, torch.zeros(b) * 1000, pooled)
    txt = flux.context_embedder(ctx)
    ids_img = torch.zeros(h // 2, w // 2, 3)
    ids_img[..., 1] += torch.arange(h // 2)[:, None]
    ids_img[..., 2] += torch.arange(w // 2)[None, :]
    ids = torch.cat([torch.zeros(ctx.shape[1], 3), ids_img.reshape(-1, 3)])
    rope = flux.pos_embed(ids)
    t_len = ctx.shape[1]
    rope_img = (rope[0][t_len:], rope[1][t_len:])
    n_dual, n_single = len(flux.transformer_blocks), len(flux.single_transformer_blocks)
    empty = torch.zeros(b, 0, cfg.hidden_size)
    for i, group in enumerate(official_groups(n_dual, cfg.num_single_layers)):
        for blk in group:
            hid = dual[i](hid, empty, temb, rope_img)[1]
            txt, hid = flux.transformer_blocks[blk](hid, txt, temb, rope)
    for i, group in enumerate(official_groups(n_single, cfg.num_single_layers)):
        for blk in group:
            txt, hid = single[i](hid, txt, temb, rope)
            txt, hid = flux.single_transformer_blocks[blk](hid, txt, temb, rope)
    out = torch.nn.functional.linear(norm_out(hid, temb), conv_sd["proj_out.weight"], conv_sd["proj_out.bias"])
    return out.view(b, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 16, h, w)


def inputs(b=2, h=8, w=12, seed=0, tokens=5):
    g = torch.Generator().manual_seed(seed)
    z_img = torch.randn(b, 16, h, w, generator=g)
    z_t = torch.randn(b, 16, h, w, generator=g)
    ctx = torch.randn(b, tokens, 32, generator=g)
    pooled = torch.randn(b, 16, generator=g)
    sigma = torch.tensor([1.0, 0.37][:b])
    return z_img, z_t, sigma, ctx, pooled


def test_official_group_split_for_flux_dev():
    plan = FluxGroupPlan(19, 38, 5)
    assert [len(g) for g in plan.double_groups] == [4, 4, 4, 4, 3]
    assert [len(g) for g in plan.single_groups] == [8, 8, 8, 8, 6]
    assert plan.double_groups[-1] == [16, 17, 18] and plan.single_groups[-1] == list(range(32, 38))
    assert sum(plan.double_groups, []) == list(range(19)) and sum(plan.single_groups, []) == list(range(38))
    assert FluxGroupPlan(19, 38, 6).unused() == ["in-dual 5"]  # methods.md §1.3a: 6 groups leave one empty
    tiny = FluxGroupPlan(3, 5, 2)
    assert tiny.double_groups == [[0, 1], [2]] and tiny.single_groups == [[0, 1, 2], [3, 4]]


def test_pack_matches_comfyui_patchify_order():
    z = torch.randn(2, 16, 6, 4)
    from einops import rearrange

    assert torch.equal(pack_latents(z), rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2))
    assert torch.equal(unpack_latents(pack_latents(z), 6, 4), z)
    assert image_ids(2, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]


@pytest.mark.parametrize("h,w", [(8, 8), (8, 12)])
def test_depth_forward_matches_official_formulas(h, w):
    flux, conv = tiny_flux(), tiny_flux_converters()
    sd = conv.state_dict()
    assert all((v != 0).all() for v in sd.values()), "every converter parameter must be non-zero"
    assert all((v != 0).all() for v in flux.state_dict().values())
    model = MergeFluxTransformer(flux, conv)
    z_img, z_t, sigma, ctx, pooled = inputs(h=h, w=w)
    with torch.no_grad():
        ours = model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img)
        ref = official_merge_l_forward(flux, sd, TINY_FLUX_CONVERTER, z_img, z_t, sigma, ctx, pooled)
    assert ours.shape == (2, 16, h, w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # noisy depth first, image second: swapping them changes the result
        swapped = model(z_img, sigma, ctx, pooled, mode="depth", image_latent=z_t)
    assert (swapped - ours).abs().max() > 1e-3


def test_every_converter_runs_before_each_block_of_its_group():
    flux, conv = tiny_flux(), tiny_flux_converters()
    model = MergeFluxTransformer(flux, conv)
    calls = []
    for name, blocks in (
        ("in_dual", conv.single_transformer_blocks_in_dual),
        ("conv", conv.single_transformer_blocks),
        ("double", flux.transformer_blocks),
        ("single", flux.single_transformer_blocks),
    ):
        for i, blk in enumerate(blocks):
            blk.register_forward_hook(lambda m, a, o, n=name, i=i: calls.append((n, i)))
    z_img, z_t, sigma, ctx, pooled = inputs()
    with torch.no_grad():
        model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img)
    expected = []
    for g, blocks in enumerate([[0, 1], [2]]):
        for b in blocks:
            expected += [("in_dual", g), ("double", b)]
    for g, blocks in enumerate([[0, 1, 2], [3, 4]]):
        for b in blocks:
            expected += [("conv", g), ("single", b)]
    assert calls == expected


def test_guidance_is_zero_in_depth_mode():
    flux, conv = tiny_flux(), tiny_flux_converters()
    model = MergeFluxTransformer(flux, conv)
    z_img, z_t, sigma, ctx, pooled = inputs()
    with torch.no_grad():
        default = model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img)
        zero = model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img, guidance=torch.zeros(2))
        other = model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img, guidance=torch.full((2,), 3.5))
    assert torch.equal(default, zero) and (other - zero).abs().max() > 1e-3


def test_generate_mode_is_bit_identical_to_base():
    flux = tiny_flux()
    before = {k: v.clone() for k, v in flux.state_dict().items()}
    model = MergeFluxTransformer(flux, tiny_flux_converters())
    z_img, z_t, sigma, ctx, pooled = inputs()
    g = torch.full((2,), 3.5)
    with torch.no_grad():
        base = flux(
            hidden_states=pack_latents(z_t),
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=sigma,
            img_ids=image_ids(4, 6),
            txt_ids=torch.zeros(5, 3),
            guidance=g,
            return_dict=False,
        )[0]
        model(z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img)  # a depth pass in between changes nothing
        gen = model(z_t, sigma, ctx, pooled, mode="generate", guidance=g)
    assert torch.equal(pack_latents(gen), base)
    assert all(torch.equal(before[k], v) for k, v in flux.state_dict().items())


def test_official_folder_and_single_file_load(tmp_path):
    conv = tiny_flux_converters()
    save_flux_converters(conv, tmp_path / "repo" / "depth_converters")
    cfg = json.loads((tmp_path / "repo" / "depth_converters" / "config.json").read_text())
    assert cfg["_class_name"] == "xFluxTransformer2DModel" and cfg["merge_flux_transformer"] and cfg["num_layers"] == 0
    for path in (
        tmp_path / "repo",
        tmp_path / "repo" / "depth_converters",
        tmp_path / "repo" / "depth_converters" / "diffusion_pytorch_model.safetensors",
    ):
        loaded = load_flux_converters(path)
        assert loaded.config == TINY_FLUX_CONVERTER
        for k, v in conv.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    # a bare file without config.json: the config is derived from the shapes
    from safetensors.torch import save_file

    save_file(conv.state_dict(), tmp_path / "bare.safetensors")
    assert load_flux_converters(tmp_path / "bare.safetensors").config == TINY_FLUX_CONVERTER


def test_bf16_file_keeps_its_dtype(tmp_path):
    save_flux_converters(tiny_flux_converters().to(torch.bfloat16), tmp_path / "c")
    assert load_flux_converters(tmp_path / "c").x_embedder.weight.dtype == torch.bfloat16
    assert load_flux_converters(tmp_path / "c", dtype=torch.float32).x_embedder.weight.dtype == torch.float32


def test_official_key_count_and_params_at_full_size():
    cfg = FluxConverterConfig()
    shapes = cfg.expected_shapes()
    assert len(shapes) == 146
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 1_435_391_552
    with torch.device("meta"):
        module = MergeFluxConverters(cfg)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == shapes
    assert shapes["x_embedder.weight"] == (3072, 128) and shapes["proj_out.weight"] == (64, 3072)


def test_full_size_parameter_counts_of_flux_dev():
    """The README's memory figures: FLUX.1-dev transformer and converters, counted on the meta device."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        flux = FluxTransformer2DModel(**FLUX_DEV)
    n_flux = sum(p.numel() for p in flux.parameters())
    assert n_flux == 11_901_408_320
    assert round(100 * 1_435_391_552 / n_flux, 2) == 12.06  # "1.4B (12%)" in the paper's table


def test_full_size_parameter_counts_of_the_flux_text_encoders_and_vae():
    """The README's memory figures for the other FLUX.1-dev parts (configs of its text_encoder*/ and vae/)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5 = T5Config(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, vocab_size=32128,
                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)  # fmt: skip
    clip = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=77, vocab_size=49408, projection_dim=768)  # fmt: skip
    with torch.device("meta"):
        n_t5 = sum(p.numel() for p in T5EncoderModel(t5).parameters())
        n_clip = sum(p.numel() for p in CLIPTextModel(clip).parameters())
        vae = AutoencoderKL(
            latent_channels=16,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        n_vae = sum(p.numel() for p in vae.parameters())
    assert (n_t5, n_clip, n_vae) == (4_762_310_656, 123_060_480, 83_819_683)


def _sparse_safetensors(path, shapes, dtype="BF16", truncate=0):
    """A full-size safetensors file whose data region is a hole (no disk, no memory): the header is real."""
    header, offset = {}, 0
    for k, s in shapes.items():
        n = torch.Size(s).numel() * 2
        header[k] = {"dtype": dtype, "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset - truncate)
    return path


def test_full_size_official_file_passes_the_checks_before_loading(tmp_path):
    folder = tmp_path / "merge-large-depth-v1" / "depth_converters"
    folder.mkdir(parents=True)
    cfg = FluxConverterConfig()
    (folder / "config.json").write_text(json.dumps(cfg.to_official_dict()))
    _sparse_safetensors(folder / "diffusion_pytorch_model.safetensors", cfg.expected_shapes())
    assert os.path.getsize(folder / "diffusion_pytorch_model.safetensors") > 2_870_000_000  # 1.4 B × 2 bytes
    weights, found = inspect_flux_converters(tmp_path / "merge-large-depth-v1")
    assert found == cfg and weights.endswith("diffusion_pytorch_model.safetensors")
    _sparse_safetensors(folder / "diffusion_pytorch_model.safetensors", cfg.expected_shapes(), truncate=1)
    with pytest.raises(CheckpointError, match="truncated"):
        inspect_flux_converters(folder)
    wrong = dict(cfg.expected_shapes())
    wrong["x_embedder.weight"] = (3072, 64)  # an un-widened FLUX x_embedder
    _sparse_safetensors(folder / "diffusion_pytorch_model.safetensors", wrong)
    with pytest.raises(CheckpointError, match=r"x_embedder.weight: file \(3072, 64\) vs expected \(3072, 128\)"):
        inspect_flux_converters(folder)


def test_bad_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    from unidense_core.merge.converters import save_converters
    from unidense_core.tiny import tiny_converters

    save_converters(tiny_converters(), tmp_path / "b" / "depth_converters")
    with pytest.raises(CheckpointError, match="MERGE-B converters"):
        load_flux_converters(tmp_path / "b")
    save_file({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="MERGE-B converters"):
        load_flux_converters(tmp_path / "b.safetensors")
    save_file(randomize_(tiny_flux()).state_dict(), tmp_path / "flux.safetensors")
    with pytest.raises(CheckpointError, match="full FLUX transformer"):
        load_flux_converters(tmp_path / "flux.safetensors")
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, tmp_path / "bfl.safetensors")
    with pytest.raises(CheckpointError, match="original"):
        load_flux_converters(tmp_path / "bfl.safetensors")
    sd = tiny_flux_converters().state_dict()
    del sd["proj_out.bias"]
    save_file(sd, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="Missing keys: proj_out.bias"):
        load_flux_converters(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_flux_converters(tmp_path / "nothing_here")


def test_converters_for_another_base_are_refused():
    conv = tiny_flux_converters()
    with pytest.raises(ValueError, match="no guidance embedding"):
        MergeFluxTransformer(tiny_flux(guidance_embeds=False), conv)
    with pytest.raises(ValueError, match="width"):
        MergeFluxTransformer(tiny_flux(attention_head_dim=8, axes_dims_rope=(2, 2, 4)), conv)
    from unidense_core.merge.forward import MergePixArtTransformer
    from unidense_core.tiny import tiny_pixart

    with pytest.raises(ValueError, match="not a FLUX transformer"):
        MergeFluxTransformer(tiny_pixart(), conv)
    with pytest.raises(ValueError, match="width"):
        MergePixArtTransformer(tiny_pixart(), conv)


def test_full_width_converters_need_flux_dev_depth():
    from unidense_core.merge.flux_forward import check_flux_compatible

    class Host:  # the sizes a pruned "lite" FLUX would report (8 double blocks), FLUX.1 width
        num_double_blocks, num_single_blocks, hidden_size, num_heads, guidance_embed = 8, 38, 3072, 24, True

    with torch.device("meta"):
        conv = MergeFluxConverters(FluxConverterConfig())
    with pytest.raises(ValueError, match="19 \\+ 38"):
        check_flux_compatible(Host(), conv)


def test_depth_mode_input_errors():
    model = MergeFluxTransformer(tiny_flux(), tiny_flux_converters())
    z_img, z_t, sigma, ctx, pooled = inputs()
    with pytest.raises(ValueError, match="image_latent"):
        model(z_t, sigma, ctx, pooled, mode="depth")
    with pytest.raises(ValueError, match="multiples of 16"):
        model(z_t[..., :7], sigma, ctx, pooled, mode="depth", image_latent=z_img[..., :7])
    with pytest.raises(ValueError, match="FLUX VAE"):
        model(z_t[:, :4], sigma, ctx, pooled, mode="depth", image_latent=z_img[:, :4])
    with pytest.raises(ValueError, match="mode must be"):
        model(z_t, sigma, ctx, pooled, mode="normals")


def test_mixed_precision_base_and_converters():
    """A bf16 base with fp32 converters (or the reverse) runs and stays close to the fp32 result."""
    z_img, z_t, sigma, ctx, pooled = inputs()
    with torch.no_grad():
        ref = MergeFluxTransformer(tiny_flux(), tiny_flux_converters())(
            z_t, sigma, ctx, pooled, mode="depth", image_latent=z_img
        )
        for fd, cd in ((torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)):
            model = MergeFluxTransformer(tiny_flux().to(fd), tiny_flux_converters().to(cd))
            out = model(z_t.to(fd), sigma, ctx.to(fd), pooled.to(fd), mode="depth", image_latent=z_img.to(fd))
            assert out.dtype == cd
            assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 0.1
