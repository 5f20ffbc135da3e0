"""Inference speed: throughput at the evaluation batch size and single-image latency.

Both time the same path evaluation takes (uint8 on the host -> normalise on the
device -> logits back on the host), so they include transfers, as a user would see.
The models take turns over several passes, so a busy spell of the machine slows every
model's pass alike instead of one model's only; each figure is the median over the passes,
with the range beside it. Kept out of the accuracy metrics: timings differ from run to run.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from torch import nn

from src.data.normalize import Normalizer
from src.predict import predict_logits
from src.runtime import Runtime

PASSES = 5             # timed passes per model, the models taking turns
PASS_SECONDS = 0.1     # each pass times calls for at least this long (at least one)
LATENCY_CALLS = 5      # single-image calls per pass, at least


def timed_calls(call: Callable[[], object], min_calls: int, min_seconds: float) -> list[float]:
    """Seconds of each of at least `min_calls` calls, and at least `min_seconds` in all."""
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_seconds:
        start = time.perf_counter()
        call()  # predict_logits returns CPU tensors, so the device has finished here
        times.append(time.perf_counter() - start)
    return times


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """`size` images from the split, repeated when the split is smaller than one batch."""
    repeats = -(-size // len(images))
    return np.concatenate([images] * repeats)[:size] if repeats > 1 else images[:size]


def measure(models: dict[str, tuple[nn.Module, Normalizer]], images: np.ndarray, runtime: Runtime,
            batch_size: int, passes: int = PASSES) -> dict[str, dict]:
    """{model: {'throughput_img_s', 'latency_ms' (medians over the passes), their '..._range'
    [min, max] over the passes, 'passes', 'batch_size'}}."""
    batch = batch_of(images, batch_size)
    calls = {name: (lambda m=model, n=normalize: predict_logits(m, batch, n, runtime, batch_size),
                    lambda m=model, n=normalize: predict_logits(m, batch[:1], n, runtime, 1))
             for name, (model, normalize) in models.items()}
    for run_batch, run_one in calls.values():  # warm-up: cuDNN autotuning, allocator, caches
        run_batch(), run_one()
    throughput = {name: [] for name in models}
    latency = {name: [] for name in models}
    for _ in range(passes):
        for name, (run_batch, run_one) in calls.items():
            throughput[name].append(batch_size / statistics.median(timed_calls(run_batch, 1, PASS_SECONDS)))
            latency[name].append(1000 * statistics.median(timed_calls(run_one, LATENCY_CALLS, PASS_SECONDS / 2)))
    return {name: {"batch_size": batch_size, "passes": passes,
                   "throughput_img_s": statistics.median(throughput[name]),
                   "throughput_img_s_range": [min(throughput[name]), max(throughput[name])],
                   "latency_ms": statistics.median(latency[name]),
                   "latency_ms_range": [min(latency[name]), max(latency[name])]} for name in models}
