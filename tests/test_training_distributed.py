"""Training and batch inference at scale through the real command line: two CPU processes under
``accelerate launch`` give the same update as one process with the doubled batch, a resumed run continues the
uninterrupted loss curve exactly, and batch inference shards a folder, writes each output once and resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from training_env import ROOT, converters_folder, empty_prompt, launch, pixart_folder, sd_folder

from unidense_core.cli import main
from unidense_core.evaluation.batch import list_images, output_path, remove_partial_files, run_batch
from unidense_core.io.checkpoints import load_state_dict
from unidense_core.io.depth_files import is_partial
from unidense_core.training.synthetic import write_scene_folder
from unidense_core.training.trackers import read_jsonl

pytestmark = pytest.mark.usefixtures("fresh_accelerate", "one_thread")


@pytest.fixture
def fresh_accelerate():
    """Each in-process run starts from a clean accelerate state (it is a process-wide singleton)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_env")
    write_scene_folder(root / "data", 8, 32, 32, seed=0, holes=False)  # equal valid counts: see the 2-process test
    return dict(
        root=root,
        pixart=pixart_folder(root / "pixart"),
        empty=empty_prompt(root / "empty.safetensors"),
        data=str(root / "data"),
    )


def train_args(env, out, batch, steps, *extra):
    args = [
        "train", "merge", "--pixart", env["pixart"], "--empty-prompt", env["empty"], "--data", "folder", env["data"],
        "--output", out, "--max-steps", steps, "--batch-size", batch, "--mixed-precision", "no", "--cpu",
        "--num-workers", "0", "--no-progress", "--lr", "1e-3", "--warmup", "2", "--seed", "3", *extra,
    ]  # fmt: skip
    return [str(a) for a in args]


def losses(out):
    return [r["loss"] for r in read_jsonl(os.path.join(out, "logs", "metrics.jsonl")) if "loss" in r]


def converters(out):
    return load_state_dict(os.path.join(out, "depth_converters", "diffusion_pytorch_model.safetensors"))


