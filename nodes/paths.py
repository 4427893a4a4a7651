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


def register() -> None:
    for name in WHERE:
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, default)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(folder_paths.supported_pt_extensions))


def files(name: str) -> list[str]:
    return folder_paths.get_filename_list(name)


def full_path(name: str, filename: str) -> str:
    """Absolute path of a listed file, or an error saying which file, where it goes and where it comes from."""
    path = folder_paths.get_full_path(name, filename)
    if path is None:
        dirs = ", ".join(folder_paths.get_folder_paths(name))
        raise FileNotFoundError(f"'{filename}' was not found in the '{name}' model folder ({dirs}). {WHERE[name]}")
    return path
