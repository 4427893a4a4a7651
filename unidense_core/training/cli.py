"""``python -m unidense_core train merge|dmp|jointnet …`` — the same command on the CPU, one GPU or many:

    accelerate launch -m unidense_core train merge --pixart PixArt-XL-2-512x512 \\
        --data hypersim /data/hypersim/train data_split/hypersim/filename_list_train_filtered.txt \\
        --data vkitti /data/vkitti data_split/vkitti/vkitti_train.txt --mix 0.9 0.1 --output runs/merge

Every option defaults to the method's official setting (shown in ``--help``); ``--resume latest`` continues.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .recipe import OfficialSettings

DATA_HELP = (
    "KIND ROOT [SPLIT]: 'folder ROOT' (rgb/ + depth/ pairs), or a Marigold layout with its split file: "
    "hypersim, vkitti (training), nyu, kitti, eth3d, scannet, diode. Repeat for several sets (see --mix)."
)


def _official_help(o: OfficialSettings) -> dict[str, str]:
    return {
        "max_steps": f"optimizer steps (official {o.max_steps})",
        "batch_size": f"per process (official {o.batch_size} × {o.processes} processes)",
        "lr": f"learning rate (official {o.learning_rate:g})",
        "lr_scheduler": f"diffusers get_scheduler name (official {o.lr_scheduler})",
        "warmup": f"warm-up steps (official {o.lr_warmup_steps})",
        "mixed_precision": f"no | fp16 | bf16 (official {o.mixed_precision}; use 'no' on the CPU)",
        "flip_p": f"horizontal flip probability (official {o.flip_p:g})",
    }


def _add_common(p: argparse.ArgumentParser, o: OfficialSettings) -> None:
    h = _official_help(o)
    p.add_argument("--data", nargs="+", action="append", required=True, metavar="ARG", help=DATA_HELP)
    p.add_argument("--mix", nargs="+", type=float, help="mixing probability per --data set (MERGE: 0.9 0.1)")
    p.add_argument("--val-data", nargs="+", metavar="ARG", help="validation set, same syntax as --data")
    p.add_argument("--output", required=True, help="run folder: checkpoints/, logs/, validation/ and the result")
    p.add_argument("--png-scale", type=float, default=1000.0, help="plain folders: 16-bit PNG units per metre")
    p.add_argument("--min-depth", type=float, default=0.0, help="plain folders: valid depth is > this (m)")
    p.add_argument("--max-depth", type=float, default=math.inf, help="plain folders: valid depth is < this (m)")
    p.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"), help="resize every sample (nearest-exact depth)")
    p.add_argument("--max-steps", type=int, help=h["max_steps"])
    p.add_argument("--batch-size", type=int, help=h["batch_size"])
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, help=h["lr"])
    p.add_argument("--lr-scheduler", help=h["lr_scheduler"])
    p.add_argument("--warmup", type=int, help=h["warmup"])
    p.add_argument("--adam-epsilon", type=float, help=f"AdamW eps (official {o.adam_epsilon:g})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (official {o.weight_decay:g})")
    p.add_argument("--max-grad-norm", type=float, help=f"gradient clipping, 0 = off (official {o.max_grad_norm:g})")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help=h["mixed_precision"])
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--seed", type=int, help=f"seed of the initialisation and of every sample (official {o.seed})")
    p.add_argument("--flip-p", type=float, help=h["flip_p"])
    p.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    p.add_argument("--checkpoints-total-limit", type=int, help="keep at most this many checkpoints")
    p.add_argument("--resume", help="'latest' or a checkpoints/checkpoint-* folder")
    p.add_argument("--validate-every", type=int, default=0, help="validate every N steps (and before/after)")
    p.add_argument("--validation-images", type=int, default=4, help="validation pairs to predict and score")
    p.add_argument("--validation-steps", type=int, default=0, help="sampling steps for validation (0: official)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes per training process")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixart", required=True, help="local diffusers folder of PixArt-XL-2-512x512")
    p.add_argument("--empty-prompt", help="saved T5 embedding of '' (else T5 is loaded once to make it)")
    p.add_argument("--save-empty-prompt", help="write the empty prompt's T5 embedding here for next time")
    p.add_argument("--init-converters", help="start from these converters (fine-tuning) instead of the base init")
    p.add_argument(
        "--no-multi-res-noise", action="store_true", help="plain Gaussian noise (official: annealed multi-res)"
    )


def _build_merge(a: argparse.Namespace):
    from .merge_recipe import MergeRecipe

    return MergeRecipe.from_folders(
        a.pixart, a.empty_prompt, a.init_converters, a.save_empty_prompt, multi_res=not a.no_multi_res_noise
    )


def _dmp(p: argparse.ArgumentParser) -> None:
    from ..dmp.train import OFFICIAL_RANK, TARGET_SCALE

    p.add_argument("--sd", required=True, help="local diffusers folder of CompVis/stable-diffusion-v1-4")
    p.add_argument("--empty-prompt", help="saved CLIP embedding of '' (else CLIP is loaded)")
    p.add_argument("--init-lora", help="continue from this LoRA (official folder or file)")
    p.add_argument(
        "--target-scale", type=float, default=TARGET_SCALE, help="metres mapped to 1 (official 8; -1: min-max)"
    )
    p.add_argument("--rank", type=int, default=OFFICIAL_RANK, help="LoRA rank (official 4)")
    p.add_argument("--self-attn-only", action="store_true", help="LoRA on attn1 only (official: attn1 and attn2)")


def _build_dmp(a: argparse.Namespace):
    from .dmp_recipe import DMPRecipe

    return DMPRecipe.from_folders(a.sd, a.empty_prompt, a.target_scale, a.rank, a.self_attn_only, a.init_lora)


def _jointnet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sd21", required=True, help="local diffusers folder of stable-diffusion-2-1-base")
    p.add_argument("--empty-prompt", help="saved CLIP embedding of '' (only without captions)")
    p.add_argument("--init-jointnet", help="continue from a JointNet folder (unet/ + jointnet/)")
    p.add_argument("--stage", type=int, default=1, choices=(1, 2), help="1: RGB UNet frozen (paper); 2: all train")
    p.add_argument("--text-dropout", type=float, help="probability of the empty prompt (paper: 0.15 / 0.5)")
    p.add_argument("--noise-offset", type=float, default=0.05, help="noise offset (paper 0.05)")
    p.add_argument("--inpaint", action="store_true", help="train the inpainting model (image->depth, depth->image)")


def _build_jointnet(a: argparse.Namespace):
    from .jointnet_recipe import JointNetRecipe

    return JointNetRecipe.from_folders(
        a.sd21, a.empty_prompt, a.init_jointnet, a.stage, a.text_dropout, a.noise_offset, a.inpaint
    )


def _recipes() -> dict[str, tuple[str, Callable, Callable, type]]:
    """name -> (title, add its options, build it from the options, recipe class). MERGE-L goes here too."""
    from .dmp_recipe import DMPRecipe
    from .jointnet_recipe import JointNetRecipe
    from .merge_recipe import MergeRecipe

    return {
        "merge": ("MERGE-B converters on a frozen PixArt-α", _merge, _build_merge, MergeRecipe),
        "dmp": ("a DMP LoRA on a frozen SD 1.x UNet", _dmp, _build_dmp, DMPRecipe),
        "jointnet": ("JointNet's depth branch on a frozen SD 2.1 UNet", _jointnet, _build_jointnet, JointNetRecipe),
    }


def add_cli(subparsers) -> None:
    """Register ``train`` with one sub-command per method."""
    train = subparsers.add_parser(
        "train",
        help="train MERGE converters, a DMP LoRA or JointNet's depth branch (accelerate)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    methods = train.add_subparsers(dest="method", required=True)
    for name, (title, add, _build, cls) in _recipes().items():
        p = methods.add_parser(name, help=title, description=f"Train {title}. Defaults: the official recipe.")
        add(p)
        _add_common(p, cls.official)
        p.set_defaults(run=run)


def parse_dataset(args: list[str], a: argparse.Namespace, option: str = "--data"):
    """``KIND ROOT [SPLIT]`` -> an :class:`RGBDSet` (plain folders: image/depth sizes checked up front)."""
    from ..dense.datasets import FOLDER, RGBDSet

    if not 2 <= len(args) <= 3:
        raise ValueError(f"{option} takes KIND ROOT [SPLIT], got {' '.join(args)!r}. {DATA_HELP}")
    kind, root, split = args[0], args[1], args[2] if len(args) == 3 else None
    s = RGBDSet(kind, root, split, png_scale=a.png_scale, min_depth=a.min_depth, max_depth=a.max_depth)
    if kind == FOLDER:
        s.check_sizes()
    return s


def run(a: argparse.Namespace) -> int:
    from accelerate.utils import set_seed

    from .loop import TrainConfig, train

    _title, _add, build, cls = _recipes()[a.method]
    sets = [parse_dataset(d, a) for d in a.data]
    val = parse_dataset(a.val_data, a, "--val-data") if a.val_data else None
    cfg = TrainConfig.from_official(
        cls.official,
        a.output,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        gradient_accumulation=a.grad_accum,
        learning_rate=a.lr,
        lr_scheduler=a.lr_scheduler,
        lr_warmup_steps=a.warmup,
        adam_epsilon=a.adam_epsilon,
        weight_decay=a.weight_decay,
        max_grad_norm=a.max_grad_norm,
        mixed_precision=a.mixed_precision,
        gradient_checkpointing=a.gradient_checkpointing or None,
        seed=a.seed,
        flip_p=a.flip_p,
        resize=tuple(a.resize) if a.resize else None,
        mix=a.mix,
        checkpoint_every=a.checkpoint_every,
        checkpoints_total_limit=a.checkpoints_total_limit,
        resume=a.resume,
        validate_every=a.validate_every,
        validation_images=a.validation_images,
        validation_steps=a.validation_steps or cls.inference_steps,
        num_workers=a.num_workers,
        cpu=a.cpu or None,
        progress=not a.no_progress,
        run_name=f"unidense-{a.method}",
    )
    set_seed(cfg.seed)  # the recipe's random initialisation must be the same in every process and run
    result = train(build(a), sets, cfg, val)
    print(f"trained {result.steps} steps; result: {result.result_path}")
    for v in result.validation:
        print("validation", {k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()})
    return 0