def test_two_processes_equal_one_process_with_the_doubled_batch(env):
    """AdamW divides by √v + eps; with the official eps 1e-8 a weight whose gradient is ~1e-9 moves by ±lr when fp32
    rounding flips its sign (measured: after 3 steps the losses agree to 3e-7 but 68 of 55,008 weights differ by up to
    4e-4). eps 1e-3 makes the update a smooth function of the gradient, so this compares the gradient sync."""
    one, two = str(env["root"] / "one"), str(env["root"] / "two")
    assert main(train_args(env, one, 4, 2, "--adam-epsilon", "1e-3")) == 0
    launch(train_args(env, two, 2, 2, "--adam-epsilon", "1e-3"), num_processes=2)
    with open(os.path.join(two, "logs", "config.json")) as f:
        assert json.load(f)["processes"] == 2
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)  # mean over processes == mean over the batch
    a, b = converters(one), converters(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    moved = max((a[k] - converters_init(env)[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the runs did update the converters


def converters_init(env, cache={}):  # noqa: B006 - memo of the initial converters
    if "init" not in cache:
        from diffusers import PixArtTransformer2DModel

        from unidense_core.merge.train import init_converters_from_base

        torch.manual_seed(3)
        base = PixArtTransformer2DModel.from_pretrained(os.path.join(env["pixart"], "transformer"))
        cache["init"] = init_converters_from_base(base).state_dict()
    return cache["init"]


def test_resume_continues_the_same_loss_curve(env):
    full, resumed = str(env["root"] / "full"), str(env["root"] / "resumed")
    assert main(train_args(env, full, 2, 4, "--checkpoint-every", "2")) == 0
    # the same run killed after step 3: its folder has checkpoint 2, logs up to step 3 and no result
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "checkpoint-0000004"))
    shutil.rmtree(os.path.join(resumed, "depth_converters"))
    rows = read_jsonl(os.path.join(resumed, "logs", "metrics.jsonl"))
    with open(os.path.join(resumed, "logs", "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 3)
    assert main(train_args(env, resumed, 2, 4, "--resume", "latest")) == 0
    assert [r["step"] for r in read_jsonl(os.path.join(resumed, "logs", "metrics.jsonl"))] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(resumed), losses(full), rtol=1e-6)  # steps 3 and 4 recomputed identically
    a, b = converters(full), converters(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    with open(os.path.join(resumed, "logs", "metrics.csv")) as f:
        assert f.readline().strip() == "step,loss,lr" and len(f.readlines()) == 4
    assert open(os.path.join(resumed, "logs", "loss.svg")).read().startswith("<svg")
    state = json.load(open(os.path.join(full, "checkpoints", "checkpoint-0000002", "unidense_state.json")))
    assert state["step"] == 2 and state["recipe"] == "merge" and "transformer" in state["fingerprint"]
    assert not os.path.exists(os.path.join(full, "checkpoints", "checkpoint-0000002", "model.safetensors"))


@pytest.mark.parametrize("method", ["dmp", "jointnet"])
def test_dmp_and_jointnet_train_from_the_command_line(env, method, tmp_path):
    from unidense_core.dmp.lora import load_lora
    from unidense_core.jointnet.model import load_jointnet

    base = sd_folder(tmp_path / "sd", sd21=method == "jointnet")
    flag = {"dmp": "--sd", "jointnet": "--sd21"}[method]
    extra = (
        ["--inpaint", "--gradient-checkpointing"]
        if method == "jointnet"
        else ["--target-scale", "-1", "--grad-accum", "2"]
    )
    out = str(tmp_path / "run")
    data = str(env["root"] / "data64")
    if not os.path.isdir(data):
        write_scene_folder(data, 4, 64, 64, seed=1)
    args = ["train", method, flag, base, "--empty-prompt", env["empty"], "--data", "folder", data, "--val-data",
            "folder", data, "--validation-images", "1", "--validation-steps", "2", "--output", out, "--max-steps",
            "2", "--batch-size", "2", "--mixed-precision", "no", "--cpu", "--num-workers", "0", "--no-progress",
            *extra]  # fmt: skip
    assert main(args) == 0
    if method == "dmp":
        lora = load_lora(os.path.join(out, "lora"))
        assert lora.layout == "attn_processor" and len(lora.modules) == 128
        assert any(m.up.abs().sum() > 0 for m in lora.modules.values())  # up started at 0 and moved
    else:
        model = load_jointnet(os.path.join(out, "jointnet_rgbd"))
        assert model.has_masked_latent_input
    assert os.listdir(os.path.join(out, "validation", "step-0000002"))  # validation images were written


# ----------------------------------------------------------------------------------------------------------
# Batch inference


@pytest.fixture(scope="module")
def infer_env(env):
    root = env["root"]
    images = root / "images"
    write_scene_folder(images / "tmp", 6, 32, 48, seed=4)
    os.makedirs(images / "sub", exist_ok=True)
    for i, name in enumerate(sorted(os.listdir(images / "tmp" / "rgb"))):
        shutil.move(str(images / "tmp" / "rgb" / name), str(images / ("sub" if i % 2 else ".") / name))
    shutil.rmtree(images / "tmp")
    conv = converters_folder(root / "conv")
    args = ["--method", "merge", "--pixart", env["pixart"], "--converters", conv, "--empty-prompt", env["empty"],
            "--steps", "2", "--no-binning", "--cpu", "--seed", "5"]  # fmt: skip
    return dict(images=str(images), args=args, converters=conv)


def estimator_for(env, infer_env):
    from unidense_core.evaluation.estimators import MergeEstimator
    from unidense_core.merge.pipeline import MergePipeline

    pipe = MergePipeline.from_folders(env["pixart"], infer_env["converters"], empty_prompt_path=env["empty"])
    return MergeEstimator(pipe, steps=2, resolution_binning=False)


def test_two_process_inference_writes_each_output_once_and_equals_one_process(env, infer_env, tmp_path):
    out2 = str(tmp_path / "two")
    run = launch(["infer", *infer_env["args"], "--input", infer_env["images"], "--output", out2], num_processes=2)
    counts = sorted(line.split(" (")[0] for line in run.stdout.splitlines() if line.startswith("process "))
    assert counts == ["process 0: wrote 3, skipped 0 finished, of 3 assigned",
                      "process 1: wrote 3, skipped 0 finished, of 3 assigned"]  # fmt: skip
    names = list_images(infer_env["images"])
    assert len(names) == 6 and any(n.startswith("sub" + os.sep) for n in names)
    stats = run_batch(estimator_for(env, infer_env), infer_env["images"], str(tmp_path / "one"), "npy", seed=5)
    assert sorted(stats.written) == names
    for rel in names:
        a = np.load(output_path(str(tmp_path / "one"), rel, "npy"))
        b = np.load(output_path(out2, rel, "npy"))
        assert a.shape == (32, 48)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=rel)


def test_interrupted_inference_resumes_without_redoing_finished_files(env, infer_env, tmp_path):
    out = str(tmp_path / "out")
    est = estimator_for(env, infer_env)
    done = []

    def interrupt_after_two(path):
        done.append(path)
        if len(done) == 2:
            raise KeyboardInterrupt  # the run is killed here

    with pytest.raises(KeyboardInterrupt):
        run_batch(est, infer_env["images"], out, "png16", seed=5, on_written=interrupt_after_two)
    stamps = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in done}
    stale = os.path.join(os.path.dirname(done[0]), ".scene_0009.abc.partial.png")  # what a kill mid-write leaves
    with open(stale, "wb") as f:
        f.write(b"partial")

    assert remove_partial_files(out) == 1 and not os.path.exists(stale)
    stats = run_batch(est, infer_env["images"], out, "png16", seed=5)
    assert len(stats.skipped) == 2 and len(stats.written) == 4
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in done} == stamps  # not rewritten
    full = run_batch(est, infer_env["images"], str(tmp_path / "fresh"), "png16", seed=5)
    for rel in full.written:  # the resumed folder equals an uninterrupted run
        a = np.asarray(Image.open(output_path(out, rel, "png16")))
        b = np.asarray(Image.open(output_path(str(tmp_path / "fresh"), rel, "png16")))
        np.testing.assert_array_equal(a, b)


def test_a_killed_inference_command_resumes_without_redoing_finished_files(env, infer_env, tmp_path, capsys):
    """The real thing: ``python -m unidense_core infer`` is SIGKILLed once its first output exists; the same
    command run again removes what the kill left half-written, keeps every finished file and writes only the rest."""
    out = str(tmp_path / "out")
    args = ["infer", *infer_env["args"], "--steps", "4", "--input", infer_env["images"], "--output", out]
    proc = subprocess.Popen(
        [sys.executable, "-m", "unidense_core", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    try:
        while not finished_outputs(out):
            assert proc.poll() is None, f"infer ended (code {proc.returncode}) before writing anything"
            assert time.monotonic() < deadline, "infer wrote nothing in 600 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = finished_outputs(out)
    assert 1 <= len(done) < 6  # killed mid-run
    stamps = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in done}
    capsys.readouterr()
    assert main(args) == 0
    report = capsys.readouterr().out
    assert f"wrote {6 - len(done)}, skipped {len(done)} finished, of 6 assigned" in report
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in done} == stamps  # not rewritten
    assert len(finished_outputs(out)) == 6 and not any(
        is_partial(f) for _d, _s, files in os.walk(out) for f in files
    )  # nothing half-written is left


def finished_outputs(out):
    """Complete outputs in ``out`` (a write is a rename of a finished temporary file, so a visible .npy is whole)."""
    found = []
    for dirpath, _dirs, files in os.walk(out):
        found += [os.path.join(dirpath, f) for f in files if f.endswith(".npy") and not is_partial(f)]
    return sorted(found)


def write_video(path, frames):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())


