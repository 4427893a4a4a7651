"""Bad inputs to training, evaluation and batch inference: every row must raise a clear error that names the file
or option and says what to do (see tests/bad_inputs.py)."""

import os

import numpy as np
import pytest
import torch
from bad_inputs import Case, run_case
from PIL import Image

from unidense_core.dense.datasets import RGBDSet
from unidense_core.evaluation.batch import run_batch
from unidense_core.evaluation.benchmark import evaluate_dataset
from unidense_core.io.depth_files import read_depth, write_depth_png16
from unidense_core.tiny import BlockAutoencoder, tiny_pixart
from unidense_core.training.data import BatchPlan, PlannedSample, TrainingSet, quantile_normalize
from unidense_core.training.loop import TrainConfig, check_config, train
from unidense_core.training.merge_recipe import MergeRecipe
from unidense_core.training.synthetic import write_scene_folder

ROOT = ""  # a fresh temporary folder per test session (set by the fixture below)


@pytest.fixture(scope="module", autouse=True)
def _root(tmp_path_factory):
    global ROOT
    ROOT = str(tmp_path_factory.mktemp("bad_inputs_training"))


def folder(name, count=2, h=32, w=32, **kw):
    path = os.path.join(ROOT, name)
    if not os.path.isdir(path):
        write_scene_folder(path, count, h, w, **kw)
    return path


def missing_pairs():
    path = folder("missing", 3)
    os.remove(os.path.join(path, "depth", "scene_0001.png"))
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(os.path.join(path, "depth", "orphan.png"))
    return RGBDSet("folder", path)


def mismatched_sizes():
    path = folder("mismatch", 2)
    Image.fromarray(np.ones((16, 32), np.uint16)).save(os.path.join(path, "depth", "scene_0000.png"))
    RGBDSet("folder", path).check_sizes()


def no_valid_depth():
    path = folder("empty_depth", 1)
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(os.path.join(path, "depth", "scene_0000.png"))
    TrainingSet([RGBDSet("folder", path)], quantile_normalize)[PlannedSample(0, 0, 1, 0)]


