"""Training pieces against the official formulas: MERGE's converter initialisation, multi-resolution noise and
masked ε loss; DMP's LoRA (layout, init, v-target loss) and JointNet's zero-initialised depth branch; the
deterministic batch plan that makes multi-process and resumed runs reproducible."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unidense_core.merge.forward import MergePixArtTransformer
from unidense_core.merge.train import (
    annealed_strength,
    init_converters_from_base,
    latent_valid_mask,
    merge_training_loss,
    multi_res_noise,
)
from unidense_core.tiny import tiny_pixart, tiny_sd21_unet, tiny_sd_unet
from unidense_core.training.data import BatchPlan, quantile_normalize

pytestmark = pytest.mark.usefixtures("one_thread")


def official_multi_res_noise(x, strength, generator):
    """Marigold's multi_res_noise_like('original'), written out for the check (batch of one)."""
    b, c, w, h = x.shape
    noise = torch.randn(x.shape, generator=generator)
    for i in range(10):
        r = torch.rand(1, generator=generator) * 2 + 2
        w, h = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        up = torch.nn.Upsample(size=x.shape[-2:], mode="bilinear")
        noise += up(torch.randn(b, c, w, h, generator=generator)) * strength**i
        if w == 1 or h == 1:
            break
    return noise / noise.std()


def test_multi_res_noise_matches_marigold_for_one_sample():
    for t, shape in ((999, (4, 30, 40)), (10, (4, 8, 8))):
        s = annealed_strength(t)
        assert s == pytest.approx(0.9 * t / 1000)
        ours = multi_res_noise(shape, s, torch.Generator().manual_seed(t))
        ref = official_multi_res_noise(torch.zeros(1, *shape), s, torch.Generator().manual_seed(t))[0]
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_converter_init_follows_the_official_from_transformer():
    base = tiny_pixart()
    torch.manual_seed(0)
    conv = init_converters_from_base(base)  # 4 base blocks -> 2 converters (share 2)
    bsd, csd = base.state_dict(), conv.state_dict()
    assert conv.config.num_layers == 2 and conv.config.in_channels == 8
    torch.testing.assert_close(csd["pos_embed.proj.weight"], 0.5 * torch.cat([bsd["pos_embed.proj.weight"]] * 2, 1))
    for k in ("pos_embed.proj.bias", "scale_shift_table", "proj_out.weight", "proj_out.bias"):
        assert torch.equal(csd[k], bsd[k]), k
    # converter 0 <- base block 0 (names and shapes that match); FFN in/out weights stay random (other width)
    for k in ("scale_shift_table", "attn1.to_q.weight", "attn1.to_out.0.bias", "ff.net.2.bias"):
        assert torch.equal(csd[f"transformer_blocks.0.{k}"], bsd[f"transformer_blocks.0.{k}"]), k
    ff = "transformer_blocks.0.ff.net.0.proj.weight"
    assert csd[ff].shape != bsd[ff].shape
    # converter 1 is beyond range(0, 2, 2): random, as in the official code
    assert not torch.equal(csd["transformer_blocks.1.attn1.to_q.weight"], bsd["transformer_blocks.2.attn1.to_q.weight"])


def test_merge_loss_is_the_masked_epsilon_mse():
    base = tiny_pixart()
    torch.manual_seed(0)
    conv = init_converters_from_base(base)
    g = torch.Generator().manual_seed(1)
    z_img, z_d, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([10, 900])
    ac = torch.linspace(0.99, 0.01, 1000)
    ctx, mask = torch.randn(1, 3, 32, generator=g).expand(2, -1, -1), torch.ones(2, 3, dtype=torch.long)
    valid = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    valid[0, 0, :9, :9] = False  # touches latent pixels (0,0), (0,1), (1,0), (1,1) of image 0
    vl = latent_valid_mask(valid)
    assert vl.shape == (2, 1, 8, 8) and int((~vl).sum()) == 4
    from unidense_core.merge.forward import DiffusersPixArtHost

    loss = merge_training_loss(DiffusersPixArtHost(base), conv, z_img, z_d, t, noise, ac, ctx, mask, vl)
    a = ac[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z_d + (1 - a).sqrt() * noise
    out = MergePixArtTransformer(base, conv)(z_t, t, ctx, mask, mode="depth", image_latent=z_img)[:, :4]
    m = vl.expand_as(out)
    torch.testing.assert_close(loss, F.mse_loss(out[m], noise[m]), rtol=1e-6, atol=1e-7)
    # gradient checkpointing gives the same loss and gradients
    loss.backward()
    grads = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    loss_ckpt = merge_training_loss(DiffusersPixArtHost(base), conv, z_img, z_d, t, noise, ac, ctx, mask, vl, True)
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss)
    for a_, b_ in zip(grads, (p.grad for p in conv.parameters()), strict=True):
        torch.testing.assert_close(a_, b_, rtol=1e-5, atol=1e-7)


