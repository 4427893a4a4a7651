"""Bad inputs of the MERGE, DMP, prompt-embedding and processing-resolution nodes: one table row per (node, input).

Every row calls the node's ``execute`` in a real ComfyUI (tiny models, as tests/test_comfyui_merge.py and
tests/test_comfyui_dmp.py) or the core function behind it, and must raise a clear error naming the input
(tests/bad_inputs.py). Valid edge cases (constant images, 1×1 images, every step count) must give finite outputs.
"""

import json

import pytest
import torch
from bad_inputs import Case, run_case
from safetensors.torch import load_file, save_file

from unidense_core.dmp.lora import _pattern_value, read_peft_config, save_lora_attn_procs
from unidense_core.io.prompt_embeddings import save_prompt_embedding
from unidense_core.io.resolution import classify_bin
from unidense_core.merge.converters import ConverterConfig, MergeConverters, save_converters
from unidense_core.tiny import TINY_CONVERTER, random_dmp_lora, randomize_, tiny_converters, tiny_pixart, tiny_sd_unet

E: dict = {}  # filled by the env fixture; the table's calls read it when they run
NAN, INF = float("nan"), float("inf")
CONV = "good/diffusion_pytorch_model.safetensors"
LORA = "dmp/good/pytorch_lora_weights.safetensors"


def node(node_id):
    return E["comfy"].node(node_id)


def with_value(shape, index, value):
    x = torch.rand(*shape)
    x[index] = value
    return x


def cond(width=32, tokens=3, value=None, batch=1):
    c = torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(0))
    if value is not None:
        c[0, 1, 2] = value
    return [[c, {}]]


# ----------------------------------------------------------------------------------------------------------
# Files: one good converter folder, LoRA folder and embedding, and one broken copy per way a file can be bad


def converter_variant(root, name, config=None, weights=None, config_text=None):
    folder = root / name
    save_converters(tiny_converters(), folder)
    if config is not None or config_text is not None:
        cfg = json.loads((folder / "config.json").read_text())
        text = config_text if config_text is not None else json.dumps({**cfg, **config})
        (folder / "config.json").write_text(text)
    if weights is not None:
        file = folder / "diffusion_pytorch_model.safetensors"
        sd = load_file(file)
        weights(sd)
        save_file(sd, file)


def lora_variant(root, name, lora, edit=None, adapter_config=None, metadata=None):
    folder = root / "dmp" / name
    save_lora_attn_procs(lora, folder)
    file = folder / "pytorch_lora_weights.safetensors"
    if edit is not None or metadata is not None:
        sd = load_file(file)
        if edit is not None:
            sd = edit(sd)
        save_file(sd, file, metadata=metadata)
    if adapter_config is not None:
        (folder / "adapter_config.json").write_text(adapter_config)


def peft_keys(sd):
    """The same LoRA in peft's layout (so an adapter_config.json applies to it)."""
    out = {}
    for key, value in sd.items():
        mod, rest = key.split(".processor.")
        proj, kind = rest.split("_lora.")
        name = f"{mod}.{proj}" + (".0" if proj == "to_out" else "")
        out[f"{name}.{'lora_A' if kind.startswith('down') else 'lora_B'}.weight"] = value
    return out


def first_key(sd, suffix):
    return next(k for k in sd if k.endswith(suffix))


def add_alpha(alpha):
    def edit(sd):
        name = first_key(sd, "to_q_lora.down.weight").removesuffix(".processor.to_q_lora.down.weight")
        return {**sd, f"{name}.to_q.alpha": alpha}

    return edit


