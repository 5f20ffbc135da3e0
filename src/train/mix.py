"""Mixup and CutMix of whole batches on the training device: torchvision.transforms.v2's MixUp and
CutMix, and the per-batch choice between them (v2.RandomChoice), as in torchvision's and timm's
reference recipes.

The targets come back as mixed one-hot vectors, which F.cross_entropy takes as class
probabilities (label smoothing applies on top). Each batch's draws come from a seed, so a
resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchMix:
    """(images, labels, seed) -> (mixed images, soft targets); None from build() when off."""

    def __init__(self, transform, memory_format: torch.memory_format):
        self.transform, self.memory_format = transform, memory_format

    @classmethod
    def build(cls, mixup_alpha: float, cutmix_alpha: float, cutmix_prob: float, num_classes: int,
              memory_format: torch.memory_format = torch.contiguous_format) -> BatchMix | None:
        choices = []  # (transform, probability of being chosen for a batch)
        if mixup_alpha > 0:
            choices.append((v2.MixUp(alpha=mixup_alpha, num_classes=num_classes),
                            1 - cutmix_prob if cutmix_alpha > 0 else 1.0))
        if cutmix_alpha > 0:
            choices.append((v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes),
                            cutmix_prob if mixup_alpha > 0 else 1.0))
        if not choices:
            return None
        if len(choices) == 1:
            return cls(choices[0][0], memory_format)
        return cls(v2.RandomChoice([t for t, _ in choices], p=[p for _, p in choices]), memory_format)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        # v2 draws lambda, the box and the choice from torch's global CPU generator: seed it
        # for this batch only, and leave the global state as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            images, targets = self.transform(images, labels)
        return images.contiguous(memory_format=self.memory_format), targets
