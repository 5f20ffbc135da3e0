"""SGD with Nesterov momentum and the learning-rate schedule, as pure functions of the step."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from src.params import TrainParams


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 is_backbone: Callable[[nn.Parameter], bool] | None = None) -> list[dict]:
    """Weight decay on conv and linear weights only (unless asked): decaying BatchNorm's
    scale and the biases only fights the normalisation and costs accuracy. With `is_backbone`
    (src/train/freeze.py) each group is split in two, the backbone's marked `backbone: True`."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim > 1 or decay_norm_and_bias else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if is_backbone is None:
        return groups
    return [{**group, "params": [p for p in group["params"] if is_backbone(p) == backbone], "backbone": backbone}
            for group in groups for backbone in (False, True)]


def build_optimizer(model: nn.Module, params: TrainParams, device: torch.device,
                    is_backbone: Callable[[nn.Parameter], bool] | None = None) -> torch.optim.SGD:
    groups = param_groups(model, params.weight_decay, params.decay_norm_and_bias, is_backbone)
    # fused: one CUDA kernel for the whole update; foreach (the CPU default) elsewhere.
    return torch.optim.SGD(groups, lr=0.0, momentum=params.momentum, nesterov=params.nesterov,
                           fused=device.type == "cuda" or None)


def get_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float, schedule: str) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    cosine:   linear warmup from 0 to peak over warmup_steps, then cosine decay to 0.
    onecycle: linear warmup from peak/25 to peak, then linear decay to 0 (Smith 2018).
    """
    if step < warmup_steps:
        start = 0.0 if schedule == "cosine" else peak_lr / 25
        return start + (peak_lr - start) * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))
    return peak_lr * (1 - progress)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, times a group's `lr_scale` (0 for a frozen backbone)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
