"""Small training runs of the three recipes on synthetic RGB-D scenes with exact depth (tiny frozen bases, CPU):
training lowers the validation loss and improves AbsRel over the untrained converters / LoRA / branch, and the
saved result, in the official layout, loads in the real ComfyUI nodes and predicts what the model predicted at
the end of training.

The VAE is a linear 8×8 block autoencoder (``tiny.BlockAutoencoder``): a random AutoencoderKL would decode noise,
so AbsRel would measure the decoder instead of what was trained. Learning rates are higher than the official
1e-4 so that a few hundred steps on a random tiny base show the effect.
"""

import copy
import os

import pytest
import torch

from unidense_core.dense.datasets import RGBDSet
from unidense_core.tiny import TINY_PIXART, TINY_SD21_UNET, TINY_SD_UNET, BlockAutoencoder, randomize_
from unidense_core.training.loop import TrainConfig, train
from unidense_core.training.prompts import PromptBank
from unidense_core.training.synthetic import write_scene_folder

pytestmark = pytest.mark.usefixtures("one_thread")

# method -> (steps, learning rate, batch, sampling steps of the validation predictions, image side)
RUNS = {"merge": (150, 3e-3, 16, 10, 32), "dmp": (100, 1e-2, 8, 5, 64), "jointnet": (125, 3e-3, 16, 10, 32)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_runs")
    for side in (32, 64):  # the SD 1.x layout needs 64 px (latent 8, three downsamplings)
        write_scene_folder(root / f"train{side}", 32, side, side, seed=0)  # every third scene has a hole
        write_scene_folder(root / f"val{side}", 4, side, side, seed=1, holes=False)
    return root


def context(tokens=5):
    return torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(0))


