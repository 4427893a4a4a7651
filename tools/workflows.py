"""Build the example workflows (UI format, drag-and-drop) from compact specs, and lint workflow files.

Both need a real ComfyUI for the node schemas (found as the tests find it, see tests/comfyui_env.py):
    .venv/bin/python tools/workflows.py build   # rewrite workflows/*.json
    .venv/bin/python tools/workflows.py lint    # check them (the tests check them against a live server)
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # frontend-only nodes, never sent to the server
# combo values that name a user's file or model folder (not on this disk, so not in the combo's options)
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".png", ".jpg", ".jpeg", ".webp", "_sd21b")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from comfyui_env import find_comfyui, load_comfyui  # noqa: E402
from workflow_specs import FILES_NOTE, NOTES, SPECS  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Node schemas (as /object_info serves them)


def node_info(nodes, node_type: str) -> dict:
    """The node's /object_info entry (server.py node_info), for V1 and V3 nodes alike."""
    from comfy_api.internal import _ComfyNodeInternal

    cls = nodes.NODE_CLASS_MAPPINGS[node_type]
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    types = cls.INPUT_TYPES()
    return {
        "input": types,
        "input_order": {k: list(v) for k, v in types.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
    }


def schemas_of(nodes) -> dict[str, dict]:
    """Every registered node's /object_info entry, computed in-process (what a server would serve)."""
    return {name: node_info(nodes, name) for name in nodes.NODE_CLASS_MAPPINGS}


def inputs_of(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) in input_order: required, then optional."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            out.append((name, spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}))
    return out


def is_widget(typ, opts) -> bool:
    """A widget input; V3 inputs of several types (e.g. Preview3D's model_file in ComfyUI >= 0.12.1) name their widget
    in ``widgetType``."""
    widget = isinstance(typ, list) or typ in WIDGET_TYPES or opts.get("widgetType") in WIDGET_TYPES
    return widget and not opts.get("forceInput")


def widget_slots(info: dict) -> list[tuple[str, object, dict]]:
    """The widgets_values layout: each widget, plus the frontend's extra control/upload value after some."""
    slots = []
    for name, typ, opts in inputs_of(info):
        if not is_widget(typ, opts):
            continue
        typ = opts["widgetType"] if opts.get("widgetType") in WIDGET_TYPES else typ
        slots.append((name, typ, opts))
        if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append(("control_after_generate", "CONTROL", {}))
        if opts.get("image_upload") or opts.get("upload"):
            slots.append(("upload", "UPLOAD", {}))
    return slots


def combo_options(typ, opts) -> list:
    return typ if isinstance(typ, list) else opts.get("options", [])


# ----------------------------------------------------------------------------------------------------------
# Build


def build(nodes, spec: list, note: str = FILES_NOTE) -> dict:
    """UI-format workflow for ``spec`` (see workflow_specs.py), with ``note`` as a Markdown note on the canvas."""
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(spec)}
    infos = {key: node_info(nodes, typ) for key, typ, _w, _i in spec}
    out_nodes, links = [], []
    outputs_links: dict[tuple[int, int], list[int]] = {}
    for key, typ, widgets, conns in spec:
        info = infos[key]
        inputs = []
        for name, t, opts in inputs_of(info):
            if name in conns:
                src_key, slot = conns[name]
                link_id = len(links) + 1
                src_type = infos[src_key]["output"][slot]
                entry = {"name": name, "type": src_type if not is_widget(t, opts) else t, "link": link_id}
                if is_widget(t, opts):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
                links.append([link_id, ids[src_key], slot, ids[key], len(inputs) - 1, src_type])
                outputs_links.setdefault((ids[src_key], slot), []).append(link_id)
            elif not is_widget(t, opts):
                inputs.append({"name": name, "type": t, "link": None})
        values = []
        for name, _t, _opts in widget_slots(info):
            if name not in widgets:
                raise KeyError(f"{typ}: no value given for widget '{name}'")
            values.append(widgets[name])
        out_nodes.append(
            {
                "id": ids[key],
                "type": typ,
                "inputs": inputs,
                "widgets_values": values,
                "_outputs": list(zip(info["output_name"], info["output"], strict=True)),
            }
        )
    # 2. Outputs with their links, and a simple left-to-right layout by dependency depth.
    depth: dict[int, int] = {}
    for n in out_nodes:
        srcs = [lk[1] for lk in links if lk[3] == n["id"]]
        depth[n["id"]] = 1 + max((depth[s] for s in srcs), default=-1)
    rows: dict[int, int] = {}
    for order, n in enumerate(out_nodes):
        d = depth[n["id"]]
        n["pos"] = [40 + 360 * d, 40 + 300 * rows.get(d, 0)]
        rows[d] = rows.get(d, 0) + 1
        n["size"] = [320, 120 + 26 * (len(n["inputs"]) + len(n["widgets_values"]))]
        n.update(flags={}, order=order, mode=0, properties={"Node name for S&R": n["type"]})
        n["outputs"] = [
            {"name": name, "type": t, "links": outputs_links.get((n["id"], slot), []), "slot_index": slot}
            for slot, (name, t) in enumerate(n.pop("_outputs"))
        ]
    note_id = len(out_nodes) + 1
    out_nodes.append(
        {
            "id": note_id,
            "type": "MarkdownNote",
            "pos": [40, -320],
            "size": [560, 300],
            "flags": {},
            "order": len(out_nodes),
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {},
            "widgets_values": [note],
        }
    )
    return {
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": out_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


# ----------------------------------------------------------------------------------------------------------
# Lint


def lint(schemas: dict[str, dict], workflow: dict) -> list[str]:
    """Problems of a UI-format workflow against node schemas in /object_info form (empty list = fine)."""
    errors = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for n in workflow["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in VIRTUAL:
            continue
        if n["type"] not in schemas:
            errors.append(f"{where}: unknown node type")
            continue
        info = schemas[n["type"]]
        declared = {name: (t, opts) for name, t, opts in inputs_of(info)}
        linked = {i["name"] for i in n["inputs"] if i.get("link") is not None}
        for i in n["inputs"]:
            if i["name"] not in declared:
                errors.append(f"{where}: input '{i['name']}' does not exist")
        for name, (t, opts) in declared.items():
            required = name in info["input"].get("required", {})
            if required and not is_widget(t, opts) and name not in linked:
                errors.append(f"{where}: required input '{name}' is not connected")
        slots = widget_slots(info)
        values = n.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{where}: {len(values)} widget values, schema has {len(slots)} ({[s[0] for s in slots]})")
            continue
        for (name, t, opts), v in zip(slots, values, strict=True):
            errors.extend(f"{where}: {msg}" for msg in check_value(name, t, opts, v))
        saved = [o["type"] for o in n.get("outputs", [])]
        if saved != list(info["output"])[: len(saved)]:  # newer ComfyUI may append outputs (SaveImage: IMAGE, 0.26)
            errors.append(f"{where}: outputs {saved} != schema {info['output']}")
    for link_id, src, slot, dst, dslot, typ in workflow["links"]:
        if src not in by_id or dst not in by_id:
            errors.append(f"link {link_id}: dangling")
            continue
        src_info = schemas[by_id[src]["type"]]
        if src_info["output"][slot] != typ:
            errors.append(
                f"link {link_id}: type {typ} but {by_id[src]['type']} output {slot} is {src_info['output'][slot]}"
            )
        target_input = by_id[dst]["inputs"][dslot]
        if target_input.get("link") != link_id:
            errors.append(f"link {link_id}: target slot {dslot} of node {dst} does not point back to it")
        declared = {name: t for name, t, _ in inputs_of(schemas[by_id[dst]["type"]])}
        want = declared.get(target_input["name"])
        if (
            want is not None
            and not isinstance(want, list)
            and want not in ("*", typ)
            and typ not in str(want).split(",")
        ):
            errors.append(f"link {link_id}: {typ} into '{target_input['name']}' of {by_id[dst]['type']} (wants {want})")
    return errors


def check_value(name, t, opts, v) -> list[str]:
    if t == "CONTROL":
        return [] if v in ("fixed", "increment", "decrement", "randomize") else [f"{name}: bad control value {v!r}"]
    if t == "UPLOAD":
        return [] if v in ("image", "video", "audio") else [f"{name}: bad upload value {v!r}"]
    if t in ("INT", "FLOAT"):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (t == "FLOAT" or float(v).is_integer())
        if not ok:
            return [f"{name}: {v!r} is not a {t}"]
        if v < opts.get("min", -float("inf")) or v > opts.get("max", float("inf")):
            return [f"{name}: {v} outside [{opts.get('min')}, {opts.get('max')}]"]
        return []
    if t == "BOOLEAN":
        return [] if isinstance(v, bool) else [f"{name}: {v!r} is not a boolean"]
    if t == "STRING":
        return [] if isinstance(v, str) else [f"{name}: {v!r} is not a string"]
    options = combo_options(t, opts)
    if v in options:
        return []
    if isinstance(v, str) and v.lower().endswith(FILE_SUFFIXES):
        return []  # a model/image file the user provides; the combo lists only what is on disk
    return [f"{name}: {v!r} not in {options[:8]}"]


def main() -> None:
    path, how = find_comfyui()
    if path is None:
        sys.exit(how)
    nodes = load_comfyui(path)
    schemas = schemas_of(nodes)
    folder = os.path.join(ROOT, "workflows")
    if sys.argv[1:] == ["build"]:
        for name, spec in SPECS.items():
            with open(os.path.join(folder, name + ".json"), "w", encoding="utf-8") as f:
                json.dump(build(nodes, spec, NOTES.get(name, FILES_NOTE)), f, indent=1)
            print("wrote", name)
    bad = 0
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".json"):
            with open(os.path.join(folder, fn), encoding="utf-8") as f:
                errs = lint(schemas, json.load(f))
            bad += len(errs)
            print(fn, "OK" if not errs else "\n  " + "\n  ".join(errs))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
