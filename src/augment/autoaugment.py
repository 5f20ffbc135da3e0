"""AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) as published: torchvision's own
`v2.AutoAugment(AutoAugmentPolicy.CIFAR10)` run as one step of the albumentations pipeline.

torchvision's implementation is the reference the published runs trained with: its 25 sub-policies, each
operation at the policy's fixed magnitude (a random sign for the signed ones), nearest
interpolation and a black fill. An earlier version here rebuilt the operations from
albumentations' ColorJitter/Sharpen/Affine and drew each magnitude uniformly up to the policy's;
that is not the searched policy, and on ResNet-50 it learned slower (docs/recipe.md).
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torchvision.transforms import v2


class AutoAugment(A.ImageOnlyTransform):
    """torchvision's CIFAR-10 AutoAugment on a uint8 HWC image, applied with probability `p`.

    torchvision draws from torch's global generator; each image gets a seed drawn from this
    transform's albumentations generator instead, so the pipeline's seeding (per image in the
    loader, per stage in the preview) decides the result, and the caller's torch state is left as
    it was.
    """

    def __init__(self, p: float = 1.0):
        super().__init__(p=p)
        self.policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def get_params(self) -> dict:
        return {"torch_seed": self.py_random.getrandbits(63)}

    def apply(self, img: np.ndarray, torch_seed: int = 0, **params) -> np.ndarray:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch_seed)  # CPU only: seeding every device costs far more
            out = self.policy(torch.from_numpy(img).permute(2, 0, 1).contiguous())  # contiguous CHW: faster ops
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()
