"""Ensemble and video nodes in a real ComfyUI (tiny MERGE-B and DMP models on the CPU), against the core.

The ensemble chain is 'UniDense Ensemble Batch' -> the stock estimator chain on the N·B batch -> 'UniDense Ensemble';
it must equal the members run one by one and combined by ``dense.ensemble``. 'UniDense Video Depth' must give
identical depth for identical frames, not depend on the chunk size where nothing is carried between chunks, match
the single-image chain frame by frame, and flicker less with the temporal options (``dense.video.flicker`` on the
static pixels of tests/synthetic_video.py).
"""

import sys

import pytest
import torch
from synthetic_video import moving_sphere

from unidense_core.dense.ensemble import ensemble_scalar
from unidense_core.dense.video import flicker
from unidense_core.dmp.lora import save_lora_attn_procs
from unidense_core.merge.converters import save_converters
from unidense_core.tiny import random_dmp_lora, tiny_converters, tiny_pixart, tiny_sd_unet

pytestmark = pytest.mark.usefixtures("one_thread")
LORA_FILE = "dmp/depth-tiny-b/pytorch_lora_weights.safetensors"


def pack_dense_map(env):
    """DenseMap as the pack loaded by ComfyUI sees it (another module path than the tests' ``unidense_core``)."""
    return sys.modules[env["node"]("UniDense_Ensemble").__module__].DenseMap


def cond(seed=0, tokens=3):
    return [[torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed)), {}]]


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    from comfy_tiny import comfy_pixart_from_diffusers, comfy_sd15_from_diffusers, comfy_vae

    loras = tmp_path_factory.mktemp("loras_b")
    comfy.folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    unet = tiny_sd_unet()
    save_lora_attn_procs(random_dmp_lora(unet, scale=0.3), loras / "dmp" / "depth-tiny-b")
    dmp = comfy.node("UniDense_LoadDMPLora").execute(comfy_sd15_from_diffusers(comfy, unet), LORA_FILE, 1.0)[0]
    convs = tmp_path_factory.mktemp("merge_converters_b")
    comfy.folder_paths.add_model_folder_path("merge_converters", str(convs), is_default=True)
    save_converters(tiny_converters(), convs / "depth_converters_b")
    handle = comfy.node("UniDense_LoadConverter").execute("depth_converters_b/diffusion_pytorch_model.safetensors")[0]
    pixart = comfy_pixart_from_diffusers(comfy, tiny_pixart())
    merge = comfy.node("UniDense_ModeSwitch").execute(pixart, handle, "depth", "pixart_alpha")[0]
    frames = moving_sphere(6, 32, 32, radius=6)[0].movedim(1, -1).contiguous()  # IMAGE [6,32,32,3]
    static = moving_sphere(6, 32, 32, radius=6)[2]
    return dict(comfy=comfy, node=comfy.node, dmp=dmp, merge=merge, vae=comfy_vae(comfy), frames=frames, static=static)


def dmp_chain(env, image):
    """The single-image DMP chain of the workflows: resize (native), VAEEncode, sampler, VAEDecode, raw read-out."""
    node, vae = env["node"], env["vae"]
    pixels = node("UniDense_ProcessingResolution").execute(image, 0, "shorter")[0]
    pred = node("UniDense_DeterministicInterpolationSampler").execute(
        env["dmp"], cond(), {"samples": vae.encode(pixels)}
    )
    return node("UniDense_DMPDepthReadout").execute(vae.decode(pred[0]["samples"]), 1.0, True, "none", image)[1]


def video(env, frames, **kw):
    options = dict(method="dmp", chunk_size=4, resolution="native", latent_blend=0.0)
    options.update(kw)
    model = env["merge"] if options["method"] == "merge-b" else env["dmp"]
    return env["node"]("UniDense_VideoDepth").execute(frames, model, env["vae"], cond(), **options)


# ----------------------------------------------------------------------------------------------------------
# Ensembles


def test_ensemble_batch_is_member_major_and_mirrors_odd_members(env):
    image = torch.rand(2, 8, 6, 3)
    out = env["node"]("UniDense_EnsembleBatch").execute(image, 3, "hflip")[0]
    assert out.shape == (6, 8, 6, 3)
    assert torch.equal(out[0], image[0]) and torch.equal(out[3], image[1].flip(1)) and torch.equal(out[4], image[0])


