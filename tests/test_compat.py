"""The ComfyUI surface UniDense uses (nodes/compat.py, docs/comfyui-compatibility.md).

Run against any ComfyUI (``COMFYUI_PATH=...``): every API the node modules touch must exist there, the version must be
in the supported range, and the contracts newer ComfyUI versions added (sampler callback keys, wrapper keyword
arguments) must hold for our code already on the oldest one.
"""

import ast
import importlib.util
import os
import re
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = os.path.join(ROOT, "nodes")
COMFY_ROOTS = ("comfy", "comfy_api", "folder_paths", "node_helpers", "latent_preview", "comfy_extras")


def used_comfy_names(path: str) -> set[str]:
    """Every dotted ComfyUI name a module uses, resolved through its imports (``mm.unet_dtype`` ->
    ``comfy.model_management.unet_dtype``); only the longest chain of each attribute access is kept."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    alias: dict[str, str] = {}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in COMFY_ROOTS:
                    alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in COMFY_ROOTS:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
                used.add(f"{node.module}.{a.name}")
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts, n = [], node
        while isinstance(n, ast.Attribute):
            parts.append(n.attr)
            n = n.value
        if isinstance(n, ast.Name) and n.id in alias:
            used.add(".".join([alias[n.id], *reversed(parts)]))
    return used


def node_module_files() -> list[str]:
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(NODES) for f in files if f.endswith(".py") and f != "compat.py"
    )


def load_compat():
    """nodes/compat.py by path: it imports nothing from the pack or ComfyUI at module level, and ``import nodes``
    would find ComfyUI's own nodes.py once ComfyUI is loaded in this process."""
    spec = importlib.util.spec_from_file_location("unidense_compat_under_test", os.path.join(NODES, "compat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compat = load_compat()


def pack_module(suffix: str):
    """A pack module as ComfyUI loaded it (under the pack's folder name)."""
    for name, module in list(sys.modules.items()):
        if name.endswith(suffix) and "unidense_compat" not in name:
            return module
    raise AssertionError(f"ComfyUI did not load the pack's {suffix}")


# ----------------------------------------------------------------------------------------------------------------
# Without ComfyUI


def test_required_lists_every_comfyui_name_the_node_modules_use():

    used = set().union(*(used_comfy_names(p) for p in node_module_files()))
    assert used, "the AST walk found no ComfyUI names at all"
    required = set(compat.REQUIRED)
    # a used name is covered when it is listed, or when it is a module / class whose members are listed
    uncovered = sorted(u for u in used if u not in required and not any(r.startswith(u + ".") for r in required))
    assert not uncovered, (
        f"nodes/ uses ComfyUI names that nodes/compat.py REQUIRED does not list: {uncovered}. Add them there and a "
        "row to docs/comfyui-compatibility.md (what changed in newer ComfyUI versions)."
    )


@pytest.mark.parametrize(
    "text, expected",
    [("0.3.64", (0, 3, 64)), ("0.38.1", (0, 38, 1)), ("v0.4.0rc1", (0, 4, 0)), ("0.3.64+git.a125cd8", (0, 3, 64))],
)
def test_parse_version(text, expected):
    assert compat.parse_version(text) == expected


def test_version_range_messages():
    with pytest.raises(ImportError, match=r"needs ComfyUI 0\.3\.60 or newer; this ComfyUI is 0\.3\.48.*Update ComfyUI"):
        compat.check_version("0.3.48")
    assert compat.check_version("0.3.64") is None
    assert compat.check_version("0.33.0") is None
    note = compat.check_version("0.38.1")
    assert "0.38.1" in note and "0.33.0" in note and compat.TABLE in note
    assert compat.check_version(None) is None  # a ComfyUI without comfyui_version.py is not refused


def test_dmp_sampler_callback_carries_the_keys_newer_comfyui_reads():
    """ComfyUI >= 0.30 reads x['i'], x['x'], x['denoised'] (and sigma, sigma_hat) from every sampler callback."""
    from unidense_core.dmp.sampler import dmp_sigmas, sample_interp

    seen = []
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sample_interp(lambda z, sigma, **kw: 0.5 * z, x, dmp_sigmas(3), callback=seen.append)
    assert len(seen) == 3
    for step, info in enumerate(seen):
        assert compat.SAMPLER_CALLBACK_KEYS <= info.keys(), sorted(info)
        assert info["i"] == step and info["x"].shape == x.shape and info["denoised"].shape == x.shape


# ----------------------------------------------------------------------------------------------------------------
# On the real ComfyUI


def test_running_comfyui_is_in_the_supported_range(comfy):
    version = compat.comfyui_version()
    assert version is not None, "this ComfyUI has no comfyui_version.py"
    assert compat.parse_version(version) >= compat.MIN_VERSION
    compat.check_version(version)  # raises below the range


def test_every_required_api_exists(comfy):
    assert compat.missing_api() == []


def test_missing_api_names_what_is_absent(comfy):
    names = ("comfy.model_patcher.ModelPatcher.clone", "comfy.model_patcher.no_such_thing", "comfy.no_such_module.x")
    assert compat.missing_api(names) == ["comfy.model_patcher.no_such_thing", "comfy.no_such_module.x"]


def test_panorama_wrappers_pass_newer_keyword_arguments_through(comfy):
    """ComfyUI >= 0.14 calls PREPARE_SAMPLING wrappers with force_full_load/force_offload; they must reach ComfyUI."""
    tiling_host = pack_module("nodes.hosts.tiling")
    config = tiling_host.PanoramaConfig(window=8, stride=4, random_offset=False, full_canvas_fraction=0.0)
    tiler = tiling_host.PanoramaTiler(config)
    calls = []
    conds, options = {"positive": []}, {"transformer_options": {}}
    out = tiler.prepare_sampling(
        lambda *a, **k: calls.append((a, k)) or "ComfyUI's result",
        "model",
        [1, 4, 8, 32],
        conds,
        model_options=options,
        force_full_load=True,
        force_offload=False,
    )
    assert out == "ComfyUI's result"
    ((args, kwargs),) = calls
    assert args[0] == "model" and args[2] is conds
    assert kwargs == {"model_options": options, "force_full_load": True, "force_offload": False}


def test_declared_range_matches_compat():
    """pyproject's [tool.comfy] requires-comfyui (the registry reads it) and the load-time message say the same."""
    low = ".".join(str(p) for p in compat.MIN_VERSION)
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        declared = re.search(r'^"requires-comfyui"\s*=\s*"([^"]+)"', f.read(), re.M).group(1)
    assert declared == f">={low}"
    with open(os.path.join(ROOT, "__init__.py"), encoding="utf-8") as f:
        assert f"needs ComfyUI {low} or newer" in f.read()
