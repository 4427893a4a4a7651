"""Model folders this pack registers with ComfyUI (also settable in extra_model_paths.yaml)."""

from __future__ import annotations

import os

import folder_paths

CONVERTERS = "merge_converters"  # MERGE converter files / depth_converters folders
EMBEDDINGS = "unidense_embeddings"  # saved prompt embeddings (e.g. the empty T5 prompt)
JOINTNET = "jointnet"  # one folder per JointNet model, each holding the official unet/ and jointnet/

WHERE = {
    CONVERTERS: "MERGE-B: download the 'depth_converters' folder of the Hugging Face repo "
    "'hongk1998/merge-base-depth-v1' (config.json + diffusion_pytorch_model.safetensors) into it; "
    "MERGE-L (FLUX.1-dev): the same folder of 'hongk1998/merge-large-depth-v1', e.g. as "
    "models/merge_converters/merge-large-depth-v1/depth_converters/.",
    EMBEDDINGS: "Make one with the 'UniDense Save Prompt Embedding' node (e.g. the empty prompt through the T5 "
    "text encoder).",
    JOINTNET: (
        "JointNet: unzip Apple's rgbd_finetune_sd21b.zip (generation) and/or rgbd_inpaint_sd21b.zip (image->depth, "
        "depth->image, editing) from https://docs-assets.developer.apple.com/ml-research/models/iclr24-jointnet/ "
        "into it, "
        "so that models/jointnet/<name>/unet/ and models/jointnet/<name>/jointnet/ each hold config.json and "
        "diffusion_pytorch_model.bin (or .safetensors)."
    ),
}


# What each folder's list offers: only files its loader reads (never config.json, .pkl, .pt2 or a README).
EXTENSIONS = {
    CONVERTERS: {".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"},  # io.checkpoints.load_state_dict
    EMBEDDINGS: {".safetensors"},  # io.prompt_embeddings.load_prompt_embedding
    JOINTNET: set(folder_paths.supported_pt_extensions),  # listed by folder (nodes/jointnet.py), not by file
}


def register() -> None:
    """Our folders with our extension sets, also when extra_model_paths.yaml created them first.

    ComfyUI makes a folder named only in the yaml with an empty extension set, which lists every file; the set is
    replaced (the yaml's paths are kept) and the folder's cached file list dropped.
    """
    for name in WHERE:
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, default)
            dirs = folder_paths.folder_names_and_paths[name][0]
        else:
            dirs = [default]
        folder_paths.folder_names_and_paths[name] = (dirs, set(EXTENSIONS[name]))
        cache = folder_paths.filename_list_cache  # a dict keyed by folder name (compat.py)
        cache.pop(name, None)


def files(name: str) -> list[str]:
    return folder_paths.get_filename_list(name)


def full_path(name: str, filename: str) -> str:
    """Absolute path of a listed file, or an error saying which file, where it goes and where it comes from."""
    path = folder_paths.get_full_path(name, filename)
    if path is None:
        dirs = ", ".join(folder_paths.get_folder_paths(name))
        raise FileNotFoundError(f"'{filename}' was not found in the '{name}' model folder ({dirs}). {WHERE[name]}")
    return path
