"""Training batches: whole-batch fetching through the saved albumentations pipeline.

Each DataLoader item is one batch: the sampler hands a worker (batch_seed, indices),
the worker augments those images as uint8 and returns one tensor. The standard
crop/flip/cutout runs as one batch op (src/augment/batch_ops.py, the same as on the
GPU); other pipelines (AutoAugment) run through albumentations image by image.
Seeding per batch from (seed, epoch, batch) makes the images independent of the
number of workers and exactly repeatable after a resume. With several training processes
each takes its `shard` of every batch, augmented with the draws a single process makes for
those images, so the global batch is the single-process one. Normalisation (and, with
runtime.gpu_augment, the whole crop/flip/cutout) happens on the training device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.augment import pipelines
from src.augment.batch_ops import CropFlipCutout, DeviceBatches
from src.runtime import Runtime


class EpochBatches(Sampler):
    """Yields (batch_seed, indices) for a fresh permutation every epoch; drops the last partial batch."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed, self.epoch = size, min(batch_size, size), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size)
        batch_seeds = rng.integers(0, 2**31, size=len(self))
        for i in range(len(self)):
            yield int(batch_seeds[i]), order[i * self.batch_size:(i + 1) * self.batch_size]


class AugmentedBatches(Dataset):
    """Images and labels of a split; indexing by (seed, indices) returns an augmented batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pipeline=None, shard: slice = slice(None)):
        self.images, self.labels, self.pipeline, self.shard = images, labels, pipeline, shard
        self.batch_op = None if pipeline is None else CropFlipCutout.from_pipeline(pipeline)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        batch_seed, indices = item
        indices = np.sort(indices)  # sorted reads are faster; the batch order does not matter
        # Every draw is made for the whole batch, then this process's shard is taken.
        size, indices = len(indices), indices[self.shard]
        images = torch.from_numpy(self.images[indices])
        if self.batch_op is not None:
            draws = self.batch_op.draw(size, torch.Generator().manual_seed(batch_seed), images.device)
            images = self.batch_op.apply(images, draws.take(self.shard))
        elif self.pipeline is not None:
            image_seeds = np.random.default_rng(batch_seed).integers(0, 2**31, size)[self.shard]
            images = torch.from_numpy(pipelines.augment_batch(self.pipeline, images.numpy(), image_seeds))
        return images, torch.from_numpy(self.labels[indices])


class LoaderBatches:
    """Batches augmented in DataLoader workers (the batch op, or albumentations image by image)."""

    def __init__(self, images, labels, pipeline, batch_size: int, seed: int, workers: int,
                 pin_memory: bool, shard: slice = slice(None)):
        self.sampler = EpochBatches(len(images), batch_size, seed)
        self.loader = DataLoader(
            AugmentedBatches(images, labels, pipeline, shard), sampler=self.sampler, batch_size=None,
            num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


def make_batches(images: np.ndarray, labels: np.ndarray, pipeline, batch_size: int, seed: int,
                 runtime: Runtime, shard: slice = slice(None)):
    """The training batches (this process's `shard` of each): on-device augmentation when
    asked and possible, else workers."""
    if runtime.gpu_augment:
        augment = CropFlipCutout.from_pipeline(pipeline)
        if augment is not None:
            return DeviceBatches(images, labels, augment, batch_size, seed, runtime.device, shard)
        print("runtime.gpu_augment: this pipeline has steps beyond crop/flip/cutout; "
              "augmenting in DataLoader workers instead")
    return LoaderBatches(images, labels, pipeline, batch_size, seed, runtime.workers,
                         pin_memory=runtime.device.type == "cuda", shard=shard)
