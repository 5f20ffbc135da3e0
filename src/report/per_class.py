"""Per-class precision, recall and F1 of a model, from its per-image predictions (scikit-learn)."""
from __future__ import annotations

import pandas as pd
from sklearn.metrics import classification_report

SCORES = ("precision", "recall", "f1-score")  # classification_report's names, as fractions


def class_scores(predictions: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per class that occurs as a label: class, precision, recall, f1 (percent) and
    images, from plots/predictions/<model>.csv.

    Classes with no test image (a small data.test_limit) are left out: their recall and F1
    are undefined, and scoring them 0 would put them among the worst. An image predicted as
    such a class still counts as a miss in the recall of its true class.
    """
    labels = sorted(set(predictions["label"].tolist()))
    report = classification_report(predictions["label"], predictions["prediction"], labels=labels,
                                   target_names=[names[i] for i in labels], output_dict=True,
                                   zero_division=0)
    rows = [{"class": names[i], **{key: report[names[i]][key] * 100 for key in SCORES},
             "images": int(report[names[i]]["support"])} for i in labels]
    return pd.DataFrame(rows).rename(columns={"f1-score": "f1"})


def best_and_worst(scores: pd.DataFrame, count: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `count` classes with the highest F1 (best first) and the `count` with the lowest
    (worst first), none in both; ties broken by recall, then by name, so the order is stable."""
    ranked = scores.sort_values(["f1", "recall", "class"], ascending=[False, False, True])
    best = ranked.head(count)
    rest = ranked.iloc[len(best):]
    worst = rest.tail(count).iloc[::-1]
    return best.reset_index(drop=True), worst.reset_index(drop=True)
