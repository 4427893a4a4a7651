"""What a registry or Manager install gets: dependencies in sync, the registry metadata, the archive's contents,
and the example input images the workflows load."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import example_images  # noqa: E402


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_requirements_txt_equals_project_dependencies():
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        reqs = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert reqs == pyproject()["project"]["dependencies"]
    assert not any(r.split("<")[0].split(">")[0].split("=")[0] == "torch" for r in reqs)  # torch comes from ComfyUI


def test_registry_metadata():
    data = pyproject()
    urls, comfy = data["project"]["urls"], data["tool"]["comfy"]
    repo = urls["Repository"]
    assert repo.startswith("https://github.com/") and urls["Issues"] == repo + "/issues"  # the keys comfy-cli reads
    assert comfy["Icon"] == repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/icon.png"
    icon = Image.open(os.path.join(ROOT, "icon.png"))
    assert icon.format == "PNG" and icon.size[0] == icon.size[1] <= 400
    assert any("trimesh" in d for d in data["project"]["optional-dependencies"]["standalone"])  # the self-check's 3D


def comfyignore():
    with open(os.path.join(ROOT, ".comfyignore"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_archive_leaves_out_development_files_only():
    patterns = comfyignore()
    # Anchored folder patterns only, so that a prefix test is exactly gitwildmatch's meaning.
    assert all(p.startswith("/") and p.endswith("/") for p in patterns)
    assert {"/tests/", "/benchmarks/", "/tools/", "/.ci/"} <= set(patterns)
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: `comfy node pack` packs git-tracked files")
    files = tracked.stdout.split()
    shipped = [f for f in files if not any(f.startswith(p[1:]) for p in patterns)]
    assert not [f for f in shipped if f.startswith(("tests/", "benchmarks/", "tools/", ".ci/"))]
    runtime = {"__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "icon.png"}
    assert runtime <= set(shipped)
    for folder in ("nodes/", "unidense_core/", "workflows/"):
        assert {f for f in files if f.startswith(folder)} <= set(shipped), folder


def test_example_images_are_the_generated_ones_and_small():
    for rel, expected in example_images.images().items():
        path = os.path.join(ROOT, rel)
        shipped = Image.open(path)
        assert shipped.mode == expected.mode and shipped.size == expected.size, rel
        assert np.array_equal(np.asarray(shipped), np.asarray(expected)), f"{rel}: run tools/example_images.py"
        assert os.path.getsize(path) < 20_000, rel


def test_every_image_a_workflow_loads_is_shipped():
    folder = os.path.join(ROOT, "workflows")
    shipped = set(os.listdir(os.path.join(folder, "input")))
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            nodes = json.load(f)["nodes"]
        for node in nodes:
            if node["type"] == "LoadImage":
                image = node["widgets_values"][0]
                assert image in shipped or image == "example.png", f"{name} loads {image}"  # ComfyUI ships its own


def test_editing_pair_marks_one_region_in_both_images():
    rgb = np.asarray(Image.open(os.path.join(ROOT, "workflows/input/rgbd_image.png")))
    depth = np.asarray(Image.open(os.path.join(ROOT, "workflows/input/rgbd_depth.png")))
    plain = np.asarray(Image.open(os.path.join(ROOT, "workflows/input/depth.png")))
    regenerate = rgb[..., 3] == 0  # LoadImage: mask = 1 - alpha, 1 = regenerate
    assert 0.05 < regenerate.mean() < 0.3 and np.array_equal(regenerate, depth[..., 1] == 0)
    assert np.array_equal(depth[..., 0], plain)
    assert plain.max() == 255 and plain.min() == 0  # near = white, min-max normalised


def test_readme_claims_point_at_tests_and_benchmarks_that_exist():
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = readme.split("## What is checked where", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) >= 20
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        current = None
        refs = re.findall(r"`([^`]+)`", cell)
        assert refs, row
        for ref in refs:
            for token in ref.split():
                if token.startswith("benchmarks/"):
                    assert os.path.isfile(os.path.join(ROOT, token)), token
                    continue
                m = re.fullmatch(r"(?:tests/)?(test_\w+\.py)(?:::(\w+))?|(test_\w+)", token)
                if not m:
                    continue
                if m.group(1):
                    current = m.group(1)
                    name = m.group(2)
                else:
                    name = m.group(3)
                path = os.path.join(ROOT, "tests", current)
                assert os.path.isfile(path), token
                if name:
                    with open(path, encoding="utf-8") as f:
                        assert re.search(rf"^def {name}\(", f.read(), re.M), f"{current}::{name} (README)"