def test_a_video_is_sharded_by_frame_once_each_and_equals_one_process(env, infer_env, tmp_path):
    """``infer --input clip.mp4``: frame i goes to process i mod 2, each output exactly once, equal to one process's
    run; a second run skips every finished frame."""
    from unidense_core.evaluation.batch import count_frames, frame_name, list_inputs

    rgb = [np.asarray(Image.open(os.path.join(infer_env["images"], n))) for n in list_images(infer_env["images"])]
    video = tmp_path / "clip.mp4"
    write_video(video, rgb[:5])
    names = list_inputs(str(video))
    assert count_frames(str(video)) == 5 and names == [frame_name(str(video), i) for i in range(5)]
    out2 = str(tmp_path / "two")
    run = launch(["infer", *infer_env["args"], "--input", str(video), "--output", out2, "--batch-size", "2"],
                 num_processes=2)  # fmt: skip
    counts = sorted(line.split(" (")[0] for line in run.stdout.splitlines() if line.startswith("process "))
    assert counts == ["process 0: wrote 3, skipped 0 finished, of 3 assigned",
                      "process 1: wrote 2, skipped 0 finished, of 2 assigned"]  # fmt: skip
    assert sorted(os.listdir(os.path.join(out2, "clip"))) == [f"frame_{i:06d}.npy" for i in range(5)]
    est = estimator_for(env, infer_env)
    stats = run_batch(est, str(video), str(tmp_path / "one"), "npy", seed=5)
    assert stats.written == names
    for rel in names:
        a, b = np.load(output_path(str(tmp_path / "one"), rel, "npy")), np.load(output_path(out2, rel, "npy"))
        assert a.shape == (32, 48)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=rel)
    again = run_batch(est, str(video), out2, "npy", seed=5)
    assert again.written == [] and again.skipped == names
