"""Bad inputs of the ensemble and video nodes and the core functions behind them: one table row per (node, input).

Every row calls the node's ``execute`` in a real ComfyUI (tiny MERGE-B and DMP models) or the core function, and must
raise a clear error naming the input (tests/bad_inputs.py): empty batches, non-finite values (with where they are),
references and maps of another size, counts that do not make whole ensembles, combo values outside the options.
"""

import sys

import pytest
import torch
from bad_inputs import Case, run_case

from unidense_core.dense.align import batched_scale_shift
from unidense_core.dense.ensemble import ensemble_map, ensemble_scalar, split_members
from unidense_core.dense.maps import DenseMap
from unidense_core.dense.video import SequenceAligner, blend_start, flicker, run_video
from unidense_core.dmp.lora import save_lora_attn_procs
from unidense_core.merge.converters import save_converters
from unidense_core.tiny import random_dmp_lora, tiny_converters, tiny_pixart, tiny_sd_unet

pytestmark = pytest.mark.usefixtures("one_thread")
E: dict = {}  # filled by the env fixture; the table's calls read it when they run
NAN, INF = float("nan"), float("inf")


def with_value(shape, index, value):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    x[index] = value
    return x


def cond(width=32):
    return [[torch.randn(1, 3, width, generator=torch.Generator().manual_seed(0)), {}]]


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    from comfy_tiny import comfy_pixart_from_diffusers, comfy_sd15_from_diffusers, comfy_vae

    loras = tmp_path_factory.mktemp("loras_bad_b")
    comfy.folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    unet = tiny_sd_unet()
    save_lora_attn_procs(random_dmp_lora(unet, scale=0.3), loras / "dmp" / "bad-b")
    lora = "dmp/bad-b/pytorch_lora_weights.safetensors"
    convs = tmp_path_factory.mktemp("converters_bad_b")
    comfy.folder_paths.add_model_folder_path("merge_converters", str(convs), is_default=True)
    save_converters(tiny_converters(), convs / "bad_b")
    handle = comfy.node("UniDense_LoadConverter").execute("bad_b/diffusion_pytorch_model.safetensors")[0]
    pixart = comfy_pixart_from_diffusers(comfy, tiny_pixart())
    E.update(
        node=comfy.node,
        dmp=comfy.node("UniDense_LoadDMPLora").execute(comfy_sd15_from_diffusers(comfy, unet), lora, 1.0)[0],
        merge=comfy.node("UniDense_ModeSwitch").execute(pixart, handle, "depth", "pixart_alpha")[0],
        vae=comfy_vae(comfy),
        PackDenseMap=sys.modules[comfy.node("UniDense_Ensemble").__module__].DenseMap,
    )
    yield E
    E.clear()


def batch(image=None, n=2, aug="noise"):
    image = torch.rand(2, 8, 8, 3) if image is None else image
    return lambda: E["node"]("UniDense_EnsembleBatch").execute(image, n, aug)


def ens(members=None, n=2, aug="noise", reduction="median", align="auto"):
    def call():
        m = torch.rand(4, 8, 8) if members is None else members
        m = m(E) if callable(m) else m
        return E["node"]("UniDense_Ensemble").execute(m, n, aug, reduction, align)

    return call


def vid(frames=None, method="dmp", **kw):
    def call():
        f = torch.rand(3, 32, 32, 3) if frames is None else frames
        options = dict(method=method, chunk_size=2, steps=1, resolution="native", latent_blend=0.0)
        options.update(kw)
        positive = options.pop("positive", cond())
        model = E["merge"] if method == "merge-b" else E["dmp"]
        return E["node"]("UniDense_VideoDepth").execute(f, model, E["vae"], positive, **options)

    return call


