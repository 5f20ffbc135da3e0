"""Input normalisation on the device: the final Normalize of the model's pipeline, for whole batches.

Workers and the on-GPU augmentation hand over uint8 NHWC batches (4x less data than
float); this turns them into normalised float NCHW where the model runs.
"""
from __future__ import annotations

import numpy as np
import torch


class Normalizer:
    """uint8 NHWC batches -> normalised float NCHW on the device (channels_last strides when asked)."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool):
        self.mean = torch.as_tensor(np.asarray(mean) * 255, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(np.asarray(std) * 255, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.device, self.channels_last = device, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        # NHWC -> NCHW as a view: the strides are already channels_last.
        x = images.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
