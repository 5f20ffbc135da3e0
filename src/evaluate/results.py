"""One model's test results assembled from its logits: the metrics file and its plot tables."""
from __future__ import annotations

import numpy as np
import torch

from src.evaluate import metrics
from src.predict import loss_and_accuracy

ECE_BINS = 15
SUMMARY_KEYS = ("top1", "top5", "loss", "ece", "parameters")


def model_results(logits: torch.Tensor, split: dict[str, np.ndarray], classes: dict) -> dict:
    """{'metrics': ..., and plot tables 'reliability', 'confusion', 'per_class'} for one model."""
    fine, coarse = split["fine_labels"], split["coarse_labels"]
    confidence, predicted = metrics.confidence_and_prediction(logits)
    correct = predicted == fine
    superclass = metrics.superclass_of(classes["fine_to_coarse"], fine, coarse)
    loss, top1 = loss_and_accuracy(logits, fine)  # plain cross-entropy: no label smoothing here
    precision, recall, f1 = metrics.macro_precision_recall_f1(predicted, fine, len(classes["fine"]))
    reliability = metrics.reliability_bins(confidence, correct, ECE_BINS)
    results = {
        "test_images": len(fine),
        "top1": top1,
        "top5": metrics.topk_accuracy(logits, fine, 5),
        "loss": loss,
        "ece": metrics.expected_calibration_error(reliability),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
        # Right superclass for the predicted class, even when the class itself is wrong.
        "superclass_top1": float(np.mean(superclass[predicted] == coarse) * 100),
        "per_superclass": metrics.group_accuracy(correct, coarse, classes["coarse"]),
    }
    names = classes["fine"]
    confusion = [{"actual": names[a], "predicted": names[p]} for a, p in zip(fine, predicted)]
    return {"metrics": results, "reliability": reliability, "confusion": confusion,
            "per_class": per_class_rows(correct, fine, superclass, classes)}


def per_class_rows(correct: np.ndarray, fine: np.ndarray, superclass: np.ndarray,
                   classes: dict) -> list[dict]:
    """Accuracy of every class in the split, grouped by superclass: a table, not a metric.

    100 numbers per model would bury the headline ones in `dvc metrics show` and
    `dvc exp show`; as a plot table they stay one `dvc plots diff` away.
    """
    accuracy = metrics.group_accuracy(correct, fine, classes["fine"])
    images = np.bincount(fine, minlength=len(classes["fine"]))
    present = np.flatnonzero(images)
    order = sorted(present, key=lambda c: (superclass[c], c))
    return [{"class": classes["fine"][c], "superclass": classes["coarse"][superclass[c]],
             "accuracy": accuracy[classes["fine"][c]], "images": int(images[c])} for c in order]


def summary(per_model: dict[str, dict]) -> dict[str, dict]:
    """The headline numbers of every model side by side: {model: {top1, top5, ...}}."""
    return {name: {key: values[key] for key in SUMMARY_KEYS} for name, values in per_model.items()}
