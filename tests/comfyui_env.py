"""Where the real ComfyUI is, and how the tests, tools and benchmarks load it in-process.

ComfyUI is found, in this order:
1. ``$COMFYUI_PATH`` (a ComfyUI source tree);
2. the ComfyUI this pack is installed in (``ComfyUI/custom_nodes/<this pack>``), with no variable at all;
3. ``.comfyui/`` in this repository, which ``tools/test_env.sh`` unpacks from the ComfyUI source archive.

When ComfyUI was provisioned (3.) or ``UNIDENSE_REQUIRE_COMFYUI=1`` is set (CI), a missing or broken ComfyUI is an
error, never a skip.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "COMFYUI_PATH"
REQUIRE_ENV = "UNIDENSE_REQUIRE_COMFYUI"
PROVISIONED = os.path.join(ROOT, ".comfyui")  # made by tools/test_env.sh


def is_comfyui(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "comfy", "model_patcher.py"))


def find_comfyui() -> tuple[str | None, str]:
    """(ComfyUI folder or None, how it was found / why not)."""
    path = os.environ.get(ENV)
    if path:
        if is_comfyui(path):
            return path, f"${ENV}"
        return None, f"${ENV}={path} is not a ComfyUI source tree (no comfy/model_patcher.py)"
    parent = os.path.dirname(os.path.realpath(ROOT))
    if os.path.basename(parent) == "custom_nodes" and is_comfyui(os.path.dirname(parent)):
        return os.path.dirname(parent), "the ComfyUI this pack is installed in"
    if is_comfyui(PROVISIONED):
        return PROVISIONED, "tools/test_env.sh"
    return None, (
        f"no ComfyUI found: set {ENV} to a ComfyUI checkout, put this pack in ComfyUI/custom_nodes/, "
        "or run tools/test_env.sh (README, Testing)"
    )


def comfyui_required() -> bool:
    """CI and a provisioned checkout must run every ComfyUI test."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0") or is_comfyui(PROVISIONED)


def load_comfyui(path: str):
    """Import ComfyUI on the CPU, register its built-in nodes and load this pack with ComfyUI's own loader.

    Returns ComfyUI's ``nodes`` module. Loading is done once per process.
    """
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args
    import utils.install_util  # noqa: F401  ComfyUI's utils package, before `nodes` puts comfy/ on sys.path

    comfy.cli_args.args.cpu = True  # before comfy.model_management picks a device
    import comfy.model_management  # noqa: F401

    import nodes

    if not getattr(nodes, "_unidense_loaded", False):
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))  # comfy_extras nodes
        if not asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes")):
            raise RuntimeError("ComfyUI's loader failed to import the pack (see the log above)")
        nodes._unidense_loaded = True
    return nodes


def comfy_namespace(nodes):
    """ComfyUI's modules the tests use, and ``node(node_id)`` for the registered node classes."""
    import folder_paths

    ns = type("ComfyNS", (), {})()
    for name in (
        "comfy.model_patcher",
        "comfy.model_management",
        "comfy.samplers",
        "comfy.sample",
        "comfy.utils",
        "comfy.supported_models",
        "comfy.latent_formats",
        "comfy.sampler_helpers",
    ):
        setattr(ns, name.split(".")[-1], importlib.import_module(name))
    ns.folder_paths = folder_paths
    ns.nodes = nodes
    ns.node = lambda node_id: nodes.NODE_CLASS_MAPPINGS[node_id]
    return ns
