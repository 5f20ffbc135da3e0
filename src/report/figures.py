"""The report's PNG figures. Each function draws one figure from plain tables and saves it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

DPI = 110


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    # No "Software" stamp: a matplotlib upgrade alone should not change the committed PNGs.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def training_curves(curves: dict[str, pd.DataFrame], heldout: str, path: str | Path) -> None:
    """Loss, accuracy and learning rate per epoch; one colour per model, dashed = held out."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for colour, (model, table) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], curves.items()):
        epoch = table["step"]  # DVCLive's step is the epoch number (src/train/curves.py)
        for ax, metric in zip(axes[:2], ("loss", "acc")):
            ax.plot(epoch, table[f"train_{metric}"], color=colour, label=f"{model} train")
            ax.plot(epoch, table[f"heldout_{metric}"], color=colour, linestyle="--",
                    label=f"{model} {heldout}")
        axes[2].plot(epoch, table["lr"], color=colour, label=model)
    for ax, title in zip(axes, ("cross-entropy loss (train: with smoothing/mixup)", "top-1 accuracy (%)",
                                "learning rate (last step of each epoch)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def confusion_heatmap(counts: np.ndarray, groups: list[tuple[str, int, int]], title: str,
                      path: str | Path) -> None:
    """Row-normalised confusion (percent of each actual class), classes grouped by superclass."""
    totals = counts.sum(axis=1, keepdims=True)
    percent = np.divide(counts * 100.0, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(10, 9))
    image = ax.imshow(percent, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    for _, start, _ in groups[1:]:  # superclass boundaries
        ax.axhline(start - 0.5, color="white", linewidth=0.4)
        ax.axvline(start - 0.5, color="white", linewidth=0.4)
    centres = [(start + end - 1) / 2 for _, start, end in groups]
    labels = [name for name, _, _ in groups]
    ax.set_yticks(centres, labels, fontsize=6)
    ax.set_xticks(centres, labels, fontsize=6, rotation=90)
    ax.set_ylabel("actual class (grouped by superclass)")
    ax.set_xlabel("predicted class (grouped by superclass)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="% of the actual class")
    _save(fig, path)


def superclass_bars(accuracy: dict[str, dict[str, float]], superclasses: list[str], path: str | Path) -> None:
    """Horizontal bars: top-1 accuracy on each superclass's images, one bar per model."""
    names = [s for s in superclasses if any(s in acc for acc in accuracy.values())]
    height = 0.8 / len(accuracy)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    positions = np.arange(len(names))
    for i, (model, acc) in enumerate(accuracy.items()):
        ax.barh(positions + i * height, [acc.get(n, np.nan) for n in names], height=height, label=model)
    ax.set_yticks(positions + height * (len(accuracy) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy on the superclass's test images (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def reliability_diagrams(tables: dict[str, pd.DataFrame], ece: dict[str, float], path: str | Path) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, one panel per model."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 4.3), squeeze=False)
    for ax, (model, table) in zip(axes[0], tables.items()):
        ax.bar(table["lower"], table["accuracy"], width=table["upper"] - table["lower"], align="edge",
               edgecolor="black", linewidth=0.5, alpha=0.8, label="accuracy")
        ax.plot(table["confidence"], table["confidence"], "o", color="tab:red", markersize=3,
                label="mean confidence")
        ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("confidence (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model}: ECE {ece[model]:.2f}%", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
