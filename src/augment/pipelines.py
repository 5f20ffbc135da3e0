"""Build, save and load the albumentations train and test pipelines.

The augment stage is the only place they are built; it saves them as JSON so
training loads exactly that pipeline and DVC hashes it. Every pipeline ends with
Normalize. The uint8 part before it runs in loader workers or on the GPU: the
standard crop/flip/cutout as one op on whole batches (src/augment/batch_ops.py),
anything else image by image here. The final Normalize is applied to whole batches
on the training device, where it is cheap, so workers ship uint8 (4x less data).
"""
from __future__ import annotations

import random

from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from src.augment.autoaugment import cifar10_policy
from src.params import AugmentParams

IMAGE_SIZE = 32


def build_train(params: AugmentParams, mean: list[float], std: list[float],
                autoaugment: bool = False) -> A.Compose:
    if params.crop == "pad":
        # A.Pad, not PadIfNeeded: albumentations 2.0.8 cannot load a saved PadIfNeeded.
        pad = [A.Pad(params.crop_padding, fill=0, border_mode=cv2.BORDER_CONSTANT)]
        crop = [*pad[:params.crop_padding > 0], A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE)]
    else:
        crop = [A.RandomResizedCrop((IMAGE_SIZE, IMAGE_SIZE), scale=params.resized_scale)]
    steps = [*crop, A.HorizontalFlip(p=params.hflip_p)]
    if autoaugment:
        steps.append(cifar10_policy())
    if params.cutout_size > 0 and params.cutout_p > 0:
        # Fill with the mean colour, which Normalize maps to 0, as in the Cutout paper.
        fill = tuple(round(m * 255) for m in mean)
        steps.append(A.CoarseDropout(num_holes_range=(1, 1),
                                     hole_height_range=(params.cutout_size, params.cutout_size),
                                     hole_width_range=(params.cutout_size, params.cutout_size),
                                     fill=fill, p=params.cutout_p))
    return A.Compose([*steps, _normalize(mean, std)])


def build_test(mean: list[float], std: list[float]) -> A.Compose:
    return A.Compose([_normalize(mean, std)])


def _normalize(mean: list[float], std: list[float]) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def save(pipeline: A.Compose, path: str | Path) -> None:
    A.save(pipeline, str(path), data_format="json")


def load(path: str | Path) -> A.Compose:
    return A.load(str(path), data_format="json")


def split_normalize(pipeline: A.Compose) -> tuple[A.Compose, np.ndarray, np.ndarray]:
    """Split a saved pipeline into its uint8 part and the final Normalize's mean and std."""
    *steps, normalize = pipeline.transforms
    if not isinstance(normalize, A.Normalize) or normalize.max_pixel_value != 255.0:
        raise ValueError("a pipeline from the augment stage ends with Normalize(max_pixel_value=255)")
    uint8_part = A.Compose(steps)
    return uint8_part, np.asarray(normalize.mean, np.float32), np.asarray(normalize.std, np.float32)


def augment_batch(pipeline: A.Compose, images: np.ndarray, seeds=None) -> np.ndarray:
    """Apply a uint8 pipeline to each image of a (N, H, W, C) batch; `seeds`: one per image,
    so an image's augmentation does not depend on the images before it."""
    if seeds is None:
        return np.stack([pipeline(image=image)["image"] for image in images])
    # Every transform draws from these two generators, re-seeded in place for each image:
    # 14 us an image, where pipeline.set_random_seed (a new generator per transform) costs
    # 1 ms with AutoAugment's 30-odd transforms, 6x the augmentation itself.
    numpy_rng, python_rng = np.random.default_rng(), random.Random()
    pipeline.set_random_state(numpy_rng, python_rng)
    out = []
    for image, seed in zip(images, seeds):
        numpy_rng.bit_generator.state = np.random.PCG64(int(seed)).state
        python_rng.seed(int(seed))
        out.append(pipeline(image=image)["image"])
    return np.stack(out)