def eight_bit_depth():
    path = os.path.join(ROOT, "d8.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    read_depth(path)


def exr_depth():
    path = os.path.join(ROOT, "d.exr")
    open(path, "wb").close()
    read_depth(path)


def png16_beyond_its_range():
    from unidense_core.evaluation.batch import write_prediction

    write_prediction(os.path.join(ROOT, "far.png"), np.array([[1.0, 9.5]], np.float32), "png16", 8.0)


def not_a_video():
    from unidense_core.evaluation.batch import list_inputs

    path = os.path.join(ROOT, "clip.mp4")
    with open(path, "w") as f:
        f.write("not a video")
    list_inputs(path)


def rgb_exr_depth():
    from unidense_core.io.exr import write_exr

    path = os.path.join(ROOT, "rgb.exr")
    write_exr(path, np.ones((4, 4, 3), np.float32))
    read_depth(path)


def split_with_missing_files():
    split = os.path.join(ROOT, "split.txt")
    with open(split, "w") as f:
        f.write("test/a/rgb_0001.png test/a/depth_0001.png test/a/filled_0001.png\n")
    RGBDSet("nyu", folder("nyu_root"), split)


def size_not_multiple():
    path = folder("odd", 2, 24, 40)
    TrainingSet([RGBDSet("folder", path)], quantile_normalize, size_multiple=16)[PlannedSample(0, 0, 1, 0)]


def tiny_run(out, base_seed, resume=None):
    recipe = MergeRecipe(tiny_pixart(base_seed), BlockAutoencoder(), (torch.randn(1, 3, 32), None))
    cfg = TrainConfig(out, max_steps=1, batch_size=2, learning_rate=1e-3, cpu=True, progress=False, resume=resume)
    return train(recipe, [RGBDSet("folder", folder("train", 4, holes=False))], cfg)


def resume_onto_another_base():
    from accelerate.state import AcceleratorState, GradientState

    out = os.path.join(ROOT, "run")
    if not os.path.isdir(out):
        tiny_run(out, base_seed=0)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    try:
        tiny_run(out, base_seed=1, resume="latest")
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def converters_for_another_base():
    from unidense_core.merge.converters import ConverterConfig, MergeConverters

    wide = MergeConverters(ConverterConfig(num_layers=2, num_attention_heads=2, attention_head_dim=16, sample_size=8))
    MergeRecipe(tiny_pixart(), BlockAutoencoder(), (torch.randn(1, 3, 32), None), converters=wide)


def prediction_of_another_size():
    data = folder("eval", 2, holes=False)
    preds = os.path.join(ROOT, "preds")
    os.makedirs(os.path.join(preds, "rgb"), exist_ok=True)
    for i in range(2):
        np.save(os.path.join(preds, "rgb", f"scene_000{i}.npy"), np.ones((16, 16), np.float32))
    evaluate_dataset(RGBDSet("folder", data), predictions=preds)


def missing_predictions():
    empty = os.path.join(ROOT, "no_preds")
    os.makedirs(empty, exist_ok=True)
    evaluate_dataset(RGBDSet("folder", folder("eval", 2, holes=False)), predictions=empty)


def png16_out_of_range():
    write_depth_png16(os.path.join(ROOT, "x.png"), np.array([[0.0, 1.5]]))


def empty_image_folder():
    os.makedirs(os.path.join(ROOT, "nothing"), exist_ok=True)
    run_batch(None, os.path.join(ROOT, "nothing"), os.path.join(ROOT, "nothing_out"))


def cli(*args):
    """The command as a user runs it: an expected error ends it with exit code 2 and one line on stderr, which is
    raised here so that the table checks the message."""
    import contextlib
    import io

    from unidense_core.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    if rc == 2 and err.getvalue().startswith("error: "):
        raise ValueError(err.getvalue())
    return rc


CASES = [
    Case(
        "pair folder",
        "missing pairs",
        missing_pairs,
        r"image\(s\) without depth: 'rgb/scene_0001.png'.*depth file\(s\) without image: 'depth/orphan.png'",
    ),
    Case(
        "pair folder",
        "mismatched sizes",
        mismatched_sizes,
        r"'rgb/scene_0000.png' 32×32 vs 'depth/scene_0000.png' 32×16",
    ),
    Case("training data", "no valid depth", no_valid_depth, r"'rgb/scene_0000.png' has no valid depth pixel"),
    Case("training data", "size not a multiple", size_not_multiple, r"40×24 px.*multiples of 16.*--resize"),
    Case("depth file", "8-bit PNG", eight_bit_depth, r"8-bit PNG.*16-bit"),
    Case("depth file", "EXR that is not one", exr_depth, r"d\.exr' is not a readable EXR file"),
    Case(
        "infer output",
        "metric depth beyond PNG's range",
        png16_beyond_its_range,
        r"1\.\.9\.5, outside .* 0\.\.8; a PNG would clip it\. Use --format npy or exr",
    ),
    Case("infer input", "a .mp4 that is not a video", not_a_video, r"clip\.mp4' is not a video FFmpeg can read"),
    Case("depth file", "RGB EXR", rgb_exr_depth, r"holds 3 channels .*one \(Y\) channel"),
    Case("split file", "listed files missing", split_with_missing_files, r"2 file\(s\) listed.*'test/a/rgb_0001.png'"),
    Case("batch plan", "batch larger than the data", lambda: BatchPlan([3], 4, 0), r"3 pairs, fewer than the global"),
    Case("train", "resume onto another base", resume_onto_another_base, r"base model does not match.*same base", 900),
    Case(
        "train", "converters of another base", converters_for_another_base, r"width 32 but the base model has width 64"
    ),
    Case("train", "max_steps 0", lambda: check_config(TrainConfig("x", 0, 1)), r"max_steps must be at least 1"),
    Case(
        "train",
        "bad precision",
        lambda: check_config(TrainConfig("x", 1, 1, mixed_precision="fp8")),
        r"'no', 'fp16' or 'bf16'",
    ),
    Case(
        "train cli",
        "--data arity",
        lambda: cli("train", "merge", "--pixart", ROOT, "--data", "folder", "--output", ROOT),
        r"KIND ROOT \[SPLIT\]",
    ),
    Case(
        "evaluate",
        "prediction size mismatch",
        prediction_of_another_size,
        r"16×16 but the ground truth of 'rgb/scene_0000.png' is 32×32.*--resize-predictions",
    ),
    Case("evaluate", "missing predictions", missing_predictions, r"2 image\(s\) have no prediction.*'rgb/scene_0000"),
    Case(
        "evaluate cli",
        "predictions and method",
        lambda: cli("evaluate", "--dataset", "folder", "--root", ROOT, "--out", ROOT),
        r"--predictions FOLDER or --method",
    ),
    Case("infer", "no images", empty_image_folder, r"No images"),
    Case("infer", "png16 out of range", png16_out_of_range, r"\[0, 1\].*spans \[0, 1.5\].*\.npy"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case):
    run_case(case)
