"""LoRA loading: the official DMP layout unchanged (folder, .safetensors, .bin), peft and older diffusers layouts,
the peft application against the official LoRA math, and clear errors for LoRAs that do not fit."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from unidense_core.dmp.lora import (
    LoraModule,
    LoraWeights,
    apply_lora_peft,
    check_lora_fits,
    load_lora,
    module_weight_shapes,
    parse_lora_state_dict,
    save_lora_attn_procs,
)
from unidense_core.io.checkpoints import CheckpointError
from unidense_core.tiny import SD14_UNET, random_dmp_lora, tiny_sd_unet

# Real configs of the bases a wrong LoRA may come from (diffusers UNet2DConditionModel kwargs; built on "meta").
SD21_UNET = dict(SD14_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SDXL_UNET = dict(
    SD14_UNET,
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def meta_unet(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


@pytest.fixture(scope="module")
def unet():
    return tiny_sd_unet()


@pytest.fixture(scope="module")
def lora(unet):
    return random_dmp_lora(unet, scale=0.3)


def official_keys(lora):
    """The state dict DMP's ``unet.save_attn_procs`` writes (diffusers 0.20 LoRAAttnProcessor)."""
    sd = {}
    for name, m in lora.modules.items():
        mod, proj = (name[: -len(".to_out.0")], "to_out") if name.endswith(".to_out.0") else name.rsplit(".", 1)
        sd[f"{mod}.processor.{proj}_lora.down.weight"] = m.down
        sd[f"{mod}.processor.{proj}_lora.up.weight"] = m.up
    return sd


def reference_unet(base, lora, scale=1.0):
    """The official LoRA math as forward hooks: out = W·h + scale·up(down(h))."""
    ref = copy.deepcopy(base)
    for name, mod in ref.named_modules():
        if name in lora.modules:
            m = lora.modules[name]
            mod.register_forward_hook(
                lambda mod, inp, out, m=m: out + scale * m.scale * F.linear(F.linear(inp[0], m.down), m.up)
            )
    return ref


def forward(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        return unet(z, 601, encoder_hidden_states=ctx).sample


# ----------------------------------------------------------------------------------------------------------
# Reading the official layout


def test_official_layout_covers_all_32_processors(lora):
    sd = official_keys(lora)
    assert len(sd) == 256  # 32 processors × 4 projections × {down, up}
    parsed = parse_lora_state_dict(sd, "official")
    assert parsed.layout == "attn_processor" and len(parsed.modules) == 128
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    assert torch.equal(parsed.modules[name].down, lora.modules[name].down)
    assert all(m.scale == 1.0 and m.rank == 4 for m in parsed.modules.values())  # no alpha -> scale 1 (official)


def test_real_sd14_layout_and_size():
    """At SD 1.4 size the official LoRA has 797,184 parameters (methods.md §3.5), and its keys fit."""
    target = meta_unet(SD14_UNET)
    shapes = module_weight_shapes(target)
    modules = {
        n: LoraModule(torch.zeros(4, s[1]), torch.zeros(s[0], 4))
        for n, s in shapes.items()
        if (".attn1." in n or ".attn2." in n) and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
    }
    lora = LoraWeights(modules, "sd14", "attn_processor")
    assert len(modules) == 128 and lora.num_parameters == 797_184
    assert modules["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"].down.shape == (4, 768)
    check_lora_fits(lora, shapes, "SD 1.4")


@pytest.mark.parametrize("fmt", ["folder_safetensors", "folder_bin", "file_safetensors", "file_bin"])
def test_load_official_checkpoint_unchanged(tmp_path, lora, fmt):
    folder = tmp_path / "depth-hypersim-notext"
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in official_keys(lora).items()}
    if fmt.endswith("safetensors"):
        save_file(sd, folder / "pytorch_lora_weights.safetensors")
        file = folder / "pytorch_lora_weights.safetensors"
    else:
        torch.save(sd, folder / "pytorch_lora_weights.bin")
        file = folder / "pytorch_lora_weights.bin"
    loaded = load_lora(folder if fmt.startswith("folder") else file)
    assert set(loaded.modules) == set(lora.modules)
    assert all(torch.equal(loaded.modules[n].up, lora.modules[n].up) for n in lora.modules)


def test_save_attn_procs_round_trip(tmp_path, lora):
    path = save_lora_attn_procs(lora, tmp_path / "ckpt")
    assert path.endswith("pytorch_lora_weights.safetensors")
    from safetensors.torch import load_file

    assert set(load_file(path)) == set(official_keys(lora))


# ----------------------------------------------------------------------------------------------------------
# Applying with peft


def test_peft_application_equals_official_lora_math(unet, lora):
    ours = apply_lora_peft(copy.deepcopy(unet), lora)
    ref = reference_unet(unet, lora)
    out, expected, plain = forward(ours), forward(ref), forward(unet)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 100 * (out - expected).abs().max()  # the LoRA changes the output
    half = apply_lora_peft(copy.deepcopy(unet), lora, strength=0.5)
    torch.testing.assert_close(forward(half), forward(reference_unet(unet, lora, 0.5)), atol=1e-5, rtol=1e-5)


