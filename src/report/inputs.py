"""What the report reads: metrics JSON, DVCLive curves, confusion, reliability and prediction tables."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from src.errors import UserError

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
    """{pair: its difference and test} from the `comparisons` list of metrics/summary.json (empty
    for a project of one model)."""
    found = read_json(path, "evaluate").get("comparisons")
    if not isinstance(found, list):
        raise UserError(f"{path} has no `comparisons` list (written by an older evaluate stage): "
                        "run `dvc repro evaluate` again")
    return {entry["pair"]: {key: value for key, value in entry.items() if key != "pair"} for entry in found}


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


def all_curves(curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model's curves in one table, `model` first: one file that `dvc plots` overlays (a
    plot can draw many files, but only ones dvc.yaml names, and this one stays the same for any
    set of models)."""
    return pd.concat([table.assign(model=model)[["model", *table.columns]] for model, table in curves.items()],
                     ignore_index=True)


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


def confusion_counts(predictions: pd.DataFrame, fine: list[str], names: list[str]) -> np.ndarray:
    """(classes, classes) counts, rows actual and columns predicted, in the order of `names`,
    from plots/predictions/<model>.csv (class indices into `fine`, classes.json's order)."""
    position = np.array([names.index(name) for name in fine])
    indices = predictions[["label", "prediction"]].to_numpy()
    if indices.size and (indices.min() < 0 or indices.max() >= len(fine)):
        raise UserError(f"the predictions name class indices outside the {len(fine)} classes of "
                        "classes.json: run `dvc repro evaluate` again")
    return confusion_matrix(position[indices[:, 0]], position[indices[:, 1]], labels=np.arange(len(names)))
