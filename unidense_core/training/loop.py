"""The training loop on Hugging Face ``accelerate``: the same code on the CPU, one GPU, several GPUs or machines
(``accelerate launch …``), with mixed precision, gradient accumulation and checkpointing, resumable checkpoints,
validation during training, a progress bar and logs.

It follows the official scripts (MERGE ``train_merge_base_depth.py``, DMP ``train.py``, both derived from diffusers'
examples): AdamW, ``diffusers.optimization.get_scheduler`` with warm-up and length × the process count (accelerate
steps a prepared scheduler once per process), gradient clipping, ``save_state`` / ``load_state`` checkpoints. A
checkpoint holds only the trainable tensors (plus optimizer, scheduler and scaler states) and the identity of the
frozen base, so resuming onto another base model is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..dense.datasets import RGBDSet
from ..evaluation.metrics import evaluate_prediction
from .data import BatchPlan, MicroBatches, TrainingSet, collate, mix_seed
from .recipe import OfficialSettings, Recipe
from .trackers import JsonlTracker, available_trackers

logger = logging.getLogger(__name__)

STATE_FORMAT = "unidense.train_state.v1"
TRAINABLE_FILE = "trainable.safetensors"
META_FILE = "unidense_state.json"


@dataclass
class TrainConfig:
    """One training run; ``from_official`` fills the method's published settings, the CLI overrides them."""

    output_dir: str
    max_steps: int
    batch_size: int  # per process
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    seed: int = 42
    flip_p: float = 0.5
    resize: tuple[int, int] | None = None  # every sample to this (H, W) (nearest-exact depth)
    mix: list[float] | None = None  # mixing probabilities of the training sets (MERGE: 0.9, 0.1)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    checkpoints_total_limit: int | None = None
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 0  # steps; 0 = only before and after training (when validation data is given)
    validation_images: int = 4
    validation_steps: int = 4  # sampling steps of the validation predictions
    num_workers: int = 0
    cpu: bool = False
    progress: bool = True
    run_name: str = "unidense"

    @classmethod
    def from_official(cls, o: OfficialSettings, output_dir: str, **overrides: Any) -> TrainConfig:
        """The published settings ``o`` (``Recipe.official``), with the non-None ``overrides`` applied."""
        base = dict(
            output_dir=output_dir,
            max_steps=o.max_steps,
            batch_size=o.batch_size,
            gradient_accumulation=o.gradient_accumulation,
            learning_rate=o.learning_rate,
            lr_scheduler=o.lr_scheduler,
            lr_warmup_steps=o.lr_warmup_steps,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            weight_decay=o.weight_decay,
            adam_epsilon=o.adam_epsilon,
            max_grad_norm=o.max_grad_norm,
            mixed_precision=o.mixed_precision,
            flip_p=o.flip_p,
            seed=o.seed,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class TrainResult:
    result_path: str
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, mean over processes
    validation: list[dict[str, float]] = field(default_factory=list)  # {"step", "val_loss", "abs_rel", "delta1"}


def find_checkpoint(output_dir: str, resume: str) -> str | None:
    """``latest`` -> the newest ``checkpoints/checkpoint-*`` (None if there is none); else the given folder."""
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, META_FILE)):
            raise FileNotFoundError(
                f"'{resume}' is not a training checkpoint (no {META_FILE}); give a checkpoint-* folder."
            )
        return resume
    root = os.path.join(output_dir, "checkpoints")
    found = sorted(d for d in os.listdir(root) if d.startswith("checkpoint-")) if os.path.isdir(root) else []
    return os.path.join(root, found[-1]) if found else None


