"""Build the example workflows (UI format, drag-and-drop) from compact specs, and lint workflow files.

Both need a real ComfyUI for the node schemas:
    COMFYUI_PATH=/path/to/ComfyUI python tools/workflows.py build   # rewrite workflows/*.json
    COMFYUI_PATH=/path/to/ComfyUI python tools/workflows.py lint    # check them (also done by the tests)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # frontend-only nodes, never sent to the server
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".png", ".jpg", ".jpeg", ".webp")

PIXART = "PixArt-XL-2-512x512.safetensors"
T5 = "t5xxl_fp16.safetensors"
VAE = "vae-ft-ema-560000-ema-pruned.safetensors"
CONVERTER = "depth_converters/diffusion_pytorch_model.safetensors"
EMPTY_PROMPT = "pixart_t5_empty.safetensors"
KSAMPLER_MERGE = dict(
    seed=0,
    control_after_generate="fixed",
    steps=20,
    cfg=1.0,
    sampler_name="dpmpp_2m",
    scheduler="sgm_uniform",
    denoise=1.0,
)


def merge_depth_nodes(image_src, cond_src, vae_src):
    """Shared MERGE depth chain: converters + ModeSwitch(depth) + conditioning + KSampler + decode + read-out."""
    return [
        ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER, weight_dtype="auto"), {}),
        (
            "depth_model",
            "UniDense_ModeSwitch",
            dict(mode="depth", latent_format="pixart_alpha"),
            dict(model=("unet", 0), converters=("conv", 0)),
        ),
        (
            "depth_cond",
            "UniDense_MergeDepthConditioning",
            dict(resolution="official_bins"),
            dict(conditioning=cond_src, vae=vae_src, image=image_src),
        ),
        (
            "depth_sample",
            "KSampler",
            dict(KSAMPLER_MERGE),
            dict(
                model=("depth_model", 0),
                positive=("depth_cond", 0),
                negative=("depth_cond", 1),
                latent_image=("depth_cond", 2),
            ),
        ),
        ("depth_decode", "VAEDecode", {}, dict(samples=("depth_sample", 0), vae=vae_src)),
        (
            "readout",
            "UniDense_MergeDepthReadout",
            dict(near_white=True, normalize="per_image"),
            dict(decoded=("depth_decode", 0), reference_image=image_src),
        ),
    ]


FILES_NOTE = f"""## Files for MERGE-B (UniDense)
- `models/diffusion_models/{PIXART}`: PixArt-α 512 transformer (PixArt-alpha/PixArt-XL-2-512x512).
- `models/vae/{VAE}`: the SD VAE PixArt-α uses (sd-vae-ft-ema).
- `models/text_encoders/{T5}`: T5-XXL (only to encode prompts; depth uses the saved empty prompt).
- `models/merge_converters/depth_converters/`: config.json + diffusion_pytorch_model.safetensors from
  hongk1998/merge-base-depth-v1.
- `models/unidense_embeddings/{EMPTY_PROMPT}`: made once by the 'generate then depth' workflow
  (UniDense Save Prompt Embedding).

