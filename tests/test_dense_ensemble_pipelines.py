"""Ensembles in the standalone pipelines: MERGE-B ``ensemble_size`` (members differ by their noise) and DMP ``tta``
(members are the image and its mirror), each against the same members run one by one and combined by
``dense.ensemble``."""

import pytest
import torch

from unidense_core.dense.ensemble import ensemble_normals, ensemble_scalar
from unidense_core.dmp.lora import apply_lora_peft
from unidense_core.dmp.pipeline import DMPPipeline
from unidense_core.merge.pipeline import MergePipeline
from unidense_core.tiny import random_dmp_lora, tiny_converters, tiny_pixart, tiny_sd_unet, tiny_vae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def merge():
    empty = (torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1)), None)
    return MergePipeline(tiny_pixart(), tiny_converters(), tiny_vae(), empty_prompt=empty)


@pytest.fixture(scope="module")
def dmp():
    unet = tiny_sd_unet()
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    return DMPPipeline(apply_lora_peft(unet, random_dmp_lora(unet, scale=0.3)), tiny_vae(), empty_prompt=ctx)


@pytest.fixture(scope="module")
def image():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_merge_ensemble_is_the_members_run_one_by_one_and_combined(merge, image):
    kw = dict(num_inference_steps=2, resolution_binning=False, posterior="mode")
    noise = torch.randn(3, 2, 4, 4, 4, generator=torch.Generator().manual_seed(5))  # [N,B,4,h,w]
    for reduction in ("median", "mean"):
        out = merge.estimate_depth(
            image, latents=noise.flatten(0, 1), ensemble_size=3, ensemble_reduction=reduction, **kw
        )
        members = torch.stack([merge.estimate_depth(image, latents=noise[j], **kw).depth for j in range(3)])
        expect = ensemble_scalar(members, reduction=reduction)
        assert out.depth.shape == (2, 32, 32) and out.uncertainty.shape == (2, 32, 32)
        torch.testing.assert_close(out.depth, expect.values, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.uncertainty, expect.uncertainty, rtol=0, atol=1e-5)
        assert out.uncertainty.mean() > 1e-4  # different noises disagree somewhere
    same = merge.estimate_depth(image, latents=noise[0].repeat(3, 1, 1, 1), ensemble_size=3, **kw)
    single = merge.estimate_depth(image, latents=noise[0], **kw)
    torch.testing.assert_close(same.depth, single.depth, rtol=0, atol=1e-6)  # N copies of one noise: that member
    assert same.uncertainty.abs().max() < 1e-6 and single.uncertainty is None
    with pytest.raises(ValueError, match="ensemble_size must be an integer from 1 to 64"):
        merge.estimate_depth(image, ensemble_size=0, **kw)


def test_dmp_hflip_is_the_image_and_its_mirror_combined(dmp, image):
    z = dmp.encode_image(image * 2 - 1, posterior="mode")  # one image latent (no posterior draws between runs)
    kw = dict(processing_resolution=0, target_scale=1.0)  # × 1: the raw read-out, no per-image min-max
    out = dmp(None, image_latents=z, tta="hflip", **kw)
    direct = dmp(None, image_latents=z, **kw).depth
    mirrored = dmp(None, image_latents=z.flip(-1), **kw).depth.flip(-1)
    expect = ensemble_scalar(torch.stack([direct, mirrored]), align="none")  # metric depth is never rescaled
    torch.testing.assert_close(out.depth, expect.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.uncertainty, expect.uncertainty, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.uncertainty, (direct - mirrored).abs() / 2, rtol=0, atol=1e-5)  # MAD of two
    normals = dmp(None, image_latents=z, task="normals", tta="hflip")
    a = dmp(None, image_latents=z, task="normals").normals.permute(0, 2, 3, 1)
    b = dmp(None, image_latents=z.flip(-1), task="normals").normals.permute(0, 2, 3, 1).flip(-2)
    b = b * torch.tensor([-1.0, 1.0, 1.0])  # the mirror flips x
    expect = ensemble_normals(torch.stack([a, b]))
    torch.testing.assert_close(
        normals.normals.permute(0, 2, 3, 1), expect.values, rtol=0, atol=1e-4
    )  # unit vectors: near-cancelling pairs amplify
    with pytest.raises(ValueError, match="tta must be one of"):
        dmp(image, tta="vflip", **kw)
    with pytest.raises(ValueError, match="image tasks .* take tta 'none'"):
        dmp(image, task="image", tta="hflip", processing_resolution=0)
