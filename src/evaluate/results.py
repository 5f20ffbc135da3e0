"""One model's test results assembled from its logits: its metrics, detail and plot tables.

The metrics (metrics/<model>.json, what `dvc metrics show` and `dvc exp show` list) are the
headline numbers compared across experiments, plain numbers only, so that a row of
`dvc metrics show` stays under 200 characters. Everything else a model's evaluation finds
(per-superclass accuracy, macro precision and recall, ...) is its detail
(evaluation/detail/<model>.json, in git, read by the report; not a DVC metric).
"""
from __future__ import annotations

import numpy as np
import torch

from src.accuracy import loss_and_accuracy, percent, topk_correct
from src.evaluate import metrics, stats

ECE_BINS = 15
TOP_K = 5  # classes listed per image in plots/predictions/<model>.csv


def model_results(logits: torch.Tensor, split: dict[str, np.ndarray], classes: dict) -> dict:
    """{'metrics': the headline numbers, 'detail': the rest, plot tables 'reliability',
    'confusion' (by superclass), 'per_class', 'predictions', and 'correct': whether each image
    was scored right (top-1), for comparisons between models}."""
    fine, coarse = split["fine_labels"], split["coarse_labels"]
    confidence, predicted = metrics.confidence_and_prediction(logits)
    correct = topk_correct(logits, fine, 1)  # for the interval and the comparisons between models
    top5 = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices.numpy()
    in_top5 = topk_correct(logits, fine, 5)  # once, for top5 and its interval
    superclass = metrics.superclass_of(classes["fine_to_coarse"], fine, coarse)
    loss, top1 = loss_and_accuracy(logits, fine)  # plain cross-entropy: no label smoothing here
    precision, recall, f1 = metrics.macro_precision_recall_f1(predicted, fine)
    reliability = metrics.reliability_bins(confidence, correct, ECE_BINS)
    top1_low, top1_high = stats.accuracy_ci(correct)
    top5_low, top5_high = stats.accuracy_ci(in_top5)
    headline = {  # percent, test split; interval bounds: 95% percentile bootstrap
        "top1": top1, "top1_low": top1_low, "top1_high": top1_high,
        "top5": percent(in_top5), "top5_low": top5_low, "top5_high": top5_high,
        "loss": loss,
        "ece": metrics.expected_calibration_error(reliability),
        "macro_f1": f1,
    }
    detail = {
        "test_images": len(fine),
        "macro_precision": precision,
        "macro_recall": recall,
        # Right superclass for the predicted class, even when the class itself is wrong.
        "superclass_top1": float(np.mean(superclass[predicted] == coarse) * 100),
        "per_superclass": metrics.group_accuracy(correct, coarse, classes["coarse"]),
    }
    # DVC's confusion plot at 20 x 20 superclasses, which a person can read; the report draws the
    # 100-class matrix from the predictions.
    # (A predicted class absent from a limited training split and from the test labels has no
    # known superclass.)
    groups = classes["coarse"]
    confusion = [{"actual": groups[a], "predicted": groups[p] if p >= 0 else "(superclass unknown)"}
                 for a, p in zip(coarse, superclass[predicted])]
    return {"metrics": headline, "detail": detail, "reliability": reliability, "confusion": confusion,
            "per_class": per_class_rows(correct, fine, superclass, classes),
            "predictions": prediction_rows(fine, predicted, confidence, top5), "correct": correct}


def heldout_scores(logits: torch.Tensor, labels: np.ndarray) -> dict:
    """{top1, top5, loss} of the val split: the numbers tuning chooses by (metrics/<model>.json
    `val`), computed as the test split's are (the same rules, no label smoothing)."""
    loss, top1 = loss_and_accuracy(logits, labels)
    return {"top1": top1, "top5": percent(topk_correct(logits, labels, 5)), "loss": loss}


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


def summary(headline: dict[str, dict], correct: dict[str, np.ndarray]) -> dict:
    """metrics/summary.json: every model's top-1 side by side, {model: {'top1': ...}} (and
    {'val': {'top1': ...}} with a val split), and 'comparisons': a list with every pair's top-1
    difference, its interval and McNemar test.

    A list, because DVC lists only numbers: `dvc metrics show` and `dvc exp show` show each
    model's top-1 as one short column (`resnet18.top1`, `resnet18.val.top1`) and leave the
    comparisons to the report and the file, where their 40-character names cannot widen every row.
    """
    side_by_side = {name: {"top1": m["top1"], **({"val": {"top1": m["val"]["top1"]}} if "val" in m else {})}
                    for name, m in headline.items()}
    pairs = [{"pair": key, **values} for key, values in stats.compare(correct).items()]
    return {**side_by_side, "comparisons": pairs}
