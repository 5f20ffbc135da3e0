"""Where and how code runs: device choice, precision, loader workers, seeding.

Shared by training, evaluation and the benchmark so all three run a model the same way.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from src.cli import UserError
from src.params import RuntimeParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compile: bool          # torch.compile the model for training
    gpu_augment: bool      # crop/flip/cutout on the training device instead of loader workers
    workers: int           # DataLoader worker processes
    channels_last: bool    # NHWC memory layout: faster convolutions on tensor cores
    amp_dtype: torch.dtype | None  # autocast dtype, None for full fp32

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return (f"{name}, {'bf16' if self.amp_dtype else 'fp32'}, compile={self.compile}, "
                f"gpu_augment={self.gpu_augment}, workers={self.workers}")


def resolve(params: RuntimeParams) -> Runtime:
    device = _pick_device(params.device)
    cuda = device.type == "cuda"
    if params.deterministic and cuda:
        # cuBLAS needs this for deterministic matmuls; must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_ = cuda if params.compile == "auto" else params.compile
    if compile_ and device.type == "cpu":
        # Inductor lays CPU convolutions out channels_last, and torch 2.14.1's oneDNN hangs or
        # corrupts memory in the channels_last weight gradient of a 1x1 stride-2 convolution
        # (every downsample) on AVX2-only CPUs (jit_avx2_1x1_convolution_bwd_weights; seen on
        # an AMD EPYC). Keep them NCHW, as eager CPU training does.
        import torch._inductor.config
        torch._inductor.config.layout_optimization = False
    return Runtime(
        device=device,
        compile=compile_,
        # true also holds off a GPU: the same on-device path then runs on the CPU (tests use it).
        gpu_augment=cuda if params.gpu_augment == "auto" else params.gpu_augment,
        workers=default_workers() if params.workers == "auto" else params.workers,
        channels_last=cuda,
        amp_dtype=torch.bfloat16 if cuda else None,
    )


def _pick_device(choice: str) -> torch.device:
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if choice == "auto":
        choice = next(name for name, ok in available.items() if ok)
    elif not available[choice]:
        raise UserError(f"runtime.device = {choice!r} but no {choice} device is available here: "
                        "use `-S runtime.device=auto` (cuda, then mps, then cpu)")
    return torch.device(choice)


def default_workers() -> int:
    """One core stays with the training process; more than 8 workers rarely pays at 32x32."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
