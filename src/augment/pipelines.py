"""Build the albumentations training pipeline from params: the one definition of the augmentation.

Each train stage builds its own model's pipeline from the shared `augment.*` keys with the
model's `model.<name>.augment` overrides and AutoAugment probability, and records those settings
in the model file; the augment stage builds the shared one for its offline copies and preview.
So changing one model's augmentation re-runs that model only. Every pipeline ends with
Normalize. The uint8 part before it runs in loader workers or on the GPU: the
standard crop/flip/cutout as one op on whole batches (src/augment/batch_ops.py),
anything else image by image here. The final Normalize is applied to whole batches
on the training device, where it is cheap, so workers ship uint8 (4x less data).
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

from src.augment.autoaugment import AutoAugment
from src.augment.cutout import ClippedCutout
from src.params import ModelAugment

IMAGE_SIZE = 32


def build_train(params: ModelAugment, mean: list[float], std: list[float],
                autoaugment: float = 0.0) -> A.Compose:
    """crop, flip, AutoAugment with probability `autoaugment` (0: none), cutout, Normalize:
    the reference runs' order (AutoAugment before cutout, as in DeVries & Taylor's and the ResNet-50 reference)."""
    if params.crop == "pad":
        pad = [pad_step(params.crop_padding, params.crop_fill, mean)]
        crop = [*pad[:params.crop_padding > 0], A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE)]
    else:
        crop = [A.RandomResizedCrop((IMAGE_SIZE, IMAGE_SIZE), scale=params.resized_scale,
                                    ratio=params.resized_ratio)]
    steps = [*crop, A.HorizontalFlip(p=params.hflip_p)]
    if autoaugment > 0:
        steps.append(AutoAugment(p=autoaugment))
    if params.cutout_size > 0 and params.cutout_p > 0:
        # Fill with the mean colour, which Normalize maps to 0, as in the Cutout paper.
        fill, size = tuple(round(m * 255) for m in mean), params.cutout_size
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(size, size),
                                     hole_width_range=(size, size), fill=fill, p=params.cutout_p)
                     if params.cutout_inside else ClippedCutout(size, fill, p=params.cutout_p))
    return A.Compose([*steps, _normalize(mean, std)])


def pad_step(padding: int, fill: str, mean: list[float]) -> A.Pad:
    """The padding before the random crop: `fill` black (0), mean (the mean colour, which
    Normalize maps to 0) or reflect (the image mirrored at its border, without repeating the edge
    pixel: numpy's and torch's `reflect`)."""
    # A.Pad, not PadIfNeeded: albumentations 2.0.8 cannot load a saved PadIfNeeded.
    if fill == "reflect":
        return A.Pad(padding, border_mode=cv2.BORDER_REFLECT_101)
    colour = tuple(round(m * 255) for m in mean) if fill == "mean" else (0, 0, 0)
    return A.Pad(padding, fill=colour, border_mode=cv2.BORDER_CONSTANT)


def _normalize(mean: list[float], std: list[float]) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def split_normalize(pipeline: A.Compose) -> tuple[A.Compose, np.ndarray, np.ndarray]:
    """Split a built pipeline into its uint8 part and the final Normalize's mean and std."""
    *steps, normalize = pipeline.transforms
    if not isinstance(normalize, A.Normalize) or normalize.max_pixel_value != 255.0:
        raise ValueError("a pipeline from build_train ends with Normalize(max_pixel_value=255)")
    uint8_part = A.Compose(steps)
    return uint8_part, np.asarray(normalize.mean, np.float32), np.asarray(normalize.std, np.float32)


def augment_batch(pipeline: A.Compose, images: np.ndarray, seeds=None) -> np.ndarray:
    """Apply a uint8 pipeline to each image of a (N, H, W, C) batch; `seeds`: one per image,
    so an image's augmentation does not depend on the images before it."""
    if seeds is None:
        return np.stack([pipeline(image=image)["image"] for image in images])
    # Every transform draws from these two generators, re-seeded in place for each image:
    # pipeline.set_random_seed makes a new generator per transform (30-odd with AutoAugment),
    # which costs more than the augmentation itself.
    numpy_rng, python_rng = np.random.default_rng(), random.Random()
    pipeline.set_random_state(numpy_rng, python_rng)
    out = []
    for image, seed in zip(images, seeds):
        numpy_rng.bit_generator.state = np.random.PCG64(int(seed)).state
        python_rng.seed(int(seed))
        out.append(pipeline(image=image)["image"])
    return np.stack(out)
