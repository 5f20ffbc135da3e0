"""One model's test results assembled from its logits: the metrics file and its plot tables."""
from __future__ import annotations

import numpy as np
import torch

from src.evaluate import metrics, stats
from src.predict import loss_and_accuracy

ECE_BINS = 15
TOP_K = 5  # classes listed per image in plots/predictions/<model>.csv
SUMMARY_KEYS = ("top1", "top1_ci95", "top5", "top5_ci95", "loss", "ece", "parameters")


def model_results(logits: torch.Tensor, split: dict[str, np.ndarray], classes: dict) -> dict:
    """{'metrics': ..., plot tables 'reliability', 'confusion', 'per_class', 'predictions', and
    'correct': whether each image was scored right (top-1), for comparisons between models}."""
    fine, coarse = split["fine_labels"], split["coarse_labels"]
    confidence, predicted = metrics.confidence_and_prediction(logits)
    correct = predicted == fine
    top5 = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices.numpy()
    in_top5 = (top5 == fine[:, None]).any(axis=1)  # once, for top5 and its interval
    superclass = metrics.superclass_of(classes["fine_to_coarse"], fine, coarse)
    loss, top1 = loss_and_accuracy(logits, fine)  # plain cross-entropy: no label smoothing here
    precision, recall, f1 = metrics.macro_precision_recall_f1(predicted, fine)
    reliability = metrics.reliability_bins(confidence, correct, ECE_BINS)
    results = {
        "test_images": len(fine),
        "top1": top1,
        "top1_ci95": stats.accuracy_ci(correct),
        "top5": float(in_top5.mean() * 100),
        "top5_ci95": stats.accuracy_ci(in_top5),
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
            "per_class": per_class_rows(correct, fine, superclass, classes),
            "predictions": prediction_rows(fine, predicted, confidence, top5), "correct": correct}


def prediction_rows(fine: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                    top5: np.ndarray) -> list[dict]:
    """One row per test image, in split order: what any further analysis of the model needs.

    index: position in the test split; label, prediction: class indices; confidence: max
    softmax probability (0-1); top5: the five most probable classes, best first.
    """
    return [{"index": i, "label": int(label), "prediction": int(p), "confidence": float(c),
             "top5": " ".join(str(k) for k in top)}
            for i, (label, p, c, top) in enumerate(zip(fine, predicted, confidence, top5))]


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


def summary(per_model: dict[str, dict], correct: dict[str, np.ndarray]) -> dict[str, dict]:
    """The headline numbers of every model side by side, {model: {top1, top5, ...}}, and
    'comparisons': every pair's top-1 difference with its interval and McNemar test."""
    side_by_side = {name: {key: values[key] for key in SUMMARY_KEYS} for name, values in per_model.items()}
    return {**side_by_side, "comparisons": stats.compare(correct)}