class _StateHooks:
    """accelerate save/load pre-hooks: only the trainable tensors and the base's identity go into a checkpoint."""

    def __init__(self, recipe: Recipe, accelerator, info: dict[str, Any]):
        self.recipe, self.accelerator, self.info = recipe, accelerator, info
        self.step = 0
        self.loaded: dict[str, Any] = {}

    def save(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        weights.clear()  # accelerate would otherwise store the whole frozen base with every checkpoint
        if self.accelerator.is_main_process:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.recipe.trainable_state().items()}
            save_file(state, os.path.join(output_dir, TRAINABLE_FILE))
            meta = {"format": STATE_FORMAT, "step": self.step, **self.info, "fingerprint": self.recipe.fingerprint()}
            with open(os.path.join(output_dir, META_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)

    def load(self, models, input_dir) -> None:
        from ..io.checkpoints import load_json, load_state_dict

        models.clear()
        meta = load_json(os.path.join(input_dir, META_FILE))
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"'{input_dir}' is not a checkpoint of this trainer ({META_FILE} format differs).")
        if meta.get("recipe") != self.recipe.name:
            raise ValueError(
                f"'{input_dir}' is a {meta.get('recipe')!r} checkpoint; this run trains {self.recipe.name!r}."
            )
        mine = self.recipe.fingerprint()
        if meta.get("fingerprint") != mine:
            diff = [k for k in mine if meta.get("fingerprint", {}).get(k) != mine[k]]
            raise ValueError(
                f"The base model does not match the one checkpoint '{input_dir}' was trained on (differs in: "
                f"{', '.join(diff) or 'module list'}; checkpoint {meta.get('fingerprint')} vs now {mine}). "
                "Resume with the same base model folder, or start a new run (optionally from the saved result)."
            )
        self.recipe.load_trainable_state(load_state_dict(os.path.join(input_dir, TRAINABLE_FILE)), f"'{input_dir}'")
        for key in ("global_batch", "seed", "gradient_accumulation"):
            if meta.get(key) != self.info.get(key):
                logger.warning(
                    "Resuming with %s=%s (checkpoint: %s): the loss curve will differ.",
                    key,
                    self.info.get(key),
                    meta.get(key),
                )
        self.loaded = meta