def test_dmp_lora_layout_init_and_v_loss():
    from unidense_core.dmp.lora import load_lora, save_lora_attn_procs
    from unidense_core.dmp.sampler import alphas_cumprod
    from unidense_core.dmp.train import add_trainable_lora, dmp_training_loss, extract_lora, normalize_fixed_scale

    unet = tiny_sd_unet()
    reference = copy.deepcopy(unet)
    torch.manual_seed(0)
    params = add_trainable_lora(unet)
    lora = extract_lora(unet)
    assert len(lora.modules) == 32 * 4 and all(m.rank == 4 and m.scale == 1.0 for m in lora.modules.values())
    assert all(not m.up.any() for m in lora.modules.values())  # up = 0: the LoRA starts as the identity
    downs = torch.cat([m.down.flatten() for m in lora.modules.values()])
    assert downs.std().item() == pytest.approx(0.25, rel=0.05)  # N(0, 1/r) with r = 4, as LoRAAttnProcessor
    assert sum(p.numel() for p in params) == lora.num_parameters
    assert all(not p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n)
    g = torch.Generator().manual_seed(0)
    z_x, z_y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, ctx = torch.tensor([5, 700]), torch.randn(2, 5, 32, generator=g)
    ac = alphas_cumprod()
    loss = dmp_training_loss(unet, z_x, z_y, t, ac, ctx)
    a = ac[t].view(-1, 1, 1, 1)
    z_t, v = a.sqrt() * z_y + (1 - a).sqrt() * z_x, a.sqrt() * z_x - (1 - a).sqrt() * z_y
    with torch.no_grad():
        torch.testing.assert_close(loss, F.mse_loss(reference(z_t, t, encoder_hidden_states=ctx).sample, v))
    # saved in the official attention-processor layout and read back unchanged
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    path = save_lora_attn_procs(extract_lora(unet), "/tmp/_dmp_lora_test")
    back = load_lora(path)
    assert back.layout == "attn_processor"
    for name, m in extract_lora(unet).modules.items():
        assert torch.equal(back.modules[name].up, m.up) and torch.equal(back.modules[name].down, m.down)
    assert normalize_fixed_scale(torch.tensor([0.0, 4.0, 8.0, 10.0]), 8.0).tolist() == [-1.0, 0.0, 1.0, 1.5]


def test_jointnet_depth_branch_starts_as_a_copy_with_zero_exchange():
    from unidense_core.dmp.sampler import alphas_cumprod
    from unidense_core.jointnet.train import jointnet_from_unet, jointnet_training_loss, stage1_trainable

    unet = tiny_sd21_unet()
    reference = copy.deepcopy(unet)
    model = jointnet_from_unet(unet)
    exchange = [*model.rgb.exchange.parameters(), *model.depth.exchange.parameters()]
    assert all(not p.any() for p in exchange)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 8, 8, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([3, 800])
    with torch.no_grad():
        eps = model(z, t, ctx)
        torch.testing.assert_close(eps[:, :4], reference(z[:, :4], t, encoder_hidden_states=ctx).sample)  # RGB = base
        torch.testing.assert_close(eps[:, 4:], reference(z[:, 4:], t, encoder_hidden_states=ctx).sample)  # copy
    trainable = stage1_trainable(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("depth.") or n.startswith("rgb.jointnet_") for n in names)
    assert not any(p.requires_grad for p in model.rgb.unet.parameters())
    assert len(trainable) == len(names)
    ac = alphas_cumprod()
    noise = torch.randn(2, 8, 8, 8, generator=g)
    loss = jointnet_training_loss(model, z[:, :4], z[:, 4:], t, noise, ac, ctx)
    a = ac[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        e = model(a.sqrt() * z + (1 - a).sqrt() * noise, t, ctx)
    torch.testing.assert_close(loss, F.mse_loss(e[:, :4], noise[:, :4]) + F.mse_loss(e[:, 4:], noise[:, 4:]))


def test_batch_plan_is_deterministic_sharded_and_mixed():
    plan = BatchPlan([10], global_batch=4, seed=3)
    again = BatchPlan([10], global_batch=4, seed=3)
    assert [s.index for s in plan.batch(5)] == [s.index for s in again.batch(5)]
    # two epochs of 2 batches each (drop_last): every batch of an epoch is distinct, the remainder dropped
    epoch0 = [s.index for k in (0, 1) for s in plan.batch(k)]
    assert len(set(epoch0)) == 8
    # a process's shard is its slice of the global batch, with the same per-sample seeds
    for k in range(4):
        whole = plan.batch(k)
        halves = plan.shard(k, 0, 2) + plan.shard(k, 1, 2)
        assert [(s.index, s.seed) for s in halves] == [(s.index, s.seed) for s in whole]
    mixed = BatchPlan([50, 50], global_batch=2, seed=0, probs=[0.9, 0.1])
    sources = [mixed.batch(k)[0].source for k in range(400)]
    assert all(len({s.source for s in mixed.batch(k)}) == 1 for k in range(20))  # one dataset per batch
    assert 0.85 < sources.count(0) / 400 < 0.95
    with pytest.raises(ValueError, match="fewer than the global batch"):
        BatchPlan([3], global_batch=4, seed=0)


def test_quantile_normalisation_maps_2_and_98_percent_to_minus_one_and_one():
    depth = torch.linspace(1, 101, 101).view(1, 1, 101)
    valid = torch.ones_like(depth, dtype=torch.bool)
    out = quantile_normalize(depth, valid)
    lo, hi = np.quantile(np.linspace(1, 101, 101), [0.02, 0.98])
    expect = np.clip((np.linspace(1, 101, 101) - lo) / (hi - lo) * 2 - 1, -1, 1)
    np.testing.assert_allclose(out.flatten().numpy(), expect, atol=1e-6)