def build(method):
    """(recipe, the untouched base for ComfyUI) for ``method`` on tiny random bases built from configs."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    vae = BlockAutoencoder()
    if method == "merge":
        from unidense_core.training.merge_recipe import MergeRecipe

        base = randomize_(PixArtTransformer2DModel(**TINY_PIXART), 0, 0.02)
        ctx = context(3)
        return MergeRecipe(base, vae, (ctx, torch.ones(1, 3, dtype=torch.long))), copy.deepcopy(base)
    if method == "dmp":
        from unidense_core.training.dmp_recipe import DMPRecipe

        unet = randomize_(UNet2DConditionModel(**TINY_SD_UNET), 3, 0.05)
        base = copy.deepcopy(unet)
        return DMPRecipe(unet, vae, PromptBank(context()), target_scale=-1), base
    from unidense_core.jointnet.train import jointnet_from_unet
    from unidense_core.training.jointnet_recipe import JointNetRecipe

    unet = randomize_(UNet2DConditionModel(**TINY_SD21_UNET), 0, 0.05)
    return JointNetRecipe(jointnet_from_unet(unet), vae, PromptBank(context()), inpaint=True), None


@pytest.fixture(scope="module")
def runs(data):
    from accelerate.state import AcceleratorState, GradientState

    done = {}

    def get(method):
        if method not in done:
            steps, lr, batch, sampling, side = RUNS[method]
            recipe, base = build(method)
            cfg = TrainConfig(
                str(data / method), steps, batch, learning_rate=lr, seed=0, validation_steps=sampling, cpu=True,
                progress=False, num_workers=0,
            )  # fmt: skip
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            sets = [RGBDSet("folder", str(data / f"train{side}"))]
            result = train(recipe, sets, cfg, RGBDSet("folder", str(data / f"val{side}")))
            done[method] = (recipe, base, result)
        return done[method]

    return get


@pytest.mark.parametrize("method", list(RUNS))
def test_training_lowers_validation_loss_and_improves_abs_rel(runs, method):
    recipe, _base, result = runs(method)
    before, after = result.validation[0], result.validation[-1]
    assert before["step"] == 0 and after["step"] == RUNS[method][0]
    assert after["val_loss"] < 0.95 * before["val_loss"], result.validation
    assert after["abs_rel"] < before["abs_rel"] - 1.0, result.validation  # AbsRel ×100 (%): 1 point or more
    assert os.path.isdir(result.result_path)


# ----------------------------------------------------------------------------------------------------------
# The saved results in the real ComfyUI nodes


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_merge_converters_load_in_comfyui_and_predict_as_at_the_end_of_training(comfy, runs):
    from comfy_tiny import comfy_pixart_from_diffusers

    from unidense_core.merge.forward import MergePixArtTransformer

    recipe, base, result = runs("merge")
    assert all(torch.equal(v, recipe.transformer.state_dict()[k]) for k, v in base.state_dict().items())  # frozen
    comfy.folder_paths.add_model_folder_path("merge_converters", os.path.dirname(result.result_path), is_default=True)
    file = "depth_converters/diffusion_pytorch_model.safetensors"
    handle = comfy.node("UniDense_LoadConverter").execute(file, "fp32")[0]
    trained = recipe.converters.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in handle.patcher.model.state_dict().items())
    model = comfy.node("UniDense_ModeSwitch").execute(
        comfy_pixart_from_diffusers(comfy, base), handle, "depth", "pixart_alpha"
    )[0]
    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(5)
    z_t, z_img, ctx = (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 4, 8, 8, generator=g),
        context(3).expand(2, -1, -1),
    )
    t = torch.tensor([900.0, 120.0])
    with torch.no_grad():
        ours = model.model.diffusion_model(torch.cat([z_t, z_img], 1), t, ctx)
        ref = MergePixArtTransformer(recipe.transformer, recipe.converters)(
            z_t, t, ctx, mode="depth", image_latent=z_img
        )
    torch.testing.assert_close(ours, ref[:, :4], rtol=1e-4, atol=1e-4)


def test_dmp_lora_loads_in_comfyui_and_predicts_as_at_the_end_of_training(comfy, runs):
    from comfy_tiny import comfy_sd15_from_diffusers

    from unidense_core.dmp.sampler import sample_dmp, unet_velocity_fn

    recipe, base, result = runs("dmp")
    comfy.folder_paths.add_model_folder_path("loras", os.path.dirname(result.result_path), is_default=True)
    model = comfy.node("UniDense_LoadDMPLora").execute(
        comfy_sd15_from_diffusers(comfy, base), "lora/pytorch_lora_weights.safetensors", 1.0
    )[0]
    image_raw = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))  # what VAEEncode returns
    node = comfy.node("UniDense_DeterministicInterpolationSampler")
    ours = node.execute(model, [[context(), {}]], {"samples": image_raw}, 5, "standard", 1.0, None)[0]["samples"]
    recipe.unet.eval()
    ref = sample_dmp(unet_velocity_fn(recipe.unet, context()), image_raw * 0.18215, 5) / 0.18215
    untrained = sample_dmp(unet_velocity_fn(base, context()), image_raw * 0.18215, 5) / 0.18215
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(untrained, ref) > 100 * rel_err(ours, ref)  # the trained LoRA matters far above the tolerance


def test_jointnet_branch_loads_in_comfyui_and_predicts_as_at_the_end_of_training(comfy, runs):
    import comfy.patcher_extension as pe

    from unidense_core.jointnet.train import training_masked_condition

    recipe, _base, result = runs("jointnet")
    comfy.folder_paths.add_model_folder_path("jointnet", os.path.dirname(result.result_path), is_default=True)
    model = comfy.node("UniDense_JointNetLoader").execute(os.path.basename(result.result_path), "fp32")[0]
    comfy.model_management.load_models_gpu([model, *model.get_nested_additional_models()])
    g = torch.Generator().manual_seed(7)
    x, ctx, t = torch.randn(2, 8, 8, 8, generator=g), context().expand(2, -1, -1), torch.tensor([700.0, 40.0])
    masked = training_masked_condition(["rgb2j", "j2rgb"], torch.randn(2, 4, 8, 8, generator=g), x[:, 4:])
    with torch.no_grad():
        options = {"wrappers": pe.copy_nested_dicts(model.wrappers)}
        ours = model.model.diffusion_model(torch.cat([x, masked], 1), t, context=ctx, transformer_options=options)
        recipe.model.eval()
        ref = recipe.model(x, t, ctx, masked)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert recipe.model.depth.exchange.jointnet_masked_latent_conv.weight.abs().sum() > 0  # trained from zero