def train(recipe: Recipe, train_sets: list[RGBDSet], cfg: TrainConfig, val_set: RGBDSet | None = None) -> TrainResult:
    """Train ``recipe`` on ``train_sets`` with accelerate; save the official-layout result under ``cfg.output_dir``.

    Seed the global RNG (``accelerate.utils.set_seed(cfg.seed)``) before building the recipe, so the random parts
    of its initialisation are the same in every process and every run.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    check_config(cfg)
    # 1. accelerate: processes, precision, accumulation, trackers (main process only).
    state = PartialState(cpu=cfg.cpu)
    logging_dir = os.path.join(cfg.output_dir, "logs")
    trackers = available_trackers(logging_dir, cfg.run_name) if state.is_main_process else []
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation,
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu,
        log_with=trackers or None,
        project_dir=cfg.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    procs, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {cfg.batch_size}.")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    # 2. Models on the device; frozen parts in the mixed-precision dtype, trainable parts in fp32.
    recipe.place(accelerator.device, weight_dtype)
    if cfg.gradient_checkpointing:
        recipe.enable_gradient_checkpointing()
    params = recipe.trainable_parameters()
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * procs,
        num_training_steps=cfg.max_steps * procs,
    )
    module, optimizer, lr_scheduler = accelerator.prepare(recipe.module, optimizer, lr_scheduler)
    global_batch = cfg.batch_size * procs
    info = {
        "recipe": recipe.name,
        "global_batch": global_batch,
        "seed": cfg.seed,
        "gradient_accumulation": cfg.gradient_accumulation,
    }
    hooks = _StateHooks(recipe, accelerator, info)
    accelerator.register_save_state_pre_hook(hooks.save)
    accelerator.register_load_state_pre_hook(hooks.load)
    # 3. Data: the deterministic plan, this process's slice of every micro-batch.
    dataset = TrainingSet(train_sets, recipe.target, cfg.flip_p, cfg.resize, recipe.size_multiple)
    plan = BatchPlan([len(s) for s in train_sets], global_batch, cfg.seed, cfg.mix)
    # 4. Resume.
    start = 0
    if cfg.resume:
        path = find_checkpoint(cfg.output_dir, cfg.resume)
        if path is None:
            logger.info("No checkpoint in '%s'; starting a new run.", cfg.output_dir)
        else:
            accelerator.load_state(path)
            start = int(hooks.loaded["step"])
            logger.info("Resumed from '%s' at step %d.", path, start)
    if accelerator.is_main_process:
        accelerator.init_trackers(
            cfg.run_name,
            config={
                **{k: v for k, v in asdict(cfg).items() if not isinstance(v, (list, tuple)) or k == "mix"},
                **info,
                "processes": procs,
                "trainable_parameters": recipe.trainable_count(),
                "frozen_parameters": recipe.frozen_count(),
                **{f"recipe_{k}": v for k, v in recipe.describe().items()},
            },
        )
        for t in accelerator.trackers:
            if isinstance(t, JsonlTracker):
                t.truncate(start)  # a resumed run logs the steps after its checkpoint again
    result = TrainResult(os.path.join(cfg.output_dir, recipe.result_name), start)
    validator = _Validator(recipe, val_set, cfg, accelerator) if val_set is not None else None
    if validator and start == 0:
        result.validation.append(validator.run(0))
    # 5. The loop: micro-batches of this process, accumulation, one optimizer step per `gradient_accumulation`.
    accum = cfg.gradient_accumulation
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=MicroBatches(plan, start * accum, cfg.max_steps * accum, rank, procs),
        collate_fn=collate,
        num_workers=cfg.num_workers,
    )
    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc=f"train {recipe.name}",
        disable=not (cfg.progress and accelerator.is_local_main_process),
    )
    step, micro_losses = start, []
    module.train()
    for batch in loader:
        with accelerator.accumulate(module):
            loss = module(**recipe.inputs(batch, accelerator.device))
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        micro_losses.append(float(accelerator.gather(loss.detach().float()[None]).mean()))
        if not accelerator.sync_gradients:
            continue
        step += 1
        step_loss = float(np.mean(micro_losses))
        micro_losses = []
        if not math.isfinite(step_loss):
            raise RuntimeError(
                f"The loss became {step_loss} at step {step}; lower the learning rate or check the data."
            )
        result.losses.append(step_loss)
        lr = lr_scheduler.get_last_lr()[0]
        accelerator.log({"loss": step_loss, "lr": lr}, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            save_checkpoint(accelerator, hooks, cfg, step)
        if validator and cfg.validate_every and step % cfg.validate_every == 0 and step < cfg.max_steps:
            result.validation.append(validator.run(step))
    bar.close()
    # 6. The end: a last checkpoint, the result in the official layout, the last validation.
    result.steps = step
    if step > start:
        save_checkpoint(accelerator, hooks, cfg, step)
    if validator and (not result.validation or result.validation[-1]["step"] != step):
        result.validation.append(validator.run(step))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.result_path = recipe.save(cfg.output_dir)
        recipe.place(accelerator.device, weight_dtype)
        with open(os.path.join(cfg.output_dir, "training_summary.json"), "w", encoding="utf-8") as f:
            json.dump({**asdict(result), "trainable_parameters": recipe.trainable_count()}, f, indent=2)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def save_checkpoint(accelerator, hooks: _StateHooks, cfg: TrainConfig, step: int) -> str:
    """``accelerator.save_state`` into ``checkpoints/checkpoint-<step>``, keeping at most the configured number."""
    root = os.path.join(cfg.output_dir, "checkpoints")
    path = os.path.join(root, f"checkpoint-{step:07d}")
    hooks.step = step
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and cfg.checkpoints_total_limit and os.path.isdir(root):
        old = sorted(d for d in os.listdir(root) if d.startswith("checkpoint-"))
        for d in old[: max(0, len(old) - cfg.checkpoints_total_limit + 1)]:
            shutil.rmtree(os.path.join(root, d))
    accelerator.save_state(path)
    accelerator.wait_for_everyone()
    return path


def check_config(cfg: TrainConfig) -> None:
    """Clear errors for settings that cannot work, before any model is touched."""
    if cfg.max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {cfg.max_steps}.")
    if cfg.gradient_accumulation < 1:
        raise ValueError(f"gradient_accumulation must be at least 1, got {cfg.gradient_accumulation}.")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {cfg.mixed_precision!r}.")
    if not cfg.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {cfg.learning_rate}.")
    if not 0.0 <= cfg.flip_p <= 1.0:
        raise ValueError(f"flip_p must be a probability, got {cfg.flip_p}.")


class _Validator:
    """Validation during training (main process): a deterministic loss on held-out pairs and predictions scored
    with the evaluation protocol (AbsRel, δ1 after least-squares alignment in the recipe's prediction space)."""

    def __init__(self, recipe: Recipe, val_set: RGBDSet, cfg: TrainConfig, accelerator):
        self.recipe, self.cfg, self.accelerator = recipe, cfg, accelerator
        n = min(len(val_set), max(1, cfg.validation_images))
        self.set = val_set
        self.data = TrainingSet([val_set], recipe.target, 0.0, cfg.resize, recipe.size_multiple)
        self.samples = [self.data[_Planned(i, mix_seed(cfg.seed, 9, i))] for i in range(n)]
        self.space = "least_square_disparity" if recipe.prediction_kind == "disparity" else "least_square"

    @torch.no_grad()
    def run(self, step: int) -> dict[str, float]:
        acc = self.accelerator
        out = {"step": step}
        if acc.is_main_process:
            with acc.autocast():
                out.update(self._measure(step))
            acc.log({f"val/{k}": v for k, v in out.items() if k != "step"}, step=step)
        acc.wait_for_everyone()
        return out

    def _measure(self, step: int) -> dict[str, float]:
        acc, layout = self.accelerator, self.set.layout
        losses = [float(self.recipe.module(**self.recipe.inputs(collate([s]), acc.device))) for s in self.samples]
        metrics = []
        for j, s in enumerate(self.samples):
            image = ((s["rgb"] + 1) / 2).clamp(0, 1)[None].to(acc.device)
            pred = self.recipe.predict(image, self.cfg.validation_steps, seed=self.cfg.seed + j)[0].float().cpu()
            gt, valid = self._ground_truth(j)
            m, _ = evaluate_prediction(pred.numpy(), gt, valid, layout.min_depth, layout.max_depth, self.space)
            metrics.append(m)
            self._save_image(step, s["name"], pred)
        return {
            "val_loss": float(np.mean(losses)),
            "abs_rel": float(np.mean([m["abs_relative_difference"] for m in metrics])),
            "delta1": float(np.mean([m["delta1_acc"] for m in metrics])),
        }

    def _ground_truth(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Depth and validity at the size the model saw (resized nearest-exact like the training rasters)."""
        from .data import resize

        s = self.set.read(index)
        size = self.set.layout.resize_to or self.cfg.resize
        if size is None or tuple(size) == s.depth.shape:
            return s.depth, s.valid
        d = resize(torch.from_numpy(s.depth)[None], size, "nearest-exact")[0].numpy()
        v = resize(torch.from_numpy(s.valid).float()[None], size, "nearest-exact")[0].numpy() > 0.5
        return d, v

    def _save_image(self, step: int, name: str, pred: torch.Tensor) -> None:
        from PIL import Image

        folder = os.path.join(self.cfg.output_dir, "validation", f"step-{step:07d}")
        os.makedirs(folder, exist_ok=True)
        p = pred.numpy()
        lo, hi = float(p.min()), float(p.max())
        unit = (p - lo) / max(hi - lo, 1e-8)
        if self.recipe.prediction_kind == "depth":
            unit = 1 - unit  # near = white
        stem = os.path.splitext(name.replace(os.sep, "_"))[0]
        Image.fromarray((unit * 255).round().astype(np.uint8)).save(os.path.join(folder, stem + ".png"))


@dataclass(frozen=True)
class _Planned:
    """A validation sample: pair ``index`` of the (single) validation set with a fixed seed, no flip."""

    index: int
    seed: int
    source: int = 0
    position: int = 0
