"""The prepared splits: limits, a stratified hold-out, channel statistics, npz files."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from src.errors import UserError

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
    """Per-channel mean and std of uint8 (N, H, W, C) images, in [0, 1] units.

    Exact, from a histogram of the 256 values per channel: faster than float sums
    over 50M pixels and free of rounding (a constant channel has std exactly 0).
    """
    values = np.arange(256) / 255
    mean, std = [], []
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].ravel(), minlength=256)
        m = counts @ values / counts.sum()
        mean.append(round(float(m), 6))
        std.append(round(float(np.sqrt(counts @ (values - m) ** 2 / counts.sum())), 6))
    return mean, std


def fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, num_fine: int = 100) -> list[int]:
    """The superclass of each class (-1 for a class absent from the data)."""
    mapping = [-1] * num_fine
    for f, c in zip(fine.tolist(), coarse.tolist()):
        mapping[f] = c
    return mapping


def save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but byte-for-byte repeatable: np.savez stamps the current time into
    the zip, which would give DVC a new hash, and every model a retrain, on each rebuild."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


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
