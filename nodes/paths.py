"""Model folders this pack registers with ComfyUI (also settable in extra_model_paths.yaml)."""

from __future__ import annotations

import os

import folder_paths

CONVERTERS = "merge_converters"  # MERGE converter files / depth_converters folders
EMBEDDINGS = "unidense_embeddings"  # saved prompt embeddings (e.g. the empty T5 prompt)

WHERE = {
    CONVERTERS: "MERGE-B: download the 'depth_converters' folder of the Hugging Face repo "
    "'hongk1998/merge-base-depth-v1' (config.json + diffusion_pytorch_model.safetensors) into it.",
    EMBEDDINGS: "Make one with the 'UniDense Save Prompt Embedding' node (e.g. the empty prompt through the T5 "
    "text encoder).",
}


def register() -> None:
    for name in (CONVERTERS, EMBEDDINGS):
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