def test_ensemble_node_identical_members_order_and_core(env):
    node, DenseMap = env["node"]("UniDense_Ensemble"), pack_dense_map(env)
    member = torch.rand(2, 9, 7)
    dense, unc, unc_image, preview = node.execute(member.repeat(4, 1, 1), 4, "noise", "median", "auto").args
    assert isinstance(dense, DenseMap) and dense.kind == "depth" and dense.scale == "affine"
    assert torch.equal(dense.values, member) and torch.equal(unc, torch.zeros(2, 9, 7))
    assert (
        unc_image.shape == (2, 9, 7, 3) and preview.shape == (2, 9, 7, 3) and 0 <= preview.min() <= preview.max() <= 1
    )
    members = torch.rand(5, 2, 9, 7, generator=torch.Generator().manual_seed(1)) + 0.1
    out = node.execute(members.flatten(0, 1), 5, "noise", "mean", "auto").args
    core = ensemble_scalar(members, reduction="mean")
    assert torch.equal(out[0].values, core.values) and torch.equal(out[1], core.uncertainty)
    perm = torch.tensor([2, 4, 0, 1, 3])
    again = node.execute(members[perm].flatten(0, 1), 5, "noise", "mean", "auto").args
    assert torch.equal(again[0].values, out[0].values) and torch.equal(again[1], out[1])
    assert torch.allclose(out[2].amax(dim=(1, 2, 3)), torch.ones(2))  # the image: uncertainty / its maximum
    metric = DenseMap(members.flatten(0, 1), "depth", scale="metric", units="m", source="dmp")
    kept = node.execute(metric, 5, "noise", "median", "auto").args  # metric: never rescaled
    assert kept[0].scale == "metric" and kept[0].units == "m" and kept[0].source == "dmp"
    assert torch.equal(kept[1], ensemble_scalar(members, align="none").uncertainty)


def test_dmp_hflip_ensemble_through_the_stock_chain_equals_the_members_combined(env):
    image = env["frames"][:2]
    members = env["node"]("UniDense_EnsembleBatch").execute(image, 2, "hflip")[0]
    depth = dmp_chain(env, members)  # one run of the estimator on the N·B = 4 batch
    out = env["node"]("UniDense_Ensemble").execute(depth, 2, "hflip", "median", "none").args
    direct = dmp_chain(env, image)
    mirrored = dmp_chain(env, image.flip(2)).flip(-1)
    expect = ensemble_scalar(torch.stack([direct, mirrored]), align="none")
    torch.testing.assert_close(out[0].values, expect.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], (direct - mirrored).abs() / 2, rtol=0, atol=1e-5)
    assert out[1].mean() > 1e-4  # the tiny model is not mirror-symmetric: the mirror disagrees


# ----------------------------------------------------------------------------------------------------------
# Video


def test_video_dmp_identical_frames_chunking_and_the_single_image_chain(env):
    same = env["frames"][2:3].expand(5, -1, -1, -1)
    dense, raw, shown = video(env, same, align="previous").args
    torch.testing.assert_close(raw, raw[:1].expand_as(raw), rtol=0, atol=1e-6)
    assert isinstance(dense, pack_dense_map(env)) and dense.kind == "depth" and dense.source == "dmp"
    assert torch.equal(dense.values, raw) and shown.shape == (5, 32, 32, 3)
    frames = env["frames"]
    chunked = video(env, frames, chunk_size=4, align="none").args[1]
    single = video(env, frames, chunk_size=1, align="none").args[1]
    torch.testing.assert_close(chunked, single, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[3:4], dmp_chain(env, frames[3:4]), rtol=0, atol=1e-5)


def test_video_merge_temporal_options_flicker_less(env):
    frames, static = env["frames"], env["static"]
    kw = dict(method="merge-b", steps=2, chunk_size=3)
    per_frame = video(env, frames, shared_noise=False, latent_blend=0.0, align="none", **kw).args[1]
    temporal = video(env, frames, shared_noise=True, latent_blend=0.1, align="previous", **kw).args[1]
    f_frame, f_temporal = flicker(per_frame, static), flicker(temporal, static)
    assert f_temporal < 0.5 * f_frame, (f_temporal, f_frame)
    same = video(env, frames[1:2].expand(4, -1, -1, -1), latent_blend=0.0, **kw).args[1]
    torch.testing.assert_close(same, same[:1].expand_as(same), rtol=0, atol=1e-6)


def test_video_node_checks_its_inputs(env):
    with pytest.raises(ValueError, match="method must be one of"):
        video(env, env["frames"], method="marigold")
    with pytest.raises(ValueError, match="chunk_size must be an integer from 1"):
        video(env, env["frames"], chunk_size=0)
    with pytest.raises(ValueError, match="frames is empty"):
        video(env, env["frames"][:0])
