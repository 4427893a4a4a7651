"""Standalone DMP pipeline against the official ``Pipeline.__call__`` rebuilt from plain diffusers/torchvision pieces,
on a tiny SD 1.x folder and an official-layout LoRA folder written to disk."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as ttf
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from unidense_core.dense.outputs import METRIC_DEPTH, RELATIVE_DEPTH
from unidense_core.dmp.lora import save_lora_attn_procs
from unidense_core.dmp.pipeline import DMPPipeline, official_size
from unidense_core.io.checkpoints import CheckpointError
from unidense_core.tiny import random_dmp_lora, tiny_sd_unet, write_sd_folder

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 64  # processing resolution of the tests (official 512): latents of 8×11


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmp")
    unet = tiny_sd_unet()
    write_sd_folder(str(root / "sd14"), unet=unet)
    save_lora_attn_procs(random_dmp_lora(unet, scale=0.3), str(root / "depth-notext"))
    return {"sd14": str(root / "sd14"), "lora": str(root / "depth-notext")}


@pytest.fixture(scope="module")
def pipe(folders):
    return DMPPipeline.from_folders(folders["sd14"], folders["lora"])


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((80, 112, 3)) * 255).astype(np.uint8))  # 112×80: resized to 89×64


class Official:
    """shinying/dmp ``Pipeline`` (prepare_infer + __call__), with the LoRA as its LoRAAttnProcessor computes it
    (out = W·h + up(down(h)), scale 1) read from the raw file, and torchvision's resize as the official code."""

    def __init__(self, folders):
        sd = folders["sd14"]
        self.unet = UNet2DConditionModel.from_pretrained(f"{sd}/unet").eval()
        raw = load_file(f"{folders['lora']}/pytorch_lora_weights.safetensors")
        for name, mod in self.unet.named_modules():
            for proj, key in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out")):
                if not name.endswith(f".{proj}"):
                    continue
                base = name[: -len(proj) - 1]
                down, up = (
                    raw[f"{base}.processor.{key}_lora.down.weight"],
                    raw[f"{base}.processor.{key}_lora.up.weight"],
                )
                mod.register_forward_hook(lambda m, a, o, d=down, u=up: o + F.linear(F.linear(a[0], d), u))
        self.vae = AutoencoderKL.from_pretrained(f"{sd}/vae").eval()
        self.text_encoder = CLIPTextModel.from_pretrained(f"{sd}/text_encoder").eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(f"{sd}/tokenizer")
        self.scheduler = DDIMScheduler.from_pretrained(sd, subfolder="scheduler")
        self.scheduler.register_to_config(prediction_type="v_prediction")
        self.uncond = self.embed("")

    def embed(self, text):
        ids = self.tokenizer([text], padding="max_length", max_length=self.tokenizer.model_max_length).input_ids
        return self.text_encoder(torch.tensor(ids))[0]

    @torch.no_grad()
    def __call__(self, img, steps, target_mode, seed, caption=None, guidance=2.0, oracle=False):
        src = ttf.normalize(ttf.to_tensor(img), mean=0.5, std=0.5)
        src = ttf.resize(src, RES, interpolation=ttf.InterpolationMode.BICUBIC, antialias=False)[None]
        latents = self.vae.encode(src).latent_dist.sample(torch.Generator().manual_seed(seed)) * 0.18215
        src_latents = latents
        self.scheduler.set_timesteps(steps)
        cond = None if caption is None else torch.cat([self.embed(caption), self.uncond])
        for t in self.scheduler.timesteps:
            if cond is None:
                v = self.unet(latents, t, encoder_hidden_states=self.uncond).sample
            else:
                v, v_u = self.unet(latents.repeat(2, 1, 1, 1), t, encoder_hidden_states=cond).sample.chunk(2)
                v = v_u + guidance * (v - v_u)
            if not oracle:
                latents = self.scheduler.step(v, t, latents).prev_sample
                continue
            # ddim.py's oracle step: pred_epsilon := src_latents
            prev = t - self.scheduler.config.num_train_timesteps // steps
            a = self.scheduler.alphas_cumprod[t]
            a_prev = self.scheduler.alphas_cumprod[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod
            x0 = a**0.5 * latents - (1 - a) ** 0.5 * v
            latents = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * src_latents
        imgs = self.vae.decode(latents / 0.18215).sample
        w, h = img.size
        if target_mode == "F":  # decode_latents(target_scale=1), resize back, then the demo's min-max
            d = (imgs.float().mean(dim=1) / 2 + 0.5).clamp(min=0)
            d = ttf.resize(d, (h, w), interpolation=ttf.InterpolationMode.BICUBIC, antialias=False)
            return d, (d - d.amin(dim=(1, 2), keepdim=True)) / (d.amax(dim=(1, 2)) - d.amin(dim=(1, 2)))[:, None, None]
        return (imgs / 2 + 0.5).clamp(0, 1), latents  # before the official uint8 rounding


@pytest.fixture(scope="module")
def official(folders):
    return Official(folders)


@pytest.mark.parametrize("variant", ["standard", "oracle"])
@pytest.mark.parametrize("caption", [None, "a cat"])
def test_depth_matches_the_official_call(pipe, official, image, variant, caption):
    ours = pipe(
        image, "depth", 5, variant, caption, processing_resolution=RES, generator=torch.Generator().manual_seed(3)
    )
    raw, ref = official(image, 5, "F", seed=3, caption=caption, oracle=variant == "oracle")
    assert ours.depth.shape == (1, 80, 112) and ours.depth_kind == RELATIVE_DEPTH
    torch.testing.assert_close(ours.depth, ref, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(3)
    metric = pipe(image, "depth", 5, variant, caption, processing_resolution=RES, target_scale=8.0, generator=g)
    assert metric.depth_kind == METRIC_DEPTH and metric.depth_range == 8.0
    torch.testing.assert_close(metric.depth, raw * 8, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["standard", "oracle"])
def test_normals_match_the_official_rgb_read_out(pipe, official, variant):
    # 64×96: the shorter side is already RES and the size a multiple of 8, so the official run resizes nothing
    img = Image.fromarray((np.random.default_rng(1).random((64, 96, 3)) * 255).astype(np.uint8))
    ours = pipe(img, "normals", 5, variant, processing_resolution=RES, generator=torch.Generator().manual_seed(4))
    ref, _ = official(img, 5, "RGB", seed=4, oracle=variant == "oracle")
    torch.testing.assert_close(ours.image, ref, rtol=0, atol=1e-5)
    n = ref * 2 - 1
    torch.testing.assert_close(ours.normals, n / n.norm(dim=1, keepdim=True), rtol=0, atol=1e-4)
    plain = pipe(img, "image", 5, variant, processing_resolution=RES, generator=torch.Generator().manual_seed(4))
    assert plain.normals is None and torch.equal(plain.image, ours.image)


def test_image_latents_fix_the_run(pipe, image):
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = pipe(image, processing_resolution=RES, generator=g())
    assert torch.equal(a.depth, pipe(image, processing_resolution=RES, generator=g()).depth)  # same inputs
    x = F.interpolate(ttf.to_tensor(image)[None] * 2 - 1, official_size(80, 112, RES), mode="bicubic")
    z_x = pipe.encode_image(x, g())
    seen = []
    b = pipe(image, image_latents=z_x, callback=lambda i, t, z: seen.append((i, t, z)))
    assert torch.equal(b.depth, a.depth) and torch.equal(b.latents, a.latents)  # the given latent is the start
    assert [t for _, t, _ in seen] == [801, 601, 401, 201, 1]
    c = pipe(image, image_latents=z_x + 0.1)
    assert (c.depth - a.depth).abs().max() > 1e-3


def test_official_resize_rule():
    assert official_size(480, 640) == (512, 682)  # torchvision: int(512·640/480) = 682, not a multiple of 8
    assert official_size(1000, 500) == (1024, 512) and official_size(30, 50, 0) == (30, 50)


def test_bad_inputs_and_missing_files(pipe, folders, image, tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        pipe(image, task="albedo")
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 20"):
        pipe(image, num_inference_steps=0)
    with pytest.raises(ValueError, match="Give `image`"):
        pipe()
    with pytest.raises(CheckpointError, match="DMP LoRA not found: .*github.com/shinying/dmp"):
        DMPPipeline.from_folders(folders["sd14"], str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match=r"Missing '.*empty/unet'.*CompVis/stable-diffusion-v1-4"):
        (tmp_path / "empty").mkdir()
        DMPPipeline.from_folders(str(tmp_path / "empty"), folders["lora"])
