"""Every example workflow loads: UI format, consistent links, and (with a real ComfyUI) valid against the schemas."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "workflows")
FILES = sorted(f for f in os.listdir(FOLDER) if f.endswith(".json"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from workflows import lint  # noqa: E402


def load(name):
    with open(os.path.join(FOLDER, name), encoding="utf-8") as f:
        return json.load(f)


def test_one_workflow_per_merge_capability():
    assert {"merge_depth_from_image.json", "merge_generate_then_depth.json", "merge_depth_controlnet.json"} <= set(
        FILES
    )


def test_one_workflow_per_merge_l_capability():
    names = {"merge_l_generate_then_depth.json", "merge_l_depth_from_image.json", "merge_l_depth_controlnet.json"}
    assert names <= set(FILES)
    for name in names:  # the official depth schedule: ModelSamplingFlux fed the processed image size
        wf = load(name)
        shift = next(n for n in wf["nodes"] if n["type"] == "ModelSamplingFlux" and len(n["inputs"]) == 3)
        cond = next(n for n in wf["nodes"] if n["type"] == "UniDense_MergeLDepthConditioning")
        width, height = (next(lk for lk in wf["links"] if lk[0] == i["link"]) for i in shift["inputs"][1:])
        assert (width[1], width[2], height[1], height[2]) == (cond["id"], 3, cond["id"], 4)


@pytest.mark.parametrize("name", FILES)
def test_ui_format_and_links_are_consistent(name):
    wf = load(name)
    assert wf["version"] == 0.4 and {"nodes", "links", "last_node_id", "last_link_id"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) == wf["last_node_id"]
    for link_id, src, slot, dst, dslot, typ in wf["links"]:
        assert link_id in nodes[src]["outputs"][slot]["links"]
        assert nodes[src]["outputs"][slot]["type"] == typ
        assert nodes[dst]["inputs"][dslot]["link"] == link_id
    linked = {i["link"] for n in wf["nodes"] for i in n["inputs"] if i["link"] is not None}
    assert linked == {lk[0] for lk in wf["links"]}
    assert any(n["type"].startswith("UniDense_") for n in wf["nodes"])


@pytest.mark.parametrize("name", FILES)
def test_workflow_matches_live_node_schemas(comfyui_server, name):
    """Each example against the /object_info of a running ComfyUI that loaded the pack as a user's install does."""
    assert lint(comfyui_server.object_info, load(name)) == []


def test_lint_catches_mistakes(comfyui_server):
    wf = load("merge_depth_from_image.json")
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"][2] = -3  # steps below the minimum
    ms = next(n for n in wf["nodes"] if n["type"] == "UniDense_ModeSwitch")
    ms["widgets_values"][0] = "normals"
    errors = lint(comfyui_server.object_info, wf)
    assert any("steps" in e for e in errors) and any("normals" in e for e in errors)


def test_template_browser_serves_every_workflow(comfyui_server):
    templates = comfyui_server.get("/workflow_templates")
    assert sorted(templates["unidense"]) == sorted(f[: -len(".json")] for f in FILES)