Official depth settings: dpmpp_2m, sgm_uniform, 20 steps, cfg 1.0, empty prompt. Depth is affine-invariant;
the read-out gives near = white for ControlNet and the raw float depth as a MASK."""

SPECS = {
    "merge_depth_from_image": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_PROMPT), {}),
        *merge_depth_nodes(("image", 0), ("empty", 0), ("vae", 0)),
        ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
    ],
    "merge_generate_then_depth": [
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("clip", "CLIPLoader", dict(clip_name=T5, type="pixart", device="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        (
            "prompt",
            "CLIPTextEncode",
            dict(text="a cozy reading corner with a lamp and bookshelves"),
            dict(clip=("clip", 0)),
        ),
        ("empty", "CLIPTextEncode", dict(text=""), dict(clip=("clip", 0))),
        (
            "save_empty",
            "UniDense_SavePromptEmbedding",
            dict(filename="pixart_t5_empty", prompt=""),
            dict(conditioning=("empty", 0)),
        ),
        (
            "gen_model",
            "UniDense_ModeSwitch",
            dict(mode="generate", latent_format="pixart_alpha"),
            dict(model=("unet", 0), converters=("conv", 0)),
        ),
        ("latent", "EmptyLatentImage", dict(width=512, height=512, batch_size=1), {}),
        (
            "gen_sample",
            "KSampler",
            dict(KSAMPLER_MERGE, cfg=4.5),
            dict(
                model=("gen_model", 0), positive=("prompt", 0), negative=("save_empty", 0), latent_image=("latent", 0)
            ),
        ),
        ("gen_decode", "VAEDecode", {}, dict(samples=("gen_sample", 0), vae=("vae", 0))),
        ("save_image", "SaveImage", dict(filename_prefix="unidense/merge_generated"), dict(images=("gen_decode", 0))),
        *merge_depth_nodes(("gen_decode", 0), ("save_empty", 0), ("vae", 0)),
        ("preview", "PreviewImage", {}, dict(images=("readout", 0))),
    ],
    "merge_depth_controlnet": [
        ("image", "LoadImage", dict(image="example.png", upload="image"), {}),
        ("unet", "UNETLoader", dict(unet_name=PIXART, weight_dtype="default"), {}),
        ("vae", "VAELoader", dict(vae_name=VAE), {}),
        ("empty", "UniDense_LoadPromptEmbedding", dict(embedding_name=EMPTY_PROMPT), {}),
        *merge_depth_nodes(("image", 0), ("empty", 0), ("vae", 0)),
        ("sd15", "CheckpointLoaderSimple", dict(ckpt_name="v1-5-pruned-emaonly.safetensors"), {}),
        ("cn", "ControlNetLoader", dict(control_net_name="control_v11f1p_sd15_depth.pth"), {}),
        ("pos", "CLIPTextEncode", dict(text="a sunlit scandinavian living room, photo"), dict(clip=("sd15", 1))),
        ("neg", "CLIPTextEncode", dict(text="blurry, low quality"), dict(clip=("sd15", 1))),
        (
            "apply_cn",
            "ControlNetApplyAdvanced",
            dict(strength=1.0, start_percent=0.0, end_percent=1.0),
            dict(positive=("pos", 0), negative=("neg", 0), control_net=("cn", 0), image=("readout", 0)),
        ),
        ("latent", "EmptyLatentImage", dict(width=512, height=512, batch_size=1), {}),
        (
            "sample",
            "KSampler",
            dict(
                seed=0,
                control_after_generate="randomize",
                steps=20,
                cfg=7.0,
                sampler_name="euler",
                scheduler="normal",
                denoise=1.0,
            ),
            dict(model=("sd15", 0), positive=("apply_cn", 0), negative=("apply_cn", 1), latent_image=("latent", 0)),
        ),
        ("decode", "VAEDecode", {}, dict(samples=("sample", 0), vae=("sd15", 2))),
        ("save", "SaveImage", dict(filename_prefix="unidense/merge_controlnet"), dict(images=("decode", 0))),
        ("preview_depth", "PreviewImage", {}, dict(images=("readout", 0))),
    ],
}
# generate_then_depth needs the converters too (ModeSwitch takes them in both modes)
SPECS["merge_generate_then_depth"].insert(
    0, ("conv", "UniDense_LoadConverter", dict(converter_name=CONVERTER, weight_dtype="auto"), {})
)
SPECS["merge_generate_then_depth"] = [
    n for i, n in enumerate(SPECS["merge_generate_then_depth"]) if not (n[0] == "conv" and i > 0)
]


# ----------------------------------------------------------------------------------------------------------
# Node schemas (as /object_info serves them)


def load_comfy(comfyui_path: str):
    """Import ComfyUI on the CPU, load its built-in nodes and this pack; return the ``nodes`` module."""
    if comfyui_path not in sys.path:
        sys.path.insert(0, comfyui_path)
    import comfy.cli_args
    import utils.install_util  # noqa: F401  ComfyUI's utils package, before `nodes` puts comfy/ on sys.path

    comfy.cli_args.args.cpu = True
    import nodes

    if not getattr(nodes, "_unidense_loaded", False):
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        assert asyncio.run(nodes.load_custom_node(ROOT, module_parent="custom_nodes"))
        nodes._unidense_loaded = True
    return nodes


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
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def widget_slots(info: dict) -> list[tuple[str, object, dict]]:
    """The widgets_values layout: each widget, plus the frontend's extra control/upload value after some."""
    slots = []
    for name, typ, opts in inputs_of(info):
        if not is_widget(typ, opts):
            continue
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


def build(nodes, spec: list) -> dict:
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
            "widgets_values": [FILES_NOTE],
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


def lint(nodes, workflow: dict) -> list[str]:
    """Problems of a UI-format workflow against the live node schemas (empty list = fine)."""
    errors = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for n in workflow["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in VIRTUAL:
            continue
        if n["type"] not in nodes.NODE_CLASS_MAPPINGS:
            errors.append(f"{where}: unknown node type")
            continue
        info = node_info(nodes, n["type"])
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
        if [o["type"] for o in n.get("outputs", [])] != list(info["output"]):
            errors.append(f"{where}: outputs {[o['type'] for o in n.get('outputs', [])]} != schema {info['output']}")
    for link_id, src, slot, dst, dslot, typ in workflow["links"]:
        if src not in by_id or dst not in by_id:
            errors.append(f"link {link_id}: dangling")
            continue
        src_info = node_info(nodes, by_id[src]["type"])
        if src_info["output"][slot] != typ:
            errors.append(
                f"link {link_id}: type {typ} but {by_id[src]['type']} output {slot} is {src_info['output'][slot]}"
            )
        target_input = by_id[dst]["inputs"][dslot]
        if target_input.get("link") != link_id:
            errors.append(f"link {link_id}: target slot {dslot} of node {dst} does not point back to it")
        declared = {name: t for name, t, _ in inputs_of(node_info(nodes, by_id[dst]["type"]))}
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
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    nodes = load_comfy(path)
    folder = os.path.join(ROOT, "workflows")
    if sys.argv[1:] == ["build"]:
        for name, spec in SPECS.items():
            with open(os.path.join(folder, name + ".json"), "w", encoding="utf-8") as f:
                json.dump(build(nodes, spec), f, indent=1)
            print("wrote", name)
    bad = 0
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".json"):
            with open(os.path.join(folder, fn), encoding="utf-8") as f:
                errs = lint(nodes, json.load(f))
            bad += len(errs)
            print(fn, "OK" if not errs else "\n  " + "\n  ".join(errs))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
