"""The standard crop/flip/cutout on whole batches, on any device.

Per-image albumentations makes Python calls per image and transform: too slow to feed a
GPU, and on a slow CPU the limit of each DataLoader worker (docs/measurements.md).
These tensor ops replace the pipeline's uint8 part for a whole batch: on the GPU
(runtime.gpu_augment: the training set lives there, 150 MB as uint8) and in
DataLoader workers otherwise. They are read from the pipeline a train stage builds
(src/augment/pipelines.py stays the single definition), and they give albumentations'
exact image for the same random draws (tests/test_batch_augment.py):
  Pad(p) + RandomCrop(32): top-left corner uniform in [0, 2p]^2 of the padded image, padded
    with a constant colour or reflected at the border (augment.crop_fill)
  HorizontalFlip(p)
  ClippedCutout, one hole of side s: centre uniform in [0, 32)^2, top-left = centre - s // 2,
    clipped at the border (DeVries & Taylor's Cutout), filled with `fill`
  CoarseDropout (augment.cutout_inside), one hole of side s: top-left uniform in [0, 32 - s]^2
A pipeline with anything else (AutoAugment, RandomResizedCrop) runs through
albumentations, image by image, in the workers.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import albumentations as A
import cv2
import numpy as np
import torch

from src.augment.cutout import ClippedCutout

# The steps the op covers, in the order src/augment/pipelines.py builds them (either cutout last).
ORDER = ((A.Pad,), (A.RandomCrop,), (A.HorizontalFlip,), (A.CoarseDropout, ClippedCutout))


@dataclass(frozen=True)
class Draws:
    """The random choices for a batch of n images (int64 tensors of shape (n,))."""
    crop_y: torch.Tensor
    crop_x: torch.Tensor
    flip: torch.Tensor       # bool
    cutout: torch.Tensor     # bool
    hole_y: torch.Tensor     # top-left corner of the hole (negative: clipped at the border)
    hole_x: torch.Tensor

    def take(self, part: slice) -> Draws:
        """The draws of some of the images (one training process's share of a batch)."""
        return Draws(*(getattr(self, f.name)[part] for f in fields(self)))


@dataclass(frozen=True)
class CropFlipCutout:
    padding: int
    hflip_p: float
    hole: int                # cutout side in pixels, 0: none
    cutout_p: float
    fill: tuple[int, int, int]
    clipped: bool = True     # ClippedCutout (centre anywhere); False: CoarseDropout (hole inside)
    pad_fill: tuple[int, int, int] = (0, 0, 0)  # the padding's colour
    pad_reflect: bool = False  # the padding mirrors the image instead (cv2's BORDER_REFLECT_101)

    @classmethod
    def from_pipeline(cls, pipeline: A.Compose) -> CropFlipCutout | None:
        """The equivalent batch op for a pipeline's uint8 part, or None if it has other steps
        (or these in another order, where the same draws would give another image)."""
        settings = {"padding": 0, "hflip_p": 0.0, "hole": 0, "cutout_p": 0.0, "fill": (0, 0, 0), "clipped": True,
                    "pad_fill": (0, 0, 0), "pad_reflect": False}
        done, cropped = -1, False
        for t in pipeline.transforms:
            step = next((i for i, kinds in enumerate(ORDER) if type(t) in kinds), None)
            if step is None or step <= done:
                return None
            done = step
            if isinstance(t, A.Pad):
                if not (isinstance(t.padding, int) and t.padding < 32
                        and t.border_mode in (cv2.BORDER_CONSTANT, cv2.BORDER_REFLECT_101)):
                    return None
                settings.update(padding=t.padding, pad_reflect=t.border_mode == cv2.BORDER_REFLECT_101,
                                pad_fill=tuple(int(v) for v in np.broadcast_to(t.fill, 3)))
            elif isinstance(t, A.RandomCrop):
                if (t.height, t.width) != (32, 32):
                    return None
                cropped = True
            elif isinstance(t, A.HorizontalFlip):
                settings["hflip_p"] = t.p
            else:  # ClippedCutout or CoarseDropout: one square hole of a fixed side
                if not (tuple(t.num_holes_range) == (1, 1) and t.hole_height_range[0] >= 1
                        and t.hole_height_range[0] == t.hole_height_range[1] == t.hole_width_range[0]
                        == t.hole_width_range[1]):
                    return None
                settings.update(hole=int(t.hole_height_range[0]), cutout_p=t.p, clipped=type(t) is ClippedCutout,
                                fill=tuple(int(v) for v in np.broadcast_to(t.fill, 3)))
        if settings["padding"] and not cropped:  # a padded 40x40 image: not what the op returns
            return None
        return cls(**settings)

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> Draws:
        def uniform_int(high: int) -> torch.Tensor:  # in [0, high]
            return torch.randint(0, high + 1, (n,), generator=generator, device=device)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=device) < p

        def hole_corner() -> torch.Tensor:
            if self.clipped:  # centre anywhere in the image
                return uniform_int(31) - self.hole // 2
            return uniform_int(32 - self.hole)

        return Draws(uniform_int(2 * self.padding), uniform_int(2 * self.padding), coin(self.hflip_p),
                     coin(self.cutout_p), hole_corner(), hole_corner())

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """uint8 (N, 32, 32, C) -> uint8 (N, 32, 32, C), as albumentations would for these draws."""
        n, size = len(images), images.shape[1]
        ramp = torch.arange(size, device=images.device)
        # Crop from the padded image by gathering rows and columns: an index that falls in the
        # padding reads the pad colour, or its mirror image inside (reflect: -i, 2(size-1) - i).
        rows = draws.crop_y[:, None] + ramp - self.padding              # (N, 32) source rows
        cols = draws.crop_x[:, None] + ramp - self.padding
        cols = torch.where(draws.flip[:, None], cols.flip(1), cols)     # flip = read columns backwards
        if self.pad_reflect:
            rows, cols = (_reflect(index, size) for index in (rows, cols))
        inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None]
        out = images[batch, rows.clamp(0, size - 1)[:, :, None], cols.clamp(0, size - 1)[:, None, :]]
        pad = torch.tensor(self.pad_fill, dtype=images.dtype, device=images.device)
        out = torch.where(inside[..., None], out, pad)
        if self.hole > 0:
            in_hole = (((ramp[None] >= draws.hole_y[:, None])
                        & (ramp[None] < draws.hole_y[:, None] + self.hole))[:, :, None]
                       & ((ramp[None] >= draws.hole_x[:, None])
                          & (ramp[None] < draws.hole_x[:, None] + self.hole))[:, None, :]
                       & draws.cutout[:, None, None])
            fill = torch.tensor(self.fill, dtype=images.dtype, device=images.device)
            out = torch.where(in_hole[..., None], fill, out)
        return out


class DeviceBatches:
    """Training batches drawn from a split kept on the device, augmented there.

    Same contract as the loader in src/train/data.py: set_epoch(), len(), and
    (uint8 NHWC images, labels) batches, repeatable from (seed, epoch); `shard`: the part of
    each batch this training process takes.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: CropFlipCutout,
                 batch_size: int, seed: int, device: torch.device, shard: slice = slice(None)):
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.augment, self.seed, self.device, self.shard = augment, seed, device, shard
        self.batch_size, self.epoch = min(batch_size, len(images)), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator, device=self.device)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            draws = self.augment.draw(len(index), generator, self.device).take(self.shard)
            index = index[self.shard]  # drawn for the whole batch: the same images at any process count
            yield self.augment.apply(self.images[index], draws), self.labels[index]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of a border mirrored without repeating its edge pixel (padding < size)."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index >= size, 2 * (size - 1) - index, index)
