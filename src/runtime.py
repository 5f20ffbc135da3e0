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

from src.errors import UserError
from src.params import RuntimeParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compile: bool          # torch.compile the model for training
    gpu_augment: bool      # crop/flip/cutout on the training device instead of loader workers
    workers: int           # DataLoader worker processes
    channels_last: bool    # NHWC memory layout: faster convolutions on tensor cores and AVX-512 CPUs
    amp_dtype: torch.dtype | None  # autocast dtype, None for full fp32

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return (f"{name}, {self.precision}, {'channels_last' if self.channels_last else 'NCHW'}, "
                f"compile={self.compile}, gpu_augment={self.gpu_augment}, workers={self.workers}")


def resolve(params: RuntimeParams, local_rank: int = 0, local_processes: int = 1) -> Runtime:
    """The runtime of one process; with several on a node, process `local_rank` takes GPU
    `local_rank` (cuda) and a share of the loader workers."""
    device = _pick_device(params.device, local_rank)
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
    channels_last = channels_last_is_fast(device) if params.channels_last == "auto" else params.channels_last
    if compile_ and device.type == "cpu" and not channels_last:
        # Inductor lays CPU convolutions out channels_last unless told not to; keep them NCHW
        # where NCHW was chosen (see channels_last_is_fast).
        # `import ... as`: a plain `import torch._inductor.config` here would make `torch` a local
        # name of this whole function, unbound in the CUDA branches above.
        import torch._inductor.config as inductor_config
        inductor_config.layout_optimization = False
    return Runtime(
        device=device,
        compile=compile_,
        # true also holds off a GPU: the same on-device path then runs on the CPU (tests use it).
        gpu_augment=cuda if params.gpu_augment == "auto" else params.gpu_augment,
        workers=default_workers(local_processes) if params.workers == "auto" else params.workers,
        channels_last=channels_last,
        amp_dtype=_amp_dtype(params.precision, device),
    )


def channels_last_is_fast(device: torch.device) -> bool:
    """The layout `runtime.channels_last: auto` picks: NHWC on CUDA (tensor cores) and on CPUs
    with AVX-512, NCHW on other CPUs and MPS.

    On AVX-512 CPUs NHWC is the faster layout (docs/performance.md). On AVX2-only CPUs, torch
    2.14.1's oneDNN hangs (2 threads) or segfaults (1 thread) in the channels_last weight gradient
    of the 1x1 stride-2 downsample convolution (jit_avx2_1x1_convolution_bwd_weights, seen on an
    AMD EPYC), so NCHW there.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked (auto: on CUDA); None: full fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def _pick_device(choice: str, local_rank: int = 0) -> torch.device:
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    kind, _, index = choice.partition(":")
    if kind == "auto":
        kind = next(name for name, ok in available.items() if ok)
    elif not available[kind]:
        raise UserError(f"runtime.device = {choice!r} but no {kind} device is available here: "
                        "use `-S runtime.device=auto` (cuda, then mps, then cpu)")
    if kind != "cuda":
        return torch.device(kind)
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f"runtime.device = {choice!r} but only {torch.cuda.device_count()} GPU(s) are "
                        f"visible here (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                        f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", int(index) if index else local_rank)


def processes_per_node(params: RuntimeParams) -> int:
    """runtime.nproc_per_node resolved: auto is one per visible GPU with CUDA (device auto or
    cuda), else 1."""
    kind = _pick_device(params.device).type  # also: a clear error for a device that is not here
    cuda = kind == "cuda" and ":" not in params.device
    if params.nproc_per_node == "auto":
        return torch.cuda.device_count() if cuda else 1
    if params.nproc_per_node > 1 and kind == "mps":
        raise UserError("runtime.nproc_per_node > 1 needs cuda or cpu: PyTorch has no process group "
                        "backend for mps. Use `-S runtime.nproc_per_node=1`")
    if cuda and params.nproc_per_node > torch.cuda.device_count():
        raise UserError(f"runtime.nproc_per_node = {params.nproc_per_node} but only "
                        f"{torch.cuda.device_count()} GPU(s) are visible: one process per GPU. Use "
                        f"`-S runtime.nproc_per_node=auto` (or {torch.cuda.device_count()})")
    return params.nproc_per_node


def default_workers(local_processes: int = 1) -> int:
    """Each training process keeps one core; its share of the others, at most 8, load batches
    (more rarely pays at 32x32)."""
    return max(1, min(8, available_cores() // local_processes - 1))


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM or cgroup share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
