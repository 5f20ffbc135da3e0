"""Cutout as DeVries & Taylor's code (and the reference runs) ran it: one square hole whose centre is
uniform over the whole image, clipped at the border, so a hole near an edge covers fewer pixels.

albumentations' CoarseDropout keeps the whole hole inside the image (always 16x16 = 256 pixels);
that variant stays available as `augment.cutout_inside: true`. This class changes only where
the hole goes; filling is CoarseDropout's.
"""
from __future__ import annotations

import albumentations as A
import numpy as np


class ClippedCutout(A.CoarseDropout):
    """One `size` x `size` hole: centre (y, x) uniform in [0, H) x [0, W), rows
    [y - size // 2, y - size // 2 + size) and likewise columns, clipped to the image."""

    def __init__(self, size: int, fill, p: float):
        super().__init__(num_holes_range=(1, 1), hole_height_range=(size, size),
                         hole_width_range=(size, size), fill=fill, p=p)
        self.size = size

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        y, x = self.random_generator.integers(0, (height, width)) - self.size // 2
        holes = np.array([[max(x, 0), max(y, 0), min(x + self.size, width), min(y + self.size, height)]])
        return {"holes": holes, "seed": self.random_generator.integers(0, 2**32 - 1)}
