"""Is a difference real? Bootstrap intervals, the exact McNemar test and Holm's adjustment.

Everything works on per-image outcomes (True: the image was scored right), so an
interval or a test says how much the number could move with another draw of test
images of the same kind. Rates and differences are in percent / points, like the
metrics files. Every bootstrap starts from its own generator seeded with
BOOTSTRAP_SEED, so the same outcomes always give the same bytes in metrics/.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000  # resamples of the test images; each one costs a pass over every image's outcome
BOOTSTRAP_SEED = 0            # fixed: identical runs give identical intervals
BOOTSTRAP_BATCH = 200         # resamples held in memory at once: 200 x 10,000 images, 16 MB
CONFIDENCE = 0.95


def _interval(samples: tuple[np.ndarray, ...], statistic, paired: bool) -> list[float]:
    # Percentile, not scipy's default BCa: BCa is undefined when every image has the same
    # outcome (tiny test splits, untrained models), and on thousands of 0/1 outcomes the two
    # agree to a few hundredths of a point.
    result = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, method="percentile",
                             n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                             batch=BOOTSTRAP_BATCH, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _percent(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis) * 100


def _difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return (a.mean(axis=axis) - b.mean(axis=axis)) * 100


def accuracy_ci(correct: np.ndarray) -> list[float]:
    """[low, high] 95% bootstrap interval (percent) of the share of images scored right."""
    return _interval((np.asarray(correct, dtype=np.float64),), _percent, paired=False)


def difference_ci(first: np.ndarray, second: np.ndarray) -> list[float]:
    """[low, high] 95% paired bootstrap interval (points) of accuracy(first) - accuracy(second).

    Paired: each resample draws the same images for both models, so the interval reflects
    how differently the two score the same images, not how hard the draw of images was.
    """
    return _interval((np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)),
                     _difference, paired=True)


def discordant(first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
    """(images only `first` got right, images only `second` got right)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    return int(np.sum(first & ~second)), int(np.sum(second & ~first))


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar test: the binomial test of the discordant counts against 1/2.

    Images both models score alike say nothing about which is better; under "no
    difference" each discordant image is equally likely to favour either model.
    """
    if only_first + only_second == 0:  # no image tells the models apart: nothing to test
        return 1.0
    return float(stats.binomtest(only_first, only_first + only_second, 0.5).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Hand-written: scipy only adjusts for the false discovery rate
    (`scipy.stats.false_discovery_control`: Benjamini-Hochberg/-Yekutieli), and no installed
    library (statsmodels is not a dependency) does Holm's family-wise adjustment. The i-th
    smallest p is multiplied by (m - i), i from 0, kept at least as large as the adjusted
    p before it, and capped at 1 (tests/test_stats.py checks it against the procedure).
    """
    m = len(p_values)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(correct: dict[str, np.ndarray]) -> dict[str, dict]:
    """Every pair of models, the later (larger) one first: {'<b>_vs_<a>': {...}}.

    top1_diff (points), its paired 95% interval, the discordant counts, the exact McNemar
    p-value and the Holm-adjusted one over all the pairs.
    """
    models = list(correct)
    pairs = [(models[j], models[i]) for i in range(len(models)) for j in range(i + 1, len(models))]
    out = {}
    for first, second in pairs:
        counts = discordant(correct[first], correct[second])
        out[f"{first}_vs_{second}"] = {
            "top1_diff": float(_difference(np.asarray(correct[first], dtype=np.float64),
                                           np.asarray(correct[second], dtype=np.float64))),
            "top1_diff_ci95": difference_ci(correct[first], correct[second]),
            "discordant": list(counts),
            "mcnemar_p": mcnemar_p(*counts),
        }
    for entry, adjusted in zip(out.values(), holm([e["mcnemar_p"] for e in out.values()])):
        entry["mcnemar_p_holm"] = adjusted
    return out
