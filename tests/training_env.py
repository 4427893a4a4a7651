"""Tiny model folders and data for the training, evaluation and batch-inference tests (diffusers layouts, as the
command line loads them), and a helper that runs ``accelerate launch`` with several CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

from unidense_core.io.prompt_embeddings import save_prompt_embedding
from unidense_core.merge.converters import save_converters
from unidense_core.merge.pipeline import PIXART_SCHEDULER
from unidense_core.tiny import tiny_converters, tiny_pixart, tiny_sd21_unet, tiny_sd_unet, tiny_vae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scheduler(folder, config):
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(config, f)


def pixart_folder(root, seed=0):
    """PixArt-α layout: transformer/, vae/ (tiny random AutoencoderKL), scheduler/."""
    root = str(root)
    tiny_pixart(seed).save_pretrained(os.path.join(root, "transformer"))
    tiny_vae().save_pretrained(os.path.join(root, "vae"))
    _scheduler(root, PIXART_SCHEDULER)
    return root


def sd_folder(root, sd21=False):
    """SD 1.x (tiny SD 1.x UNet) or SD 2.1-base (tiny SD2.1 UNet) layout: unet/, vae/, scheduler/."""
    root = str(root)
    (tiny_sd21_unet() if sd21 else tiny_sd_unet()).save_pretrained(os.path.join(root, "unet"))
    tiny_vae().save_pretrained(os.path.join(root, "vae"))
    _scheduler(root, dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
    return root


def empty_prompt(path, tokens=4, dim=32, mask=True):
    g = torch.Generator().manual_seed(7)
    ctx = torch.randn(1, tokens, dim, generator=g)
    m = torch.tensor([[1] + [0] * (tokens - 1)]) if mask else None
    return save_prompt_embedding(str(path), ctx, m, prompt="", encoder="random stand-in")


def converters_folder(root):
    save_converters(tiny_converters(), os.path.join(str(root), "depth_converters"))
    return str(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, num_processes=2, timeout=900):
    """``accelerate launch`` with CPU processes (gloo): ``--multi_gpu`` starts torchrun workers; ``--cpu`` in our
    command keeps them on the CPU (accelerate's own ``--cpu`` flag would need mpirun for several processes)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    cmd += ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--num_processes", "1"]
    cmd += ["-m", "unidense_core", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        tail = f"{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
        raise AssertionError(f"accelerate launch failed ({out.returncode}):\n{tail}")
    return out
