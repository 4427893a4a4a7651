"""The evaluation command: a folder of predictions (ours or Marigold's names) or an estimator it runs itself,
per-image and mean metrics as CSV, JSON and a Markdown table in the papers' units, settings recorded."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from training_env import converters_folder, empty_prompt, pixart_folder

from unidense_core.cli import main
from unidense_core.dense.datasets import RGBDSet
from unidense_core.evaluation.benchmark import marigold_prediction_name
from unidense_core.io.depth_files import read_exr_depth, write_depth_png16
from unidense_core.training.synthetic import write_scene_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contended ones


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_scene_folder(root / "pairs", 3, 32, 48, seed=2)
    return root


def run(*args):
    assert main([str(a) for a in args]) == 0


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_affine_predictions_score_perfectly_and_the_report_says_x100(data, tmp_path):
    pairs = RGBDSet("folder", str(data / "pairs"))
    preds = tmp_path / "preds"
    for i, p in enumerate(pairs.pairs):
        s = pairs.read(i)
        os.makedirs(preds / os.path.dirname(p.rgb), exist_ok=True)
        pred = np.where(s.valid, 0.3 * s.depth - 0.2, 123.0)  # any scale and shift; garbage where invalid
        np.save(preds / (os.path.splitext(p.rgb)[0] + ".npy"), pred.astype(np.float64))
    out = tmp_path / "out"
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--predictions", preds, "--out", out)
    rows = read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == [p.rgb for p in pairs.pairs]
    for r in rows:
        assert float(r["abs_relative_difference"]) == pytest.approx(0, abs=1e-4)  # float32 depth files
        assert float(r["delta1_acc"]) == 100.0
        assert float(r["scale"]) == pytest.approx(1 / 0.3) and float(r["shift"]) == pytest.approx(0.2 / 0.3)
    md = (out / "metrics.md").read_text()
    assert "×100" in md and "| alignment | least_square |" in md and "AbsRel ↓" in md and "δ1 ↑" in md
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["images"] == 3 and summary["metrics_x100"]["delta1_acc"] == 100.0


def test_disparity_png16_predictions_and_marigold_names(data, tmp_path):
    pairs = RGBDSet("folder", str(data / "pairs"))
    preds = tmp_path / "preds"
    for i, p in enumerate(pairs.pairs):
        s = pairs.read(i)
        disp = np.where(s.valid, 1.0 / np.where(s.valid, s.depth, 1.0), 0.0)
        unit = (disp / disp.max()) * 0.8  # a relative disparity in [0, 0.8], stored as 16-bit with scale 2
        name = marigold_prediction_name(p.rgb, "folder").replace(".npy", ".png")
        os.makedirs(preds / os.path.dirname(name), exist_ok=True)
        write_depth_png16(str(preds / os.path.splitext(p.rgb)[0]) + ".png", unit, scale=2.0)
    out = tmp_path / "out"
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--predictions", preds, "--out", out,
        "--alignment", "least_square_disparity")  # fmt: skip
    rows = read_csv(out / "per_image.csv")
    assert all(float(r["abs_relative_difference"]) < 0.01 for r in rows)  # 16-bit quantisation only
    # Marigold's own prediction names are found too (NYU: rgb_0001.png -> pred_0001.npy)
    assert marigold_prediction_name("test/kitchen/rgb_0001.png", "nyu") == "test/kitchen/pred_0001.npy"
    assert marigold_prediction_name("ai_001/rgb_cam_00_fr0000.png", "hypersim") == "ai_001/pred_cam_00_fr0000.npy"
    assert marigold_prediction_name("x/0000000069.png", "kitti") == "x/pred_0000000069.npy"


def test_the_command_runs_an_estimator_and_records_its_settings(data, tmp_path):
    pixart = pixart_folder(tmp_path / "pixart")
    conv = converters_folder(tmp_path / "conv")
    empty = empty_prompt(tmp_path / "empty.safetensors")
    out = tmp_path / "out"
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--out", out, "--method", "merge", "--pixart",
        pixart, "--converters", conv, "--empty-prompt", empty, "--steps", 2, "--ensemble", 2, "--no-binning",
        "--limit", 2, "--cpu")  # fmt: skip
    md = (out / "metrics.md").read_text()
    for expected in ("| method | merge |", "| steps | 2 |", "| ensemble_size | 2 |", "native (multiple of 16)"):
        assert expected in md, expected
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 2 and all(0 < float(r["abs_relative_difference"]) for r in rows)


def test_nyu_units_and_crop_from_the_command(tmp_path):
    root = tmp_path / "nyu"
    os.makedirs(root / "test/k")
    depth = np.full((480, 640), 3000, np.uint16)
    Image.fromarray(depth).save(root / "test/k/depth_0001.png")
    Image.fromarray(depth).save(root / "test/k/filled_0001.png")
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(root / "test/k/rgb_0001.png")
    (tmp_path / "split.txt").write_text("test/k/rgb_0001.png test/k/depth_0001.png test/k/filled_0001.png\n")
    preds = tmp_path / "preds"
    os.makedirs(preds / "test/k")
    pred = np.full((480, 640), 2.0)
    pred[:45] = 100.0  # outside the Eigen crop: must not count
    np.save(preds / "test/k/pred_0001.npy", pred)
    out = tmp_path / "out"
    run("evaluate", "--dataset", "nyu", "--root", root, "--split", tmp_path / "split.txt", "--predictions", preds,
        "--out", out, "--alignment", "none")  # fmt: skip
    row = read_csv(out / "per_image.csv")[0]
    assert float(row["abs_relative_difference"]) == pytest.approx(100 * 1 / 3)  # 2 m vs 3 m inside the crop


def test_an_estimator_scores_as_the_predictions_it_writes(data, tmp_path):
    """``evaluate --method`` runs the estimator itself; its per-image metrics equal those of the predictions the same
    estimator writes with ``infer`` (each image seeded from its path in both), with scale and shift fitted alike."""
    model = ["--method", "merge", "--pixart", pixart_folder(tmp_path / "pixart"), "--converters",
             converters_folder(tmp_path / "conv"), "--empty-prompt", empty_prompt(tmp_path / "empty.safetensors"),
             "--steps", 2, "--no-binning", "--cpu", "--seed", 3]  # fmt: skip
    images = tmp_path / "images"
    os.makedirs(images / "rgb")
    for name in sorted(os.listdir(data / "pairs" / "rgb")):
        os.link(data / "pairs" / "rgb" / name, images / "rgb" / name)
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--out", tmp_path / "direct", *model)
    run("infer", "--input", images, "--output", tmp_path / "preds", *model)
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--out", tmp_path / "files", "--predictions",
        tmp_path / "preds")  # fmt: skip
    direct, files = read_csv(tmp_path / "direct" / "per_image.csv"), read_csv(tmp_path / "files" / "per_image.csv")
    assert [r["name"] for r in direct] == [r["name"] for r in files] and len(direct) == 3
    for a, b in zip(direct, files, strict=True):
        for k in ("abs_relative_difference", "rmse_linear", "delta1_acc", "scale", "shift"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, abs=1e-9), (a["name"], k)
    assert len({r["abs_relative_difference"] for r in direct}) == 3  # three different images, three results
    # the same predictions as 32-bit EXR: the values are kept, so the metrics are the .npy ones exactly
    run("infer", "--input", images, "--output", tmp_path / "exr", "--format", "exr", *model)
    for name in sorted(os.listdir(tmp_path / "preds" / "rgb")):
        exr = read_exr_depth(str(tmp_path / "exr" / "rgb" / name.replace(".npy", ".exr")))
        np.testing.assert_array_equal(exr, np.load(tmp_path / "preds" / "rgb" / name))
    run("evaluate", "--dataset", "folder", "--root", data / "pairs", "--out", tmp_path / "from_exr", "--predictions",
        tmp_path / "exr")  # fmt: skip
    for a, b in zip(read_csv(tmp_path / "from_exr" / "per_image.csv"), files, strict=True):
        assert {k: v for k, v in a.items() if "pred" not in k} == {k: v for k, v in b.items() if "pred" not in k}
