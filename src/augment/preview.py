"""A grid of augmented training images, to see what the network is shown."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, C) -> one (rows*(H+2), columns*(W+2), C) image with 2-pixel white gutters."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), c), 255, np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, k * (w + 2) + 1:k * (w + 2) + 1 + w] = image
    return grid


def save_preview(panels: dict[str, np.ndarray], path: str | Path, columns: int = 8) -> None:
    """One titled grid per panel ({title: images}) side by side in a PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        ax.imshow(tile(images, columns), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
