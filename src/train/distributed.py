"""Several training processes (PyTorch DDP), started the way torchrun starts them.

With runtime.nproc_per_node > 1 the train stage runs its own command again in that many
processes through torch.distributed's elastic launcher (torchrun's machinery, configured as
`torchrun --standalone`); a stage that torchrun started (several nodes, SLURM) joins that job
instead. NCCL on GPUs, gloo on CPU.

The recipe does not change with the process count: `batch_size` is the global batch, each
process takes its slice of every (seed, epoch, batch) batch, DistributedDataParallel averages
the gradients (so the update is the single-process one), and BatchNorm normalises with the
statistics of the whole global batch (runtime.sync_batchnorm). Rank 0 alone writes files.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as collectives
from torch.nn.parallel import DistributedDataParallel

from src.errors import UserError
from src.runtime import available_cores

# A collective that waits longer than this (a process hung, not died) fails the run.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# How often the launcher checks its processes: a dead one stops the run within about this.
MONITOR_INTERVAL_S = 1.0
# After a failure, the other processes get this long to exit on SIGTERM before SIGKILL
# (torch >= 2.12: LaunchConfig.shutdown_timeout; torch 2.11 waits its fixed 30 s).
SHUTDOWN_TIMEOUT_S = 10


@dataclass(frozen=True)
class Processes:
    """This process's place in the job (a single process: rank 0 of 1)."""
    rank: int = 0
    local_rank: int = 0        # index on this node: picks the GPU
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints progress and writes checkpoints, curves and models."""
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This process's part of a global batch of `batch_size` images."""
        size = batch_size // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)


def started_by_launcher() -> bool:
    """True inside a process that torchrun (or our launch()) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= os.environ.keys()


def from_environment() -> Processes:
    """The job torchrun describes in the environment; a lone process outside one."""
    if not started_by_launcher():
        return Processes()
    env = os.environ
    world_size = int(env["WORLD_SIZE"])
    return Processes(rank=int(env["RANK"]), local_rank=int(env["LOCAL_RANK"]), world_size=world_size,
                     local_world_size=int(env.get("LOCAL_WORLD_SIZE", world_size)))


def check_global_batch(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise UserError(
            f"batch_size = {batch_size} does not divide by the {processes} training processes: "
            "batch_size is the global batch (so lr and the schedule mean the same at any process "
            f"count) and each process takes an equal share. Use a multiple of {processes} "
            f"(`dvc exp run -S batch_size={batch_size - batch_size % processes or processes}`) or "
            "another runtime.nproc_per_node.")


def launch(nproc: int, module_args: list[str], what: str, after_a_kill: str = "") -> None:
    """Run `python <module_args>` in `nproc` processes on this node and wait for them all.

    A process that fails (an error, kill -9, out of memory) stops the others within about
    MONITOR_INTERVAL_S + SHUTDOWN_TIMEOUT_S; the UserError raised then names its rank (and
    adds `after_a_kill` when a signal killed it).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_launcher_logs()
    # As torchrun does: without a setting, n processes of all-core math threads fight for
    # the cores. Each gets an equal share instead (set for the children only).
    threads_set_by_user = "OMP_NUM_THREADS" in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))
    # torch 2.11 (still on some GPU nodes) has no shutdown_timeout field; 2.12 and later take it.
    shutdown = ({"shutdown_timeout": SHUTDOWN_TIMEOUT_S}
                if "shutdown_timeout" in {f.name for f in fields(LaunchConfig)} else {})
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=MONITOR_INTERVAL_S, **shutdown)
    try:
        elastic_launch(config, sys.executable)(*module_args)
    except SignalException:  # Ctrl-C or a kill of the launcher: it has stopped the processes
        raise KeyboardInterrupt from None
    except ChildFailedError as error:
        # The root cause: a process killed by a signal (other than the launcher's own SIGTERM to
        # the survivors), else the first to fail (the others fail on a broken connection).
        rank, failure = min(error.failures.items(), key=lambda item: (
            item[1].exitcode >= 0, item[1].exitcode == -signal.SIGTERM, item[1].timestamp, item[0]))
        where = f"{what}: training process rank {rank} (pid {failure.pid})"
        if failure.exitcode > 0:  # an error of its own, printed above by that process
            raise UserError(f"{where} failed with exit status {failure.exitcode}: its error is above; "
                            "the other processes were stopped.") from None
        raise UserError(f"{where} was killed by {failure.signal_name()}; the other processes were "
                        f"stopped. {after_a_kill}".rstrip()) from None
    finally:
        if not threads_set_by_user:
            del os.environ["OMP_NUM_THREADS"]