# fmt: off
CASES = [
    Case("EnsembleBatch", "empty batch", batch(torch.rand(0, 8, 8, 3)), r"image is empty"),
    Case("EnsembleBatch", "NaN pixel", batch(with_value((2, 8, 8, 3), (1, 2, 3, 0), NAN)),
         r"image has 1 non-finite .* B=1, H=2, W=3, C=0"),
    Case("EnsembleBatch", "ensemble_size 0", batch(n=0), r"ensemble_size must be an integer from 1 to 64, got 0"),
    Case("EnsembleBatch", "ensemble_size 65", batch(n=65), r"ensemble_size must be an integer from 1 to 64, got 65"),
    Case("EnsembleBatch", "augmentation vflip", batch(aug="vflip"), r"augmentation must be one of .*'vflip'"),
    Case("Ensemble", "empty MASK batch", ens(torch.rand(0, 8, 8)), r"members is empty"),
    Case("Ensemble", "NaN in MASK", ens(with_value((4, 8, 8), (3, 5, 1), NAN)),
         r"members has 1 non-finite.*B=3, H=5, W=1"),
    Case("Ensemble", "Inf in DENSE", ens(lambda e: e["PackDenseMap"](with_value((4, 8, 8), (2, 0, 7), INF), "depth")),
         r"depth values has 1 non-finite"),
    Case("Ensemble", "5 maps for N=2", ens(torch.rand(5, 8, 8)),
         r"holds 5 maps, which is not a multiple of ensemble_size 2"),
    Case("Ensemble", "ensemble_size 0", ens(n=0), r"ensemble_size must be an integer from 1 to 64"),
    Case("Ensemble", "reduction mode", ens(reduction="mode"), r"reduction must be one of .*'mode'"),
    Case("Ensemble", "align robust", ens(align="robust"), r"align must be one of .*'robust'"),
    Case("Ensemble", "augmentation vflip", ens(aug="vflip"), r"augmentation must be one of .*'vflip'"),
    Case("Ensemble", "members an IMAGE", ens(torch.rand(4, 8, 8, 3)), r"members must be a MASK \[B,H,W\]"),
    Case("Ensemble", "members a string", ens("depth"), r"members must be a UNIDENSE_DENSE or a MASK, got str"),
    Case("VideoDepth", "empty frames", vid(torch.rand(0, 32, 32, 3)), r"frames is empty"),
    Case("VideoDepth", "NaN frame", vid(with_value((3, 32, 32, 3), (2, 4, 5, 1), NAN)),
         r"frames has 1 non-finite .* B=2, H=4, W=5, C=1"),
    Case("VideoDepth", "method marigold", vid(method="marigold"), r"method must be one of .*'marigold'"),
    Case("VideoDepth", "chunk_size 0", vid(chunk_size=0), r"chunk_size must be an integer from 1 to 4096"),
    Case("VideoDepth", "latent_blend 1.5", vid(latent_blend=1.5), r"latent_blend must be a number from 0 to 1"),
    Case("VideoDepth", "latent_blend NaN", vid(latent_blend=NAN), r"latent_blend must be a number from 0 to 1"),
    Case("VideoDepth", "align median", vid(align="median"), r"align must be one of .*'median'"),
    Case("VideoDepth", "resolution 4k", vid(resolution="4k"), r"resolution must be one of .*'4k'"),
    Case("VideoDepth", "steps -1", vid(steps=-1), r"steps must be"),
    Case("VideoDepth", "positive not a conditioning", vid(positive="a photo"),
         r"positive must be a CONDITIONING .* got str"),
    Case("VideoDepth", "MERGE native 40x24", vid(torch.rand(2, 24, 40, 3), method="merge-b"), r"multiples? of 16"),
    # core functions behind the nodes
    Case("core", "lstsq reference of another size",
         lambda: batched_scale_shift(torch.rand(1, 8, 8), torch.rand(1, 8, 9)),
         r"reference is \(1, 8, 9\).*same size"),
    Case("core", "lstsq mask of another size",
         lambda: batched_scale_shift(torch.rand(8, 8), torch.rand(8, 8), torch.ones(8, 9, dtype=torch.bool)),
         r"mask is \(8, 9\) but the maps are \(8, 8\)"),
    Case("core", "ensemble NaN member", lambda: ensemble_scalar(with_value((3, 1, 4, 4), (2, 0, 1, 3), NAN)),
         r"ensemble members has 1 non-finite.*N=2, B=0, H=1, W=3"),
    Case("core", "ensemble of an empty batch", lambda: split_members(torch.zeros(0, 4, 4), 2), r"empty batch"),
    Case("core", "DenseMap valid of another size",
         lambda: DenseMap(torch.rand(2, 4, 4), "depth", valid=torch.ones(2, 4, 5, dtype=torch.bool)),
         r"valid must be a bool mask \[B,H,W\] = \(2, 4, 4\)"),
    Case("core", "ensemble_map align fancy", lambda: ensemble_map(DenseMap(torch.rand(2, 4, 4), "depth"), 2, align="x"),
         r"align must be one of"),
    Case("core", "run_video reference of another size",
         lambda: run_video(2, (4, 4), lambda a, b, p: (torch.rand(b - a, 4, 4), torch.rand(b - a, 1)),
                           reference=torch.rand(4, 5)), r"reference is \(5, 4\) \(W×H\) but the video's depth is 4×4"),
    Case("core", "aligner reference of another size", lambda: SequenceAligner("first", reference=torch.rand(3, 3))(
         torch.rand(2, 4, 4)), r"reference frame is 3×3 but the frames are 4×4"),
    Case("core", "run_video no frames", lambda: run_video(0, (4, 4), lambda a, b, p: None), r"has 0 frames"),
    Case("core", "blend latent of another size",
         lambda: blend_start(torch.rand(2, 4, 4, 4), torch.rand(1, 4, 4, 5), 0.1),
         r"same size"),
    Case("core", "flicker one frame", lambda: flicker(torch.rand(1, 4, 4)), r"T ≥ 2"),
    Case("core", "flicker Inf", lambda: flicker(with_value((3, 4, 4), (1, 2, 0), INF)), r"T=1, H=2, W=0"),
    Case("core", "flicker truth of another size", lambda: flicker(torch.rand(3, 4, 4), truth=torch.rand(3, 4, 5)),
         r"truth is \(3, 4, 5\) but depth is \(3, 4, 4\)"),
    Case("core", "flicker nothing static",
         lambda: flicker(torch.rand(3, 4, 4), static=torch.zeros(4, 4, dtype=torch.bool)),
         r"No pixel is static"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_error(env, case):
    run_case(case)


def test_table_covers_every_node():
    assert {c.node for c in CASES} >= {"EnsembleBatch", "Ensemble", "VideoDepth"} and len(CASES) >= 35


def test_valid_edge_cases_are_finite(env):
    """One member, one frame, a 1×1 MASK, a constant map: finite outputs, not errors."""
    one = E["node"]("UniDense_Ensemble").execute(torch.full((1, 1, 1), 0.5), 1, "noise", "median", "auto").args
    assert one[0].values.item() == 0.5 and one[1].item() == 0.0 and torch.isfinite(one[2]).all()
    flat = E["node"]("UniDense_Ensemble").execute(torch.full((4, 3, 3), 2.0), 2, "hflip", "mean", "auto").args
    assert torch.equal(flat[0].values, torch.full((2, 3, 3), 2.0)) and torch.isfinite(flat[3]).all()
    single = vid(torch.rand(1, 32, 32, 3))().args
    assert single[1].shape == (1, 32, 32) and torch.isfinite(single[1]).all() and torch.isfinite(single[2]).all()
