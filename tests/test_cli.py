"""``python -m unidense_core`` end to end, in-process, on official-format folders written by the test: every
subcommand writes its files, the 16-bit PNG is round(d·65535) of the raw .npy, the results equal the pipelines
called directly, and bad paths end with a one-line message naming the file (exit code 2, no traceback)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from unidense_core.cli import main
from unidense_core.dmp.lora import save_lora_attn_procs
from unidense_core.dmp.pipeline import DMPPipeline
from unidense_core.jointnet.model import save_jointnet
from unidense_core.jointnet.panorama import JointNetPanoramaPipeline, numpy_offsets
from unidense_core.merge.converters import save_converters
from unidense_core.tiling.panorama import preset
from unidense_core.tiny import (
    TINY_SD21_UNET,
    random_dmp_lora,
    random_jointnet,
    tiny_converters,
    tiny_sd_unet,
    write_pixart_folder,
    write_sd_folder,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Official-format folders and input images."""
    root = tmp_path_factory.mktemp("cli")
    unet = tiny_sd_unet()
    write_sd_folder(str(root / "sd14"), unet=unet)
    save_lora_attn_procs(random_dmp_lora(unet), str(root / "depth-hypersim-notext"))
    write_sd_folder(str(root / "sd21"))
    save_jointnet(random_jointnet(TINY_SD21_UNET, False, seed=3), str(root / "rgbd_finetune_sd21b"))
    save_jointnet(random_jointnet(TINY_SD21_UNET, True, seed=4), str(root / "rgbd_inpaint_sd21b"))
    write_pixart_folder(str(root / "pixart"))
    save_converters(tiny_converters(), str(root / "merge" / "depth_converters"))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 72, 3)) * 255).astype(np.uint8)).save(root / "photo.png")
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(root / "square.png")
    Image.fromarray((rng.random((64, 64)) * 65535).astype(np.uint16)).save(root / "depth16.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "out").mkdir()
    paths = {p.name: str(p) for p in root.iterdir()}
    paths["root"], paths["merge"] = str(root), str(root / "merge")
    return paths


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def out(f, name):
    return os.path.join(f["out"], name)


def check_png16(prefix, scale=1.0):
    d = np.load(prefix + "_depth.npy")
    png = np.array(Image.open(prefix + "_depth.png"))
    assert png.dtype == np.uint16 and png.shape == d.shape and d.dtype == np.float32
    np.testing.assert_array_equal(png, np.round(np.clip(d / scale, 0, 1) * 65535).astype(np.uint16))
    return d


@pytest.mark.parametrize(
    "command", ["merge-depth", "merge-generate", "dmp", "jointnet-generate", "jointnet-inpaint", "panorama"]
)
def test_help_states_the_official_defaults(capsys, command):
    rc, text, _ = run(capsys, command, "--help")
    assert rc == 0 and "official" in text and "(default: " in text
    assert "nothing is downloaded" in text


def test_dmp_depth_and_normals(f, capsys):
    prefix = out(f, "dmp")
    argv = ["dmp", "--sd14", f["sd14"], "--lora", f["depth-hypersim-notext"], "--image", f["photo.png"]]
    rc, text, err = run(capsys, *argv, "--processing-resolution", 32, "--out", prefix)
    assert rc == 0, err
    assert "depth: relative depth" in text and "DMP depth" in err  # the kind on stdout, the progress bar on stderr
    d = check_png16(prefix)
    pipe = DMPPipeline.from_folders(f["sd14"], f["depth-hypersim-notext"])
    ref = pipe(Image.open(f["photo.png"]), processing_resolution=32, generator=torch.Generator().manual_seed(0))
    assert d.shape == (48, 72) and np.array_equal(d, ref.depth[0].numpy())
    rc, text, err = run(capsys, *argv, "--processing-resolution", 32, "--target-scale", 8, "--out", prefix + "_m")
    assert rc == 0 and "metric depth in m" in text and "the PNG stores depth / 8" in text, err
    ref = pipe(Image.open(f["photo.png"]), processing_resolution=32, target_scale=8.0,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.array_equal(check_png16(prefix + "_m", scale=8.0), ref.depth[0].numpy())
    rc, _, err = run(capsys, *argv, "--task", "normals", "--prompt", "a room", "--processing-resolution", 32,
                     "--out", prefix + "_n")  # fmt: skip
    assert rc == 0, err
    n = np.load(prefix + "_n_normals.npy")
    assert n.shape == (48, 72, 3) and np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
    assert np.array(Image.open(prefix + "_n_normals.png")).shape == (48, 72, 3)


def test_merge_depth_saves_and_reuses_the_empty_prompt(f, capsys):
    common = ["merge-depth", "--pixart", f["pixart"], "--converters", f["merge"], "--image", f["square.png"]]
    common += ["--steps", 2, "--no-binning"]
    empty = os.path.join(f["out"], "empty.safetensors")
    rc, text, err = run(capsys, *common, "--save-empty-prompt", empty, "--out", out(f, "merge.png"))
    assert rc == 0, err
    assert "affine-invariant depth" in text and os.path.isfile(empty)
    first = check_png16(out(f, "merge"))  # a trailing .png is dropped from the prefix
    rc, _, err = run(capsys, *common, "--empty-prompt", empty, "--out", out(f, "merge2"))
    assert rc == 0, err
    assert np.array_equal(check_png16(out(f, "merge2")), first) and 0 <= first.min() <= first.max() <= 1


def test_merge_generate_with_a_prompt_or_a_saved_embedding(f, capsys):
    common = ["merge-generate", "--pixart", f["pixart"], "--converters", f["merge"], "--steps", 2]
    common += ["--height", 64, "--width", 64, "--no-binning"]
    rc, _, err = run(capsys, *common, "--prompt", "a red bike", "--out", out(f, "gen"))
    assert rc == 0, err
    img = np.array(Image.open(out(f, "gen") + "_image.png"))
    raw = np.load(out(f, "gen") + "_image.npy")
    assert img.shape == (64, 64, 3) and np.array_equal(img, np.round(raw * 255).astype(np.uint8))
    rc, _, err = run(capsys, *common, "--prompt-embedding", os.path.join(f["out"], "nope.safetensors"), "--out", "x")
    assert rc == 2 and "nope.safetensors" in err and "Traceback" not in err


def test_jointnet_generate_and_inpaint(f, capsys):
    common = ["--sd21", f["sd21"], "--prompt", "a cat", "--steps", 2]
    rc, text, err = run(capsys, "jointnet-generate", "--jointnet", f["rgbd_finetune_sd21b"], *common,
                        "--height", 64, "--width", 64, "--out", out(f, "jg"))  # fmt: skip
    assert rc == 0, err
    assert "relative disparity" in text and os.path.isfile(out(f, "jg") + "_image.png")
    check_png16(out(f, "jg"))
    inp = ["jointnet-inpaint", "--jointnet", f["rgbd_inpaint_sd21b"], *common]
    rc, _, err = run(capsys, *inp, "--image", f["square.png"], "--out", out(f, "rgb2j"), "--normalize")
    assert rc == 0, err
    d = check_png16(out(f, "rgb2j"))
    assert d.min() == 0 and d.max() == 1  # --normalize: the official 1%/99% stretch
    rc, _, err = run(capsys, *inp, "--preset", "custom", "--image", f["square.png"], "--depth", f["depth16.png"],
                     "--mask-rgb", f["mask.png"], "--mask-depth", f["mask.png"], "--out", out(f, "edit"))  # fmt: skip
    assert rc == 0, err
    check_png16(out(f, "edit"))
    rc, _, err = run(capsys, *inp, "--preset", "j2rgb", "--image", f["square.png"], "--out", out(f, "x"))
    assert rc == 2 and "needs --depth" in err


def test_panorama_with_official_offsets(f, capsys):
    argv = ["panorama", "--jointnet", f["rgbd_finetune_sd21b"], "--sd21", f["sd21"], "--prompt", "a beach"]
    argv += ["--steps", 2, "--height", 64, "--width", 128, "--stride", 4, "--boundary", 2, "--numpy-seed", 3]
    rc, _, err = run(capsys, *argv, "--out", out(f, "pano"))
    assert rc == 0, err
    d = check_png16(out(f, "pano"))
    pipe = JointNetPanoramaPipeline.from_folders(f["rgbd_finetune_sd21b"], f["sd21"])
    config = preset("jointnet_pano", stride=4, boundary=2)
    ref = pipe.panorama("a beach", 64, 128, 2, config=config, offsets=numpy_offsets(2, 4, 3),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert d.shape == (64, 128) and np.array_equal(d, ref.depth[0].numpy())
    rc, _, err = run(capsys, *argv[:-2], "--offsets", "1,2,3", "--out", out(f, "x"))
    assert rc == 2 and "one offset per step: 2 steps but 3 offsets" in err
    rc, _, err = run(capsys, *argv, "--width", 130, "--out", out(f, "x"))
    assert rc == 2 and "multiples of 8" in err


def test_bad_paths_give_one_line_errors(f, capsys, tmp_path):
    dmp = ["dmp", "--sd14", f["sd14"], "--lora", f["depth-hypersim-notext"], "--image", f["photo.png"]]
    cases = [
        (["dmp", "--sd14", f["sd14"], "--lora", f["depth-hypersim-notext"], "--image", tmp_path / "no.png"], "no.png"),
        ([*dmp[:2], tmp_path / "sd", *dmp[3:]], "stable-diffusion-v1-4"),
        ([*dmp[:4], tmp_path / "lora", *dmp[5:]], "github.com/shinying/dmp"),
        ([*dmp, "--out", tmp_path / "missing" / "x"], "Output folder"),
        (["jointnet-generate", "--jointnet", tmp_path, "--sd21", f["sd21"]], "is not a JointNet folder"),
        (["merge-depth", "--pixart", f["sd21"], "--converters", f["merge"], "--image", f["photo.png"]], "transformer"),
    ]
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "config.json").write_text("{}")
    for argv, needle in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", tmp_path / "o"]
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and needle in err and "Traceback" not in err, (argv, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, *dmp[:2], tmp_path / "sd", *dmp[3:], "--out", tmp_path / "o")
    assert "No weights in" in err and "diffusion_pytorch_model.safetensors" in err
    rc, _, err = run(capsys, "dmp", "--sd14", f["sd14"])
    assert rc == 2 and "required" in err  # argparse usage error
