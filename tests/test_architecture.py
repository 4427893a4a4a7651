"""The layout rules of ARCHITECTURE.md, checked on the source: layers, no cycles, no upward imports, short files."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Layer of each package; a module may import only from its own layer or lower ones (never from a sibling method).
CORE_LAYERS = {
    "io": 0,
    "dense": 1,
    "tiling": 1,
    "sampling": 1,
    "merge": 2,
    "dmp": 2,
    "jointnet": 2,
    "training": 3,
    "evaluation": 3,
    "": 4,  # top level: cli, selfcheck, tiny
}
METHODS = {"merge", "dmp", "jointnet"}


def python_files(folder):
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def module_name(path):
    rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    return rel[:-1] if rel[-1] == "__init__" else rel


def imports(path):
    """Absolute dotted names this file imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    mod = module_name(path)
    pkg = mod if path.endswith("__init__.py") else mod[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if node.module is None:
                    out += [target + [a.name] for a in node.names]
                else:
                    out.append(target)
            else:
                out.append(node.module.split("."))
    return out


def core_package(parts):
    """'merge' for unidense_core.merge.x, '' for top-level modules; None outside the core."""
    if parts[0] != "unidense_core":
        return None
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in CORE_LAYERS) else ""


CORE_FILES = sorted(python_files("unidense_core"))
NODE_FILES = sorted(python_files("nodes"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_core_never_imports_comfyui_and_only_downwards(path):
    here = core_package(module_name(path))
    assert here in CORE_LAYERS, f"{path}: package {here!r} has no layer in ARCHITECTURE.md"
    for target in imports(path):
        assert target[0] not in ("comfy", "comfy_api", "folder_paths", "nodes", "node_helpers", "comfy_extras")
        there = core_package(target)
        if there is None or there == here:
            continue
        assert there in CORE_LAYERS, f"{path} imports unknown core package {there!r}"
        assert CORE_LAYERS[there] <= CORE_LAYERS[here], f"{path} imports upwards: {'.'.join(target)}"
        assert not (here in METHODS and there in METHODS), f"{path}: one method imports another: {'.'.join(target)}"


def test_no_import_cycles_between_modules():
    graph = {}
    for path in CORE_FILES + NODE_FILES:
        name = ".".join(module_name(path))
        graph[name] = set()
        for target in imports(path):
            for n in range(len(target), 0, -1):  # the module itself, or the package it names
                candidate = ".".join(target[:n])
                if candidate in {".".join(module_name(p)) for p in CORE_FILES + NODE_FILES}:
                    graph[name].add(candidate)
                    break
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt == node or nxt in node.split(".")[:-1]:
                continue
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_nodes_reach_the_core_and_hosts_never_reach_the_nodes(path):
    mod = module_name(path)
    for target in imports(path):
        if target[0] == "nodes" and "hosts" in mod:
            assert target[:2] in (["nodes", "hosts"], ["nodes", "paths"]), f"{path}: a host imports a node module"
        if target[0] in ("diffusers", "peft", "transformers", "accelerate"):
            raise AssertionError(f"{path}: heavy import at ComfyUI start-up ({target[0]})")


@pytest.mark.parametrize("path", CORE_FILES + NODE_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_no_file_over_600_lines(path):
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    assert n <= 600, f"{os.path.relpath(path, ROOT)} has {n} lines: split it by concept"


def test_core_is_grouped_by_concept():
    top = [f for f in os.listdir(os.path.join(ROOT, "unidense_core")) if f.endswith(".py")]
    assert len([f for f in top if f not in ("__init__.py", "__main__.py")]) <= 8, top
