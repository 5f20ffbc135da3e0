"""The tiny sweep the sweep tests and scripts/benchmark_sweep.py run: one model that learns
within a few seconds, and its val split."""
from __future__ import annotations

from helpers.project import TINY

LEARNS = {**TINY, "data.train_limit": 2000, "model.width": 8, "epochs": 3, "train.warmup_epochs": 0}
VAL_SIZE = 200
