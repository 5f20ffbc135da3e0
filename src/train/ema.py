"""An exponential moving average (EMA) of the weights, on torch's AveragedModel.

BatchNorm statistics are averaged with the weights (use_buffers=True), as timm's ModelEmaV2
does: the averaged weights are scored with averaged running means and variances, never
with the statistics of the live model they no longer match.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    """EMA of `model`'s parameters and buffers, updated after every optimizer step.

    decay: the weight of the old average per step (0.999: a horizon of about 1,000 steps).
    warmup: use min(decay, (1 + n) / (10 + n)) at update n, TensorFlow's
    ExponentialMovingAverage(num_updates=n) rule (timm's ModelEmaV2 has no warm-up; ModelEmaV3's is
    1 - (1 + n / gamma) ** -power), so a short run's average is not dominated by the random
    initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.source, self.decay, self.warmup = model, decay, warmup
        self.updates = 0  # a Python count: reading AveragedModel's n_averaged would sync the GPU
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)

    def decay_at(self, update: int) -> float:
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - self.decay_at(self.updates))
        else:  # BatchNorm's num_batches_tracked: a counter, not something to average
            torch._foreach_copy_(averaged, current)

    def update(self) -> None:
        self.averaged.update_parameters(self.source)  # the first call copies the weights
        self.updates += 1

    @property
    def module(self) -> nn.Module:
        """The averaged model (train/eval mode is its own)."""
        return self.averaged.module

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)
