"""What the report reads: metrics JSON, DVCLive curves, confusion, reliability and prediction tables."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from src.cli import UserError

CURVES = {  # column in the report: DVCLive tsv under plots/train/<model>/plots/metrics/
    "train_loss": "train/loss", "train_acc": "train/acc",
    "heldout_loss": "heldout/loss", "heldout_acc": "heldout/acc", "lr": "lr",
}


def read_json(path: str | Path, made_by: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro {made_by}` first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}): run `dvc repro {made_by}` again") from None


def comparisons(path: str | Path) -> dict[str, dict]:
    """The `comparisons` block of metrics/summary.json: every pair of models' difference and test."""
    found = read_json(path, "evaluate").get("comparisons")
    if not found:
        raise UserError(f"{path} has no `comparisons` (written by an older evaluate stage): "
                        "run `dvc repro evaluate` again")
    return found


def read_table(path: str | Path, made_by: str, sep: str = ",") -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro {made_by}` first") from None


def training_curves(folder: str | Path, model: str) -> pd.DataFrame:
    """One row per epoch: step plus every CURVES column, from one model's DVCLive folder."""
    curves = None
    for column, name in CURVES.items():
        table = read_table(Path(folder) / "plots" / "metrics" / f"{name}.tsv", f"train-{model}", sep="\t")
        table = table.rename(columns={name.split("/")[-1]: column})[["step", column]]
        curves = table if curves is None else curves.merge(table, on="step", how="outer")
    return curves.sort_values("step").reset_index(drop=True)


def class_order(classes: dict) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Class names grouped by superclass, and (superclass, first, end) index ranges of the groups.

    Classes whose superclass is unknown (absent from a limited training split) come last.
    """
    coarse = classes["coarse"] + ["(superclass unknown)"]
    group = [c if c >= 0 else len(classes["coarse"]) for c in classes["fine_to_coarse"]]
    order = sorted(range(len(classes["fine"])), key=lambda i: (group[i], i))
    names = [classes["fine"][i] for i in order]
    ranges, start = [], 0
    for g in sorted(set(group)):
        size = group.count(g)
        ranges.append((coarse[g], start, start + size))
        start += size
    return names, ranges


def confusion_counts(table: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(classes, classes) counts, rows actual and columns predicted, in the order of `names`."""
    index = {name: i for i, name in enumerate(names)}
    unknown = set(table["actual"]).union(table["predicted"]) - set(index)
    if unknown:
        raise UserError(f"the confusion data names classes that classes.json does not "
                        f"({sorted(unknown)[:5]}): run `dvc repro evaluate` again")
    return confusion_matrix(table["actual"].map(index).to_numpy(), table["predicted"].map(index).to_numpy(),
                            labels=np.arange(len(names)))
