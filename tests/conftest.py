import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import asyncio  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402

COMFYUI_ENV = "COMFYUI_PATH"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~20x faster on one thread than on two contended ones; the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def comfy():
    """A real ComfyUI (its checkout named by $COMFYUI_PATH), on the CPU, with this pack loaded by ComfyUI's loader.

    Returns a namespace with ComfyUI's modules and our node classes; skips with the reason when ComfyUI is absent.
    """
    path = os.environ.get(COMFYUI_ENV)
    if not path or not os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
        pytest.skip(f"set {COMFYUI_ENV} to a ComfyUI checkout to run the ComfyUI-layer tests (see README, Testing)")
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        import comfy.cli_args
        import utils.install_util  # noqa: F401  ComfyUI's utils package, before `nodes` puts comfy/ on sys.path

        comfy.cli_args.args.cpu = True
        import comfy.model_management  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"ComfyUI at {path} does not import in this environment ({exc}); use ComfyUI's own venv")
    import folder_paths

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))  # comfy_extras nodes
    ok = asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes"))
    assert ok, "ComfyUI's loader failed to import the pack"
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
