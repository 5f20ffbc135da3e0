"""Classification metrics on a test split beyond accuracy (src/accuracy.py): calibration,
macro P/R/F1, group accuracy.

Every rate is in percent, like the `top1`/`top5` of the data contract, so the
metrics files use one unit throughout. Predictions and labels are class indices.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support


def confidence_and_prediction(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability (float64, so bin edges are not decided by float32 rounding) and argmax."""
    probs = torch.softmax(logits.double(), dim=1)
    confidence, prediction = probs.max(dim=1)
    return confidence.numpy(), prediction.numpy()


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict]:
    """Equal-width confidence bins (lower, upper] as in Guo et al. 2017; empty bins are left out.

    Each row: bin index, its edges, mean confidence and accuracy (percent), image count.
    Hand-written: scikit-learn's calibration_curve is for binary problems, closes bins on
    the left and returns no counts, which the ECE and the reliability plot need.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            rows.append({"bin": b, "lower": edges[b] * 100, "upper": edges[b + 1] * 100,
                         "confidence": confidence[members].mean() * 100,
                         "accuracy": correct[members].mean() * 100, "count": count})
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """ECE in percent: the count-weighted mean |accuracy - confidence| over reliability_bins rows."""
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows) / total


def macro_precision_recall_f1(predictions: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Unweighted means over the classes that occur as a label or a prediction (scikit-learn's macro).

    A class never predicted has precision 0 and a class with P = R = 0 has F1 0
    (zero_division=0); macro F1 is the mean of per-class F1 scores.
    """
    scores = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    return tuple(float(v) * 100 for v in scores[:3])


def group_accuracy(correct: np.ndarray, groups: np.ndarray, names: list[str]) -> dict[str, float]:
    """Accuracy (percent) of the images in each group that occurs, keyed by the group's name."""
    hits = np.bincount(groups, weights=correct.astype(np.float64), minlength=len(names))
    counts = np.bincount(groups, minlength=len(names))
    return {names[g]: hits[g] / counts[g] * 100 for g in np.flatnonzero(counts)}


def superclass_of(fine_to_coarse: list[int], fine_labels: np.ndarray,
                  coarse_labels: np.ndarray) -> np.ndarray:
    """Superclass of every class: classes.json's mapping, completed from the test labels.

    classes.json derives the mapping from the training split, so with a small
    data.train_limit a class may be missing there (-1) yet occur in the test split.
    """
    mapping = np.asarray(fine_to_coarse, dtype=np.int64).copy()
    mapping[fine_labels] = coarse_labels
    return mapping
