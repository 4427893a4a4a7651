"""The pack in a running ComfyUI server, loaded as a user's install loads it: registration, schemas, API runs."""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ours(comfyui_server):
    return {k: v for k, v in comfyui_server.object_info.items() if k.startswith("UniDense_")}


def test_pack_loads_at_startup_without_errors(comfyui_server):
    log = comfyui_server.log()
    assert "IMPORT FAILED" not in log.split("Import times for custom nodes:")[-1].split("\n\n")[0]
    assert "packs/unidense" in log


def test_every_node_is_registered_with_names_tooltips_and_category(comfy, ours):
    expected = {k for k in comfy.nodes.NODE_CLASS_MAPPINGS if k.startswith("UniDense_")}  # the in-process twin
    assert set(ours) == expected and len(ours) >= 24
    for node_id, info in ours.items():
        assert info["display_name"].startswith("UniDense"), node_id
        assert info["category"].startswith("UniDense"), node_id
        assert info["description"], node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        tips = info.get("output_tooltips") or []
        assert len(tips) == len(info["output"]) and all(tips), f"{node_id}: an output has no tooltip"


def test_template_files_are_served(comfyui_server):
    wf = comfyui_server.get("/api/workflow_templates/unidense/merge_depth_from_image.json")
    assert any(n["type"] == "UniDense_ModeSwitch" for n in wf["nodes"])


def test_bad_combo_value_is_refused_with_the_input_named(comfyui_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {
            "class_type": "UniDense_MergeDepthReadout",
            "inputs": {"decoded": ["1", 0], "near_white": True, "normalize": "sideways"},
        },
        "3": {
            "class_type": "UniDense_SaveDepth16",
            "inputs": {"depth": ["2", 1], "filename_prefix": "x", "quantile_normalize": False},
        },
    }
    # ComfyUI >= 0.8.0 refuses a V3 combo value outside its options at validation (HTTP 400, the input named);
    # 0.3.64 does not check them, so there the node itself must refuse the value clearly when it runs.
    status, body = comfyui_server.post("/prompt", {"prompt": prompt, "client_id": "bad-combo"})
    if status == 400:
        (error,) = body["node_errors"]["2"]["errors"]
        assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "normalize"
        assert error["extra_info"]["received_value"] == "sideways"
        return
    assert status == 200, body
    hist = comfyui_server.wait(body["prompt_id"])
    assert hist["status"]["status_str"] == "error"
    err = next(m[1] for m in hist["status"]["messages"] if m[0] == "execution_error")
    assert err["node_id"] == "2" and "normalize" in err["exception_message"] and "sideways" in err["exception_message"]


def test_save_depth16_writes_the_values_and_reports_the_file(comfyui_server):
    from PIL import Image

    prompt = {
        "1": {"class_type": "SolidMask", "inputs": {"value": 0.25, "width": 40, "height": 24}},
        "2": {
            "class_type": "UniDense_SaveDepth16",
            "inputs": {"depth": ["1", 0], "filename_prefix": "tests/depth16", "quantile_normalize": False},
        },
    }
    hist = comfyui_server.run(prompt)
    assert hist["status"]["status_str"] == "success", hist["status"]
    images = hist["outputs"]["2"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output" and images[0]["subfolder"] == "tests"
    path = os.path.join(comfyui_server.base, "output", images[0]["subfolder"], images[0]["filename"])
    arr = np.array(Image.open(path))
    assert arr.shape == (24, 40) and arr.dtype == np.uint16 and (arr == round(0.25 * 65535)).all()
