"""Loading without extra copies: pickled weights are memory-mapped, modules take the loaded tensors themselves, and the
JointNet loaders keep one branch's state dict at a time (benchmarks/jointnet_memory.py measures the peak)."""

import os
import sys

import pytest
import torch
from torch import nn

from unidense_core.io.checkpoints import load_state_dict, load_weights
from unidense_core.jointnet.model import load_jointnet, read_jointnet_folder, save_jointnet
from unidense_core.tiny import TINY_SD21_UNET, random_jointnet

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def mapped_from(path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``path``."""
    path, ranges = os.path.realpath(path), []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == path:
                lo, hi = (int(a, 16) for a in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def in_file(t: torch.Tensor, ranges) -> bool:
    return any(lo <= t.data_ptr() < hi for lo, hi in ranges)


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 32, generator=g), "a.bias": torch.randn(64, generator=g)}


@linux_only
def test_zip_pickles_are_memory_mapped_and_legacy_pickles_still_load(tmp_path):
    sd = weights()
    torch.save(sd, tmp_path / "new.bin")
    torch.save(sd, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    new, old = load_state_dict(tmp_path / "new.bin"), load_state_dict(tmp_path / "old.bin")
    ranges = mapped_from(tmp_path / "new.bin")
    assert ranges and all(in_file(v, ranges) for v in new.values())
    assert not mapped_from(tmp_path / "old.bin")
    for k in sd:
        assert torch.equal(new[k], sd[k]) and torch.equal(old[k], sd[k])
    new["a.bias"].add_(1)  # a private mapping: the file keeps its values
    assert torch.equal(torch.load(tmp_path / "new.bin", weights_only=True)["a.bias"], sd["a.bias"])


def test_load_weights_assigns_matching_dtypes_and_casts_others():
    sd = weights()
    wrapped = nn.Sequential()
    wrapped.add_module("a", nn.Linear(32, 64))
    assert load_weights(wrapped, sd) == ([], [])
    assert wrapped.a.weight.data_ptr() == sd["a.weight"].data_ptr()  # no copy
    assert isinstance(wrapped.a.weight, nn.Parameter)
    half = nn.Sequential()
    half.add_module("a", nn.Linear(32, 64, dtype=torch.float16))
    assert load_weights(half, sd) == ([], [])
    assert half.a.weight.dtype == torch.float16 and torch.equal(half.a.weight, sd["a.weight"].half())
    other = nn.Sequential()
    other.add_module("b", nn.Linear(32, 64))
    missing, unexpected = load_weights(other, sd)
    assert missing == ["b.weight", "b.bias"] and unexpected == ["a.weight", "a.bias"]


@linux_only
@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_core_loader_keeps_no_second_copy(tmp_path, dtype):
    written = random_jointnet(TINY_SD21_UNET, has_masked_latent_input=True)
    save_jointnet(written, tmp_path / "jn", safe_serialization=False)  # .bin, as the official zips
    model = load_jointnet(tmp_path / "jn", dtype=dtype)
    for branch, name in ((model.rgb, "unet"), (model.depth, "jointnet")):
        ranges = mapped_from(tmp_path / "jn" / name / "diffusion_pytorch_model.bin")
        params = list(branch.parameters())
        if dtype is None:  # fp32 as in the file: the module holds the mapped tensors themselves
            assert all(in_file(p, ranges) for p in params)
        else:  # cast: the mapping is gone once the branch was converted
            assert not ranges and all(p.dtype == dtype for p in params)
    expected = written.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k].to(v.dtype)), k


def test_read_folder_then_release_drops_the_tensors(tmp_path):
    save_jointnet(random_jointnet(TINY_SD21_UNET), tmp_path / "jn")
    files = read_jointnet_folder(tmp_path / "jn")
    assert files.rgb.unet_state_dict and files.depth.exchange_state_dict
    files.rgb.release()
    assert files.rgb.unet_state_dict == {} and files.rgb.exchange_state_dict == {}
    assert files.depth.unet_state_dict  # the other branch is untouched


@linux_only
def test_comfyui_loader_releases_each_branch_and_holds_the_file_tensors(comfy, tmp_path):
    written = random_jointnet(TINY_SD21_UNET, has_masked_latent_input=True, seed=7)
    save_jointnet(written, tmp_path / "jn", safe_serialization=False)
    build = sys.modules[comfy.node("UniDense_JointNetLoader").__module__].build_joint_model
    files = read_jointnet_folder(tmp_path / "jn")
    model = build(files, "jn", torch.float32)
    assert not (files.rgb.unet_state_dict or files.depth.unet_state_dict)  # released, branch by branch
    ranges = mapped_from(tmp_path / "jn" / "unet" / "diffusion_pytorch_model.bin")
    params = list(model.model.diffusion_model.parameters())
    assert ranges and all(in_file(p, ranges) for p in params)  # fp32 file, fp32 model: no copy was made
