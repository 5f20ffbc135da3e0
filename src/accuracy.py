"""Accuracy, computed once for every caller: which images have their label among the top k.

The training step counts its hits on the device (topk_hits), evaluation and the held-out curves
take them as numpy (topk_correct): the same rule either way.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """bool (N,) on the logits' device: whether each label is among its k largest logits
    (k > classes: all)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1)


def topk_correct(logits: torch.Tensor, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """topk_hits of CPU logits and numpy labels, as numpy."""
    return topk_hits(logits, torch.as_tensor(labels), k).numpy()


def percent(hits: np.ndarray) -> float:
    """The share of True in `hits`, in percent (the unit of every rate in metrics/)."""
    return float(np.mean(hits) * 100)


def loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy (no label smoothing) and top-1 accuracy in percent."""
    loss = F.cross_entropy(logits, torch.from_numpy(labels)).item()
    return loss, percent(topk_correct(logits, labels, 1))
