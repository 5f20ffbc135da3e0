"""Batched inference: logits for a split of uint8 images, the one way every stage runs a model."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.runtime import Runtime
from src.data.normalize import Normalizer


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, normalize: Normalizer, runtime: Runtime,
                   batch_size: int, hflip_tta: bool = False) -> torch.Tensor:
    """float32 logits (N, classes) on the CPU; the model is put in eval mode and left there.

    hflip_tta: test-time augmentation with the mirror image. The softmax of each image and
    of its mirror are averaged; what comes back is the log of that average, whose softmax
    (and so every metric computed from logits) is the averaged probability.
    """
    model.eval()
    source = torch.from_numpy(images)
    if runtime.device.type == "cuda":
        source = source.pin_memory()
    outputs = []
    for start in range(0, len(source), batch_size):
        x = normalize(source[start:start + batch_size])
        with runtime.autocast():
            logits = model(x).float()
            if hflip_tta:
                # log((p + p_mirror) / 2) in log space: no underflow to log(0).
                mirrored = model(x.flip(3)).float()
                logits = torch.logaddexp(logits.log_softmax(1), mirrored.log_softmax(1)) - math.log(2)
        outputs.append(logits)
    return torch.cat(outputs).cpu()


def loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy (no smoothing) and top-1 accuracy in percent."""
    target = torch.from_numpy(labels)
    loss = F.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(1) == target).float().mean().item() * 100
    return loss, accuracy
