"""The frozen first phase of a model started from ImageNet weights (`freeze_epochs` in its block):
only the new head learns, then the whole network does, under the one learning-rate schedule.

Frozen means unchanged: the backbone's parameter groups get learning rate 0 (an SGD step of
lr 0 leaves a weight exactly as it was, weight decay and momentum included) and its BatchNorm
layers run in eval mode, so their running statistics stay the ImageNet ones. Gradients still
flow (the same graph for one process or several); the momentum they gather is dropped when
the backbone thaws.
"""
from __future__ import annotations

from torch import nn


class BackboneFreeze:
    def __init__(self, model: nn.Module, head: set[str], epochs: int):
        self.epochs = epochs
        self.backbone = {id(p) for name, p in model.named_parameters() if name not in head}
        self.norms = [m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and not any(f"{name}.{kind}" in head for kind in ("weight", "bias"))]

    def is_backbone(self, param: nn.Parameter) -> bool:
        return id(param) in self.backbone

    def start_epoch(self, epoch: int, optimizer) -> None:
        """After model.train(), before the epoch's first step."""
        frozen = epoch < self.epochs
        backbone = [group for group in optimizer.param_groups if group.get("backbone")]
        for group in backbone:
            group["lr_scale"] = 0.0 if frozen else 1.0  # src/train/optim.py's set_lr applies it
        if frozen:
            for norm in self.norms:
                norm.eval()
        elif epoch == self.epochs:  # thawing: momentum gathered while frozen would move it at once
            for param in (p for group in backbone for p in group["params"]):
                optimizer.state.pop(param, None)
