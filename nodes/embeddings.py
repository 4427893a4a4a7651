"""Save a prompt's conditioning once (e.g. the empty T5 prompt) and load it without the text encoder."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..unidense_core.io.checks import check_conditioning
from ..unidense_core.io.prompt_embeddings import drop_padding, read_prompt_embedding, save_prompt_embedding
from . import paths


class SavePromptEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_SavePromptEmbedding",
            display_name="UniDense Save Prompt Embedding",
            category="UniDense/conditioning",
            description="Write a CONDITIONING's text embedding (and its pooled output, as FLUX's CLIP-L gives) to "
            "models/unidense_embeddings, so later runs load it with 'UniDense Load Prompt Embedding' instead of the "
            "text encoder.",
            inputs=[
                io.Conditioning.Input(
                    "conditioning", tooltip="The encoded prompt to store (e.g. the empty prompt from CLIPTextEncode)."
                ),
                io.String.Input(
                    "filename", default="pixart_t5_empty", tooltip="Name of the .safetensors file (no folders)."
                ),
                io.String.Input("prompt", default="", tooltip="The prompt it encodes, kept as metadata."),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Off: a file of that name holding another embedding is an error (the same embedding is "
                    "left as it is). On: replace it.",
                ),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="The stored prompt embedding.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename: str, prompt: str = "", overwrite: bool = False) -> io.NodeOutput:
        name = filename.strip() if isinstance(filename, str) else ""
        if (
            not name
            or os.path.basename(name) != name
            or name.startswith(".")
            or any(c in name for c in '\\/:*?"<>|\0')
            or len(name) > 200
        ):
            raise ValueError(
                f'filename must be a plain file name (no folders, no \\/:*?"<>|, at most 200 characters), got '
                f"{filename!r}."
            )
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        check_conditioning(conditioning, "conditioning")
        if len(conditioning) != 1:
            raise ValueError(f"Save one conditioning at a time; this one has {len(conditioning)} entries.")
        folder = folder_paths.get_folder_paths(paths.EMBEDDINGS)[0]
        pooled = conditioning[0][1].get("pooled_output")  # FLUX: CLIP-L's pooled vector, needed with the T5 context
        save_prompt_embedding(
            os.path.join(folder, name),
            conditioning[0][0],
            prompt=prompt,
            encoder="comfyui",
            overwrite=overwrite,
            pooled=pooled,
        )
        return io.NodeOutput(conditioning)


class LoadPromptEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniDense_LoadPromptEmbedding",
            display_name="UniDense Load Prompt Embedding",
            category="UniDense/conditioning",
            description="Load a saved text embedding as CONDITIONING (no text encoder needed).",
            inputs=[
                io.Combo.Input(
                    "embedding_name",
                    options=paths.files(paths.EMBEDDINGS),
                    tooltip="A file in models/unidense_embeddings, made by 'UniDense Save Prompt Embedding'.",
                )
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="The stored prompt embedding.")],
        )

    @classmethod
    def execute(cls, embedding_name: str) -> io.NodeOutput:
        e = read_prompt_embedding(paths.full_path(paths.EMBEDDINGS, embedding_name))
        context, mask = e.context, e.mask
        conds = [
            [drop_padding(context[i : i + 1], None if mask is None else mask[i : i + 1]), {}]
            for i in range(context.shape[0])
        ]
        if e.pooled is not None:  # FLUX conditioning carries CLIP's pooled output
            for i, c in enumerate(conds):
                c[1]["pooled_output"] = e.pooled[i : i + 1]
        return io.NodeOutput(conds)
