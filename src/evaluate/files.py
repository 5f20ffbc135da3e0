"""Deterministic JSON and CSV: the same numbers always give the same bytes.

Metrics files live in git; rounding and sorted keys make two runs on the same
model produce byte-identical files, so `git diff` and `dvc metrics diff` show
only real changes, not float noise in the 7th digit.

A number is rounded as its meaning needs: percentages, losses and probabilities to a
fixed number of decimals; a p-value, which spans orders of magnitude, to significant
digits (an exact McNemar p of 1.8e-05 stays 1.8e-05, where 4 decimals would write 0.0).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

DECIMALS = 4
SIGNIFICANT = 4  # digits of the quantities that span orders of magnitude, the keys below
SIGNIFICANT_KEYS = frozenset({"mcnemar_p", "mcnemar_p_holm"})  # src/evaluate/stats.compare's p-values


def significant(value: float, digits: int = SIGNIFICANT) -> float:
    """`value` to `digits` significant digits: 1.23456e-05 -> 1.235e-05."""
    return float(f"{float(value):.{digits}g}") + 0.0


def rounded(value, decimals: int = DECIMALS):
    """`value` with every float rounded and numpy scalars made plain Python numbers: the
    values of SIGNIFICANT_KEYS to SIGNIFICANT digits, every other float to `decimals`."""
    if isinstance(value, dict):
        return {str(k): significant(v) if k in SIGNIFICANT_KEYS and _is_float(v) else rounded(v, decimals)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if _is_float(value):
        # 0.0 instead of -0.0: the sign of a rounded zero would be a spurious diff.
        return round(float(value), decimals) + 0.0
    return value


def _is_float(value) -> bool:
    return isinstance(value, (float, np.floating))


def write_json(path: str | Path, value) -> None:
    Path(path).write_text(json.dumps(rounded(value), indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """rows of equal keys as CSV with a header: the table format `dvc plots` reads."""
    rows = rounded(rows)
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