def _quiet_launcher_logs() -> None:
    """The agent's INFO/WARNING lines (configs, rendezvous, SIGTERMs sent) bury the one message
    that matters; launch() reports a failure itself."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def process_group(processes: Processes, device: torch.device) -> Iterator[None]:
    """Join the job's process group (nothing to join for a lone process)."""
    if processes.world_size == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    except RuntimeError as error:
        if not _peer_lost(error):
            raise
        # Not this process's fault: one line instead of a traceback; the launcher names the cause.
        detail = re.sub(r"^\[[^\]]*\]\s*", "", str(error).splitlines()[0])  # no source location
        raise UserError(f"training process rank {processes.rank} stopped: another process of the job is "
                        f"gone ({detail.split('. ')[0]})") from None
    finally:
        dist.destroy_process_group()


def _peer_lost(error: RuntimeError) -> bool:
    """A collective failed because another process died or closed its connection."""
    return isinstance(error, (dist.DistNetworkError, dist.DistBackendError)) or any(
        text in str(error) for text in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def wrap(model: nn.Module, processes: Processes, sync_batchnorm: bool) -> tuple[nn.Module, nn.Module]:
    """(model, forward): the model to train, save and average (BatchNorm synchronised when asked),
    and what runs the training forward pass (DistributedDataParallel around it, when distributed)."""
    if processes.world_size == 1:
        return model, model
    device = next(model.parameters()).device
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_batchnorm:  # torch's SyncBatchNorm is GPU-only (DDP refuses it on CPU)
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = GlobalBatchNorm  # a subclass with the same state: only forward() differs
    # Identical BatchNorm buffers everywhere when synchronised: no need to broadcast them each step.
    # torch >= 2.13 names this forward_sync_buffers; torch 2.11 has only
    # broadcast_buffers, whose False also skips the buffers' broadcast at start-up: the same there
    # too, since every process builds the model from the same seed.
    buffers = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                      **{buffers: not sync_batchnorm})
    return model, forward


class GlobalBatchNorm(nn.BatchNorm2d):
    """SyncBatchNorm for CPU processes (torch's runs on GPUs only): the mean and variance of the
    global batch from torch's autograd-aware functional all_reduce, so the gradients are those
    of a single-process BatchNorm over that batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
        # One all-reduce forward (and one backward) per layer: sums of x and x^2, shifted by the
        # running mean (the same on every process, and near the batch mean, so E[s^2] - E[s]^2
        # does not cancel). Every process holds an equal slice of the batch.
        shift = self.running_mean.detach().clone().view(shape) if self.track_running_stats else 0.0
        shifted = x - shift
        count = x.numel() // x.shape[1] * dist.get_world_size()
        sums = _sum_over_processes(torch.cat([shifted.sum(dims), (shifted * shifted).sum(dims)])) / count
        shifted_mean, channels = sums[:x.shape[1]], x.shape[1]
        var = sums[channels:] - shifted_mean * shifted_mean
        mean = shifted_mean.view(shape) + shift
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.flatten(), momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)  # unbiased, as BatchNorm
        y = (x - mean) * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def _sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) that autograd differentiates: the backward pass sums the gradients."""
    return collectives.all_reduce(x, "sum", dist.group.WORLD)


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the processes (unchanged for a lone process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def broadcast(value, processes: Processes):
    """Rank 0's `value` on every process (the resume state: read once, on rank 0's disk)."""
    if processes.world_size == 1:
        return value
    box = [value if processes.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