def set_first(suffix, value):
    def edit(sd):
        sd[first_key(sd, suffix)].view(-1)[0] = value
        return sd

    return edit


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory, one_thread):
    from comfy_tiny import comfy_pixart_from_diffusers, comfy_sd15_from_diffusers, comfy_vae

    root = tmp_path_factory.mktemp("bad_inputs")
    conv_dir, loras, emb = root / "merge_converters", root / "loras", root / "unidense_embeddings"
    comfy.folder_paths.add_model_folder_path("merge_converters", str(conv_dir), is_default=True)
    comfy.folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    comfy.folder_paths.add_model_folder_path("unidense_embeddings", str(emb), is_default=True)

    converter_variant(conv_dir, "good")
    converter_variant(conv_dir, "huge_layers", {"num_layers": 10**9})
    converter_variant(conv_dir, "string_layers", {"num_layers": "14"})
    converter_variant(conv_dir, "zero_heads", {"num_attention_heads": 0})
    converter_variant(conv_dir, "four_channels", {"in_channels": 4})
    converter_variant(conv_dir, "not_json", config_text='{"num_layers": 2,')
    converter_variant(conv_dir, "a_list", config_text="[2, 2]")
    converter_variant(conv_dir, "deep", config_text="[" * 100_000 + "]" * 100_000)
    converter_variant(
        conv_dir, "nan", weights=lambda sd: sd["transformer_blocks.1.attn1.to_v.weight"].view(-1).__setitem__(5, NAN)
    )
    sd = tiny_converters().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, conv_dir / "meta.safetensors", metadata={"config": "{oops"})
    (conv_dir / "truncated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")

    unet = tiny_sd_unet()
    dmp_lora = random_dmp_lora(unet, scale=0.3)
    lora_variant(loras, "good", dmp_lora)
    lora_variant(loras, "nan", dmp_lora, edit=set_first("to_v_lora.up.weight", NAN))
    lora_variant(loras, "int", dmp_lora, edit=lambda sd: {k: (v * 100).to(torch.int32) for k, v in sd.items()})
    lora_variant(
        loras,
        "rank0",
        dmp_lora,
        edit=lambda sd: {k: v[:0] if k.endswith("down.weight") else v[:, :0] for k, v in sd.items()},
    )
    lora_variant(loras, "alpha_inf", dmp_lora, edit=add_alpha(torch.tensor(INF)))
    lora_variant(loras, "alpha_vector", dmp_lora, edit=add_alpha(torch.tensor([1.0, 2.0])))
    regex = json.dumps({"r": 4, "lora_alpha": 4, "rank_pattern": {"(.|.)*Z": 8}})  # hangs a regex engine
    for name, text in (
        ("hang", regex),
        ("r_string", '{"r": "four", "lora_alpha": 4}'),
        ("pattern_list", '{"r": 4, "rank_pattern": [["to_q", 2]]}'),
        ("alpha_nan", '{"r": 4, "lora_alpha": NaN}'),
    ):
        lora_variant(loras, name, dmp_lora, edit=peft_keys, adapter_config=text)
    lora_variant(loras, "bad_meta", dmp_lora, edit=peft_keys, metadata={"lora_adapter_metadata": "{'r': 4}"})

    save_prompt_embedding(emb / "good.safetensors", torch.randn(1, 4, 32))
    save_file({"context": with_value((1, 4, 32), (0, 2, 7), NAN)}, emb / "nan.safetensors")
    save_file(
        {"context": torch.randn(1, 4, 32), "mask": torch.zeros(1, 4, dtype=torch.int64)}, emb / "no_token.safetensors"
    )
    save_file(
        {"context": torch.randn(1, 4, 32), "mask": torch.ones(1, 5, dtype=torch.int64)}, emb / "mask_shape.safetensors"
    )
    save_file({"prompt": torch.randn(1, 4, 32)}, emb / "no_context.safetensors")
    torch.save({"context": torch.randn(1, 4, 32)}, emb / "pickle.bin")

    sd15 = comfy_sd15_from_diffusers(comfy, unet)
    pixart = comfy_pixart_from_diffusers(comfy, tiny_pixart())
    handle = comfy.node("UniDense_LoadConverter").execute(CONV, "fp32")[0]
    p1 = randomize_(MergeConverters(ConverterConfig(**{**TINY_CONVERTER.__dict__, "patch_size": 1})))
    import comfy.sd as comfy_sd

    nan_lora = load_file(loras / "dmp" / "good" / "pytorch_lora_weights.safetensors")
    nan_lora = {k: v * NAN if k.endswith("to_out_lora.up.weight") else v for k, v in nan_lora.items()}
    E.update(
        comfy=comfy,
        emb=emb,
        sd15=sd15,
        pixart=pixart,
        vae=comfy_vae(comfy),
        handle=handle,
        handle_p1=type(handle)(
            comfy.model_patcher.ModelPatcher(p1, torch.device("cpu"), torch.device("cpu")), p1.config, "p1"
        ),
        lora_model=comfy.node("UniDense_LoadDMPLora").execute(sd15, LORA, 1.0)[0],
        nan_model=comfy_sd.load_lora_for_models(sd15, None, nan_lora, 1.0, 0)[0],  # ComfyUI's loader takes the NaN
        latent={"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))},
    )
    return E


# ----------------------------------------------------------------------------------------------------------
# The table


def conv(name, dtype="fp32"):
    file = name if name.endswith(".safetensors") else f"{name}/diffusion_pytorch_model.safetensors"
    return lambda: node("UniDense_LoadConverter").execute(file, dtype)


def switch(mode="depth", latent_format="pixart_alpha", model="pixart", handle="handle"):
    return lambda: node("UniDense_ModeSwitch").execute(E[model], E.get(handle, handle), mode, latent_format)


def depth_cond(image=None, resolution="native", conditioning=None):
    image = torch.rand(1, 32, 32, 3) if image is None else image
    c = cond() if conditioning is None else conditioning
    return lambda: node("UniDense_MergeDepthConditioning").execute(c, E["vae"], image, resolution)


def merge_readout(decoded=None, normalize="per_image", reference=None):
    decoded = torch.rand(1, 8, 8, 3) if decoded is None else decoded
    return lambda: node("UniDense_MergeDepthReadout").execute(decoded, True, normalize, reference)


def save_emb(filename="x", conditioning=None, overwrite=False):
    c = cond() if conditioning is None else conditioning
    return lambda: node("UniDense_SavePromptEmbedding").execute(c, filename, "", overwrite)


def load_emb(name):
    return lambda: node("UniDense_LoadPromptEmbedding").execute(name)


def lora(name, strength=1.0, model="sd15"):
    file = f"dmp/{name}/pytorch_lora_weights.safetensors"
    return lambda: node("UniDense_LoadDMPLora").execute(E[model], file, strength)


def dmp(model="lora_model", positive=None, latent=None, raw_latent=None, variant="standard", cfg=1.0, negative=None):
    """The DMP sampler node with one bad input (``latent`` as samples, ``raw_latent`` as the whole LATENT)."""

    def call():
        lat = raw_latent if raw_latent is not None else E["latent"] if latent is None else {"samples": latent}
        pos = cond() if positive is None else positive
        sampler = node("UniDense_DeterministicInterpolationSampler")
        return sampler.execute(E[model], pos, lat, 5, variant, cfg, negative)

    return call


def readout(node_id, decoded=None, *args):
    decoded = torch.rand(1, 8, 8, 3) if decoded is None else decoded
    return lambda: node(node_id).execute(decoded, *args)


def resolution(image=None, res=512, side="shorter"):
    image = torch.rand(1, 16, 24, 3) if image is None else image
    return lambda: node("UniDense_ProcessingResolution").execute(image, res, side)


def sampler_custom_advanced(model):
    def call():
        nodes = E["comfy"].nodes.NODE_CLASS_MAPPINGS
        guider = nodes["BasicGuider"]().get_guider(E[model], cond())[0]
        sampler = node("UniDense_DMPSampler").execute("standard")[0]
        sigmas = node("UniDense_DMPSigmas").execute(5)[0]
        noise = nodes["DisableNoise"]().get_noise()[0]
        return nodes["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, E["latent"])

    return call


NAN_IMAGE = with_value((1, 32, 32, 3), (0, 5, 6, 1), NAN)
INF_IMAGE = with_value((1, 8, 8, 3), (0, 1, 1, 1), -INF)
DEPTH, NORMALS, IMAGE = "UniDense_DMPDepthReadout", "UniDense_DMPNormalsReadout", "UniDense_DMPImageReadout"
# fmt: off
CASES = [
    # LoadConverter: combo values through the API, missing and malformed files
    Case("LoadConverter", "weight_dtype fp64", conv("good", "fp64"), r"weight_dtype must be one of.*'fp64'"),
    Case("LoadConverter", "missing file", conv("nope.safetensors"), r"'nope.safetensors' was not found.*hongk1998"),
    Case("LoadConverter", "huge num_layers", conv("huge_layers"),
         r"says num_layers=1000000000, but the file holds 2 converter blocks", timeout=20),
    Case("LoadConverter", "num_layers a string", conv("string_layers"), r"num_layers must be a positive int.*'14'"),
    Case("LoadConverter", "zero heads", conv("zero_heads"), r"num_attention_heads must be a positive integer, got 0"),
    Case("LoadConverter", "in_channels 4", conv("four_channels"), r"in_channels must be 8 .*got 4"),
    Case("LoadConverter", "config not JSON", conv("not_json"), r"not_json/config.json' is not valid JSON"),
    Case("LoadConverter", "config a list", conv("a_list"), r"a_list/config.json' should hold a JSON object"),
    Case("LoadConverter", "config nested deeply", conv("deep"), r"deep/config.json' is nested too deeply"),
    Case("LoadConverter", "NaN weight", conv("nan"), r"NaN/Inf weights.*blocks.1.attn1.to_v.weight \(1 of"),
    Case("LoadConverter", "metadata config", conv("meta.safetensors"), r"'config' metadata of .* is not valid JSON"),
    Case("LoadConverter", "truncated file", conv("truncated.safetensors"), r"truncated.* not a readable safetensors"),
    # ModeSwitch
    Case("ModeSwitch", "mode normals", switch(mode="normals"), r"mode must be one of.*'normals'"),
    Case("ModeSwitch", "latent_format sigma", switch(latent_format="sigma"), r"latent_format must be one of.*'sigma'"),
    Case("ModeSwitch", "converters a string", switch(handle="not converters"), r"converters must come from"),
    Case("ModeSwitch", "SD UNet model", switch(model="sd15"), r"needs a PixArt MODEL, got UNetModel"),
    Case("ModeSwitch", "converter patch size", switch(handle="handle_p1"),
         r"converters use 1×1 patches but the base model uses 2×2"),
    # MergeDepthConditioning
    Case("MergeDepthConditioning", "empty batch", depth_cond(torch.rand(0, 32, 32, 3)), r"image is empty: shape \(0,"),
    Case("MergeDepthConditioning", "0x0 image", depth_cond(torch.rand(1, 0, 0, 3), "official_bins"), r"image is empty"),
    Case("MergeDepthConditioning", "NaN pixel", depth_cond(NAN_IMAGE), r"image has 1 non-finite .*B=0, H=5, W=6, C=1"),
    Case("MergeDepthConditioning", "Inf pixel", depth_cond(with_value((1, 32, 32, 3), (0, 0, 0, 0), INF)),
         r"image has 1 non-finite.*Inf: 1"),
    Case("MergeDepthConditioning", "2 channels", depth_cond(torch.rand(1, 32, 32, 2)), r"image must have 3 or 4 chan"),
    Case("MergeDepthConditioning", "3-D image", depth_cond(torch.rand(32, 32, 3)), r"image must be an IMAGE \[B,H,W"),
    Case("MergeDepthConditioning", "resolution bins", depth_cond(resolution="bins"), r"resolution must be one of.*'bi"),
    Case("MergeDepthConditioning", "NaN conditioning", depth_cond(conditioning=cond(value=NAN)),
         r"conditioning has 1 non-finite.*B=0, T=1, C=2"),
    Case("MergeDepthConditioning", "empty conditioning", depth_cond(conditioning=[]),
         r"conditioning must be a CONDITIONING.*empty list"),
    Case("MergeDepthConditioning", "prompt batch", depth_cond(torch.rand(3, 32, 32, 3), conditioning=cond(batch=2)),
         r"conditioning has a batch of 2 prompts for 3 images"),
    Case("MergeDepthConditioning", "native 60 px", depth_cond(torch.rand(1, 60, 64, 3)), r"image is 64×60 px.*of 16"),
    # MergeDepthReadout
    Case("MergeDepthReadout", "NaN decoded", merge_readout(with_value((2, 8, 8, 3), (1, 2, 3, 0), NAN)),
         r"decoded has 1 non-finite.*B=1, H=2, W=3, C=0"),
    Case("MergeDepthReadout", "empty batch", merge_readout(torch.rand(0, 8, 8, 3)), r"decoded is empty"),
    Case("MergeDepthReadout", "1 channel", merge_readout(torch.rand(1, 8, 8, 1)), r"decoded must have 3 or 4 channels"),
    Case("MergeDepthReadout", "normalize sideways", merge_readout(normalize="sideways"), r"normalize must be one of"),
    Case("MergeDepthReadout", "0x0 reference", merge_readout(reference=torch.rand(1, 0, 0, 3)),
         r"reference_image is 0×0 px"),
    # SavePromptEmbedding / LoadPromptEmbedding
    Case("SavePromptEmbedding", "folder in filename", save_emb("../escape"), r"filename must be a plain file name"),
    Case("SavePromptEmbedding", "empty filename", save_emb("  "), r"filename must be a plain file name"),
    Case("SavePromptEmbedding", "NUL in filename", save_emb("a\0b"), r"filename must be a plain file name"),
    Case("SavePromptEmbedding", "NaN conditioning", save_emb(conditioning=cond(value=NAN)), r"conditioning has 1 non"),
    Case("SavePromptEmbedding", "two entries", save_emb(conditioning=cond() + cond()), r"one conditioning at a time"),
    Case("SavePromptEmbedding", "existing file", save_emb("good"),
         r"good.safetensors' already exists and holds another embedding.*overwrite"),
    Case("LoadPromptEmbedding", "NaN context", load_emb("nan.safetensors"),
         r"nan.safetensors': context has 1 non-finite.*B=0, T=2, C=7"),
    Case("LoadPromptEmbedding", "mask without tokens", load_emb("no_token.safetensors"), r"mask marks no real token"),
    Case("LoadPromptEmbedding", "mask shape", load_emb("mask_shape.safetensors"), r"mask shape \(1, 5\) must be"),
    Case("LoadPromptEmbedding", "no context", load_emb("no_context.safetensors"), r"no 'context' tensor.*Save Prompt"),
    Case("LoadPromptEmbedding", "pickle", load_emb("pickle.bin"), r"pickle.bin' is not a .safetensors file"),
    Case("LoadPromptEmbedding", "missing", load_emb("nope.safetensors"), r"'nope.safetensors' was not found in"),
    # LoadDMPLora
    Case("LoadDMPLora", "regex in adapter_config", lora("hang"),
         r"'rank_pattern' key '\(\.\|\.\)\*Z' is not a plain module name", timeout=10),
    Case("LoadDMPLora", "r a string", lora("r_string"), r"r_string/adapter_config.json': 'r' must be a positive int"),
    Case("LoadDMPLora", "rank_pattern a list", lora("pattern_list"), r"'rank_pattern' must be an object"),
    Case("LoadDMPLora", "lora_alpha NaN", lora("alpha_nan"), r"'lora_alpha' must be a finite number, got nan"),
    Case("LoadDMPLora", "metadata not JSON", lora("bad_meta"), r"'lora_adapter_metadata' of .*bad_meta.* JSON"),
    Case("LoadDMPLora", "NaN weight", lora("nan"), r"NaN/Inf weights in 1 tensor.*to_v_lora.up.weight \(1 of"),
    Case("LoadDMPLora", "int weights", lora("int"), r"holds torch.int32 values; LoRA weights are floating point"),
    Case("LoadDMPLora", "rank 0", lora("rank0"), r"has rank 0"),
    Case("LoadDMPLora", "alpha Inf", lora("alpha_inf"), r"to_q.alpha' is inf; an alpha must be a finite number"),
    Case("LoadDMPLora", "alpha vector", lora("alpha_vector"), r"to_q.alpha' must hold one number, got shape \(2,\)"),
    Case("LoadDMPLora", "strength NaN", lora("good", NAN), r"strength must be a finite number, got nan"),
    Case("LoadDMPLora", "PixArt model", lora("good", model="pixart"), r"needs an SD 1.x UNet MODEL.*not a UNet"),
    Case("LoadDMPLora", "missing", lora("nope"), r"not found in the loras model folder.*shinying/dmp"),
    # DeterministicInterpolationSampler / DMPSampler / DMPSigmas
    Case("DMPInterpolationSampler", "PixArt model", dmp(model="pixart"), r"runs SD 1.x UNet.*model is PixArtSigma"),
    Case("DMPInterpolationSampler", "empty batch", dmp(latent=torch.randn(0, 4, 8, 8)), r"latent_image is empty"),
    Case("DMPInterpolationSampler", "NaN latent", dmp(latent=with_value((1, 4, 8, 8), (0, 3, 2, 1), NAN)),
         r"latent_image has 1 non-finite.*B=0, C=3, h=2, w=1"),
    Case("DMPInterpolationSampler", "16 channels", dmp(latent=torch.randn(1, 16, 8, 8)), r"latent_image has 16 chan"),
    Case("DMPInterpolationSampler", "latent a tensor", dmp(raw_latent=torch.randn(1, 4, 8, 8)),
         r"latent_image must be a LATENT"),
    Case("DMPInterpolationSampler", "NaN positive", dmp(positive=cond(value=NAN)), r"positive has 1 non-finite"),
    Case("DMPInterpolationSampler", "T5 positive", dmp(positive=cond(width=64)),
         r"positive has 64-wide embeddings but the model takes 32"),
    Case("DMPInterpolationSampler", "Inf negative", dmp(cfg=2.0, negative=cond(value=INF)), r"negative has 1 non-fin"),
    Case("DMPInterpolationSampler", "cfg NaN", dmp(cfg=NAN), r"cfg must be a finite number"),
    Case("DMPInterpolationSampler", "variant ddpm", dmp(variant="ddpm"), r"variant must be one of.*'ddpm'"),
    Case("DMPInterpolationSampler", "NaN model weights", dmp(model="nan_model"), r"produced 512 non-finite value"),
    Case("DMPSampler", "PixArt model", sampler_custom_advanced("pixart"), r"runs SD 1.x UNet.*this MODEL is PixArtSig"),
    Case("DMPSampler", "variant euler", lambda: node("UniDense_DMPSampler").execute("euler"), r"variant must be one"),
    Case("DMPSigmas", "steps 21", lambda: node("UniDense_DMPSigmas").execute(21), r"steps must be an integer from 1"),
    # the three DMP read-outs
    Case("DMPDepthReadout", "NaN decoded", readout(DEPTH, NAN_IMAGE, 0.0), r"decoded has 1 non-finite"),
    Case("DMPDepthReadout", "target_scale NaN", readout(DEPTH, None, NAN), r"target_scale must be a finite number"),
    Case("DMPDepthReadout", "target_scale -1", readout(DEPTH, None, -1.0), r"target_scale must be at least 0"),
    Case("DMPDepthReadout", "normalize bad", readout(DEPTH, None, 0.0, True, "minmax"), r"normalize must be one of"),
    Case("DMPDepthReadout", "empty reference", readout(DEPTH, None, 0.0, True, "none", torch.rand(1, 0, 4, 3)),
         r"reference_image is 4×0 px"),
    Case("DMPNormalsReadout", "empty batch", readout(NORMALS, torch.rand(0, 8, 8, 3)), r"decoded is empty"),
    Case("DMPNormalsReadout", "Inf decoded", readout(NORMALS, INF_IMAGE), r"decoded has 1 non-finite.*Inf: 1"),
    Case("DMPImageReadout", "task depth", readout(IMAGE, None, "depth"), r"task must be one of.*'depth'"),
    Case("DMPImageReadout", "3-D reference", readout(IMAGE, None, "albedo", torch.rand(8, 8, 3)),
         r"reference_image must be an IMAGE"),
    # ProcessingResolution
    Case("ProcessingResolution", "thin strip", resolution(torch.rand(1, 8, 4096, 3), 8192, "shorter"),
         r"gives 4194304×8192 px, over the limit of 16384 px.*side 'longer'"),
    Case("ProcessingResolution", "resolution 500", resolution(res=500), r"processing_resolution must be 0 .* got 500"),
    Case("ProcessingResolution", "side middle", resolution(side="middle"), r"side must be one of.*'middle'"),
    Case("ProcessingResolution", "NaN pixel", resolution(NAN_IMAGE), r"image has 1 non-finite"),
    Case("ProcessingResolution", "0x0 image", resolution(torch.rand(1, 0, 0, 3)), r"image is empty"),
    # core functions behind the nodes
    Case("core", "classify_bin 0x0", lambda: classify_bin(0, 0), r"image is 0×0 px"),
    Case("core", "ConverterConfig 1.5 layers", lambda: ConverterConfig.from_dict({"num_layers": 1.5}),
         r"num_layers must be a positive integer, got 1.5"),
    Case("core", "peft pattern lookahead", lambda: read_peft_config({"alpha_pattern": {"(?=a)": 1}}, "cfg"),
         r"'alpha_pattern' key '\(\?=a\)' is not a plain module name"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_error(env, case):
    run_case(case)


def test_table_covers_every_node():
    nodes = {c.node for c in CASES}
    assert len(CASES) >= 40
    assert nodes >= {
        "LoadConverter",
        "ModeSwitch",
        "MergeDepthConditioning",
        "MergeDepthReadout",
        "SavePromptEmbedding",
        "LoadPromptEmbedding",
        "LoadDMPLora",
        "DMPInterpolationSampler",
        "DMPSampler",
        "DMPSigmas",
        "DMPDepthReadout",
        "DMPNormalsReadout",
        "DMPImageReadout",
        "ProcessingResolution",
    }


# ----------------------------------------------------------------------------------------------------------
# Valid inputs at the edges: every output finite (min-max of a constant map, zero normal vectors, 1×1 images)


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)
    elif hasattr(value, "args"):  # io.NodeOutput
        yield from tensors_in(value.args)


def valid_calls():
    const = torch.full((2, 8, 8, 3), 0.5)  # constant depth; normals 2·0.5 − 1 = 0 (no direction)
    one = torch.rand(1, 1, 1, 3)
    calls = {
        "MergeDepthReadout constant": merge_readout(const, "per_image", one),
        "MergeDepthReadout per_batch": merge_readout(torch.zeros(2, 1, 1, 4), "per_batch"),
        "MergeDepthConditioning native": depth_cond(torch.zeros(2, 16, 32, 4)),
        "DMPDepthReadout constant": readout(DEPTH, const, 0.0, True, "per_image", one),
        "DMPDepthReadout per_batch": readout(DEPTH, torch.zeros(2, 4, 4, 3), 8.0, False, "per_batch"),
        "DMPNormalsReadout zero vectors": readout(NORMALS, const, True, one),
        "DMPImageReadout": readout(IMAGE, torch.rand(1, 3, 5, 4), "shading", torch.rand(1, 7, 2, 3)),
        "ProcessingResolution 1x1": resolution(one, 512, "shorter"),
        "ProcessingResolution native": resolution(torch.rand(1, 3, 5, 4), 0, "longer"),
        "ProcessingResolution strip": resolution(torch.rand(1, 8, 4096, 3), 8192, "longer"),
        "DMPInterpolationSampler oracle": dmp(variant="oracle"),
        "DMPInterpolationSampler cfg": dmp(cfg=20.0, negative=cond(tokens=1)),
        "LoadPromptEmbedding": load_emb("good.safetensors"),
    }
    calls.update({f"DMPSigmas {n}": (lambda n=n: node("UniDense_DMPSigmas").execute(n)) for n in range(1, 21)})
    return calls


@pytest.mark.parametrize("name", list(valid_calls()))
def test_valid_calls_give_finite_outputs(env, name):
    out = valid_calls()[name]()
    tensors = list(tensors_in(out))
    assert tensors, name
    for t in tensors:
        assert t.numel() > 0 and torch.isfinite(t).all(), (name, tuple(t.shape))


# ----------------------------------------------------------------------------------------------------------
# Folders, files and patterns


def test_yaml_folders_list_only_loadable_files(env, tmp_path):
    """A folder first named in extra_model_paths.yaml gets an empty extension set (= every file) from ComfyUI."""
    import importlib

    fp = E["comfy"].folder_paths
    paths = importlib.import_module(node("UniDense_LoadConverter").__module__.rsplit(".", 1)[0] + ".paths")
    saved = {k: fp.folder_names_and_paths.pop(k) for k in ("merge_converters", "unidense_embeddings")}
    try:
        save_converters(tiny_converters(), tmp_path / "c" / "depth_converters")
        (tmp_path / "c" / "README.md").write_text("converters")
        (tmp_path / "e").mkdir()
        save_prompt_embedding(tmp_path / "e" / "empty.safetensors", torch.randn(1, 2, 32))
        torch.save({"context": torch.randn(1, 2, 32)}, tmp_path / "e" / "old.pt")
        fp.add_model_folder_path("merge_converters", str(tmp_path / "c"))  # what ComfyUI does for a yaml entry
        fp.add_model_folder_path("unidense_embeddings", str(tmp_path / "e"))
        assert "depth_converters/config.json" in fp.get_filename_list("merge_converters")  # the bug, before
        paths.register()
        listed = fp.get_filename_list("merge_converters") + fp.get_filename_list("unidense_embeddings")
        assert "depth_converters/diffusion_pytorch_model.safetensors" in listed and "empty.safetensors" in listed
        assert not {"depth_converters/config.json", "README.md", "old.pt"} & set(listed)
        assert fp.get_folder_paths("merge_converters")[0] == str(tmp_path / "c")  # the yaml's folder is kept
    finally:
        fp.folder_names_and_paths.update(saved)
        fp.filename_list_cache.clear()


def test_save_prompt_embedding_never_clobbers_silently(env):
    target = E["emb"] / "keep.safetensors"
    save = node("UniDense_SavePromptEmbedding")
    first, second = cond(), cond(value=0.25)
    save.execute(first, "keep", "", False)
    before = target.read_bytes()
    save.execute(first, "keep", "", False)  # the same embedding again: no error, nothing rewritten
    assert target.read_bytes() == before
    run_case(
        Case("SavePromptEmbedding", "other embedding", lambda: save.execute(second, "keep", "", False), "overwrite")
    )
    assert target.read_bytes() == before
    save.execute(second, "keep", "", True)
    assert torch.equal(load_file(target)["context"], second[0][0])


@pytest.mark.parametrize("key", ["to_q", "attn1.to_q", "transformer_blocks.0.attn1.to_q", "attn2.to_out.0", "0"])
def test_pattern_keys_match_as_peft_does_for_plain_names(key):
    """Our look-up gives peft's get_pattern_key result (first match in file order) without running the key."""
    from peft.utils.other import get_pattern_key

    names = [n for n in random_dmp_lora(tiny_sd_unet()).modules]
    table = {key: 2, "attn2.to_k": 3, "to_v": 5}
    cfg = read_peft_config({"rank_pattern": table}, "test")
    for name in names:
        peft_key = get_pattern_key(list(table), name)
        assert _pattern_value(cfg.rank_pattern, name) == table.get(peft_key), name
