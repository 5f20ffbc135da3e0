"""The prepared splits: limits, a stratified hold-out, channel statistics, npz files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.cli import UserError

KEYS = ("images", "fine_labels", "coarse_labels")


def first(arrays: dict[str, np.ndarray], limit: int | None) -> dict[str, np.ndarray]:
    """The first `limit` images of a split (all of them when limit is None)."""
    return arrays if limit is None else {k: v[:limit] for k, v in arrays.items()}


def take(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in arrays.items()}


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out), `size` held out in proportion to each class, both sorted."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    per_class = np.floor(quota).astype(int)
    # Largest remainder: hand the leftover images to the classes closest to the next one.
    leftover = size - per_class.sum()
    per_class[np.argsort(-(quota - per_class), kind="stable")[:leftover]] += 1
    held_out = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)
    ])
    held_out.sort()
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images, in [0, 1] units."""
    pixels = images.reshape(-1, images.shape[-1])
    total = np.zeros(pixels.shape[1])
    squares = np.zeros(pixels.shape[1])
    for start in range(0, len(pixels), 1 << 22):  # chunks bound memory to ~100 MB
        chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255
        total += chunk.sum(0)
        squares += (chunk ** 2).sum(0)
    mean = total / len(pixels)
    std = np.sqrt(squares / len(pixels) - mean ** 2)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, num_fine: int = 100) -> list[int]:
    """The superclass of each class (-1 for a class absent from the data)."""
    mapping = [-1] * num_fine
    for f, c in zip(fine.tolist(), coarse.tolist()):
        mapping[f] = c
    return mapping


def save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **{k: arrays[k] for k in KEYS})


def load(path: str | Path) -> dict[str, np.ndarray]:
    """A split written by save(), checked against the data contract."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"cannot read {path} ({error}): run `dvc repro augment` to rebuild it") from None
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"{path}: expected uint8 images (N, 32, 32, 3), found {images.dtype} "
                        f"{images.shape}: run `dvc repro augment` to rebuild it")
    return arrays
