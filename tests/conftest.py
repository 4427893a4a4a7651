import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402
from comfyui_env import comfy_namespace, comfyui_required, find_comfyui, load_comfyui  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~20x faster on one thread than on two contended ones; the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _no_comfyui(reason: str):
    if comfyui_required():  # CI / a provisioned checkout: a missing ComfyUI is a failure, not a skip
        pytest.fail(f"ComfyUI is required here but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def comfyui_path() -> str:
    """The real ComfyUI's folder (see tests/comfyui_env.py for how it is found)."""
    path, how = find_comfyui()
    if path is None:
        _no_comfyui(how)
    return path


@pytest.fixture(scope="session")
def comfy(comfyui_path):
    """A real ComfyUI on the CPU, in this process, with this pack loaded by ComfyUI's own loader.

    Returns a namespace with ComfyUI's modules and ``node(node_id)`` for the registered node classes.
    """
    try:
        nodes = load_comfyui(comfyui_path)
    except ImportError as exc:
        _no_comfyui(f"ComfyUI at {comfyui_path} does not import in this Python ({exc}); use ComfyUI's own venv")
    return comfy_namespace(nodes)


def pytest_sessionfinish(session, exitstatus):
    """Where ComfyUI is required (CI), a skipped test is a failure: everything must run.

    Also collects garbage while ComfyUI's modules are still alive: ModelPatchers freed during interpreter shutdown
    print an ``ON_DETACH`` traceback from ``ModelPatcher.__del__`` (harmless, but noise in the log).
    """
    import gc

    gc.collect()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if comfyui_required() and skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped where every test must run (ComfyUI is provisioned):")
        for rep in skipped[:10]:
            reporter.write_line(f"  {rep.nodeid}: {rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else ''}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def comfyui_server(comfyui_path, tmp_path_factory):
    """A real ComfyUI server (``main.py --cpu`` on loopback) that loads this pack through an extra_model_paths.yaml
    ``custom_nodes:`` entry, as a user's install would; its folders live in a temporary base directory."""
    from comfyui_server import ComfyUIServer

    try:
        import aiohttp  # noqa: F401  ComfyUI's server needs its own requirements in this Python
        import yaml  # noqa: F401
    except ImportError as exc:
        _no_comfyui(f"this Python lacks ComfyUI's requirements ({exc}); use ComfyUI's own venv")
    server = ComfyUIServer(comfyui_path, tmp_path_factory.mktemp("comfyui_server"), ROOT)
    server.start()
    yield server
    server.stop()