def test_all_layouts_give_the_same_unet(tmp_path, unet, lora):
    """Official keys, peft keys with alpha = 2·r (up halved), old diffusers ``.lora.down`` keys with ``.alpha``."""
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    peft = {}
    compat = {}
    for name, m in lora.modules.items():
        peft[f"base_model.model.{name}.lora_A.weight"] = m.down
        peft[f"base_model.model.{name}.lora_B.weight"] = (m.up / 2).contiguous()
        compat[f"unet.{name}.lora.down.weight"] = m.down
        compat[f"unet.{name}.lora.up.weight"] = (m.up * 4).contiguous()
        compat[f"unet.{name}.alpha"] = torch.tensor(1.0)  # scale 1/4
    save_file(peft, peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["to_q"]}))
    expected = forward(apply_lora_peft(copy.deepcopy(unet), parse_lora_state_dict(official_keys(lora))))
    for loaded in (load_lora(peft_dir), parse_lora_state_dict(compat, "compat")):
        assert set(loaded.modules) == set(lora.modules)
        torch.testing.assert_close(forward(apply_lora_peft(copy.deepcopy(unet), loaded)), expected)


def test_peft_metadata_and_mixed_ranks(tmp_path, unet, lora):
    modules = dict(lora.modules)
    first = next(iter(modules))
    modules[first] = LoraModule(
        torch.randn(2, modules[first].down.shape[1]), torch.randn(modules[first].up.shape[0], 2)
    )
    sd = {}
    for name, m in modules.items():
        sd[f"unet.{name}.lora_A.weight"] = m.down.contiguous()
        sd[f"unet.{name}.lora_B.weight"] = m.up.contiguous()
    meta = {"unet.r": 4, "unet.lora_alpha": 4, "unet.rank_pattern": {first: 2}, "unet.alpha_pattern": {first: 6}}
    save_file(sd, tmp_path / "x.safetensors", metadata={"lora_adapter_metadata": json.dumps(meta)})
    loaded = load_lora(tmp_path / "x.safetensors")
    assert loaded.modules[first].rank == 2 and loaded.modules[first].scale == 3.0
    assert {m.scale for n, m in loaded.modules.items() if n != first} == {1.0}
    ours = apply_lora_peft(copy.deepcopy(unet), loaded)
    torch.testing.assert_close(forward(ours), forward(reference_unet(unet, loaded)), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# LoRAs that do not fit: errors, never a silent no-op


def attention_lora_for(config, name):
    shapes = module_weight_shapes(meta_unet(config))
    modules = {
        n: LoraModule(torch.zeros(4, s[1]), torch.zeros(s[0], 4))
        for n, s in shapes.items()
        if (".attn1." in n or ".attn2." in n) and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
    }
    return LoraWeights(modules, f"LoRA '{name}'", "attn_processor")


def test_sd2_lora_on_sd1_lists_mismatched_keys_and_shapes():
    sd14 = module_weight_shapes(meta_unet(SD14_UNET))
    with pytest.raises(CheckpointError) as e:
        check_lora_fits(attention_lora_for(SD21_UNET, "sd21"), sd14, "SD 1.4")
    msg = str(e.value)
    assert "96 of 128 modules fit" in msg
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k: LoRA down (4, 1024)" in msg
    assert "model weight (320, 768)" in msg and "SD 2.x" in msg


def test_sdxl_lora_on_sd1_lists_missing_modules():
    sd14 = module_weight_shapes(meta_unet(SD14_UNET))
    with pytest.raises(CheckpointError) as e:
        check_lora_fits(attention_lora_for(SDXL_UNET, "sdxl"), sd14, "SD 1.4")
    msg = str(e.value)
    assert "of 560 modules fit" in msg and "Modules not in the model:" in msg and "transformer_blocks.1." in msg
    assert "Shape mismatches:" in msg and "SDXL" in msg


def test_peft_refuses_a_wrong_lora_before_touching_the_unet(unet):
    wrong = random_dmp_lora(tiny_sd_unet(cross_attention_dim=48))
    target = copy.deepcopy(unet)
    with pytest.raises(CheckpointError, match="attn2.to_k"):
        apply_lora_peft(target, wrong)
    assert not any("lora" in n for n, _ in target.named_modules())


def test_lora_matching_nothing_is_an_error(unet):
    nothing = parse_lora_state_dict(
        {
            "double_blocks.0.img_attn.qkv.lora_A.weight": torch.ones(4, 32),
            "double_blocks.0.img_attn.qkv.lora_B.weight": torch.ones(96, 4),
        },
        "flux-like",
    )
    with pytest.raises(CheckpointError, match="matches none of the modules"):
        apply_lora_peft(copy.deepcopy(unet), nothing)


@pytest.mark.parametrize(
    "sd, match",
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32)}, "LoraLoaderModelOnly"),
        ({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 8)}, "UNet"),
        (
            {"mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.ones(4, 8)},
            "only",
        ),
        ({"a.lora_A.weight": torch.ones(4, 8), "a.lora_B.weight": torch.ones(8, 3)}, "low-rank pair"),
        ({}, "no LoRA weights"),
    ],
)
def test_unreadable_lora_state_dicts(sd, match):
    with pytest.raises(CheckpointError, match=match):
        parse_lora_state_dict(sd, "bad")


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="pytorch_lora_weights"):
        load_lora(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_lora(tmp_path / "none.safetensors")
