"""Inference speed: throughput at the evaluation batch size and single-image latency.

Both time the same path evaluation takes (uint8 on the host -> normalise on the
device -> logits back on the host), so they include transfers, as a user would see.
Kept out of the accuracy metrics: timings differ from run to run.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
from torch import nn

from src.predict import predict_logits
from src.runtime import Runtime
from src.data.normalize import Normalizer


def timed_calls(call: Callable[[], object], min_calls: int, min_seconds: float) -> list[float]:
    """Seconds of each call after one untimed warm-up call (cuDNN autotuning, compilation)."""
    call()
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


def measure(model: nn.Module, images: np.ndarray, normalize: Normalizer, runtime: Runtime,
            batch_size: int, min_seconds: float = 0.3) -> dict:
    """{'throughput_img_s', 'latency_ms', 'batch_size'} from medians over repeated calls."""
    batch = batch_of(images, batch_size)
    run_batch = lambda: predict_logits(model, batch, normalize, runtime, batch_size)  # noqa: E731
    run_one = lambda: predict_logits(model, batch[:1], normalize, runtime, 1)  # noqa: E731
    batch_seconds = statistics.median(timed_calls(run_batch, 3, min_seconds))
    latency_seconds = statistics.median(timed_calls(run_one, 10, min_seconds / 2))
    return {"batch_size": batch_size, "throughput_img_s": batch_size / batch_seconds,
            "latency_ms": latency_seconds * 1000}
