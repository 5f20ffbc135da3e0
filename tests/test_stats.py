"""src/evaluate/stats.py: intervals, the exact McNemar test and Holm's adjustment against direct computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from src.evaluate import stats


def outcomes(n: int, rate: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def test_holm_on_a_hand_computed_example():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 (step-down is monotone)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02]  # one test: nothing to adjust


def holm_rejects(p_values: list[float], alpha: float) -> set[int]:
    """Holm's procedure as published: reject the smallest p while p_(k) <= alpha / (m - k)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = set()
    for k, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - k):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_procedure_rejects():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = rng.uniform(0, 0.1, size=int(rng.integers(1, 7))).tolist()
        adjusted = stats.holm(p)
        assert all(a >= q for a, q in zip(adjusted, p)) and max(adjusted) <= 1
        for alpha in (0.001, 0.01, 0.02, 0.05, 0.1):
            assert {i for i, a in enumerate(adjusted) if a <= alpha} == holm_rejects(p, alpha), (p, alpha)


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p: twice the smaller binomial tail of Bin(b + c, 1/2), at most 1."""
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b, c", [(10, 2), (2, 10), (30, 30), (0, 5), (1, 0), (120, 95), (700, 640)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images(b, c):
    assert stats.mcnemar_p(b, c) == pytest.approx(exact_mcnemar(b, c), rel=1e-9)


def test_mcnemar_without_discordant_images_finds_nothing():
    assert stats.mcnemar_p(0, 0) == 1.0


def test_discordant_counts_images_only_one_model_gets_right():
    first = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    second = np.array([1, 0, 1, 0, 0, 0], dtype=bool)
    assert stats.discordant(first, second) == (2, 1)


def test_accuracy_interval_matches_the_normal_approximation_and_repeats():
    correct = outcomes(10_000, 0.78, seed=1)
    low, high = stats.accuracy_ci(correct)
    rate = correct.mean()
    half = 1.96 * math.sqrt(rate * (1 - rate) / len(correct)) * 100  # about 0.81 points
    assert low < rate * 100 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert stats.accuracy_ci(correct) == [low, high]  # fixed seed: the same bounds every run
    assert stats.accuracy_ci(np.zeros(50, dtype=bool)) == [0.0, 0.0]


def test_paired_interval_matches_the_normal_approximation_of_the_paired_difference():
    first = outcomes(10_000, 0.80, seed=2)
    flip = outcomes(10_000, 0.15, seed=3)  # the second model agrees on 85% of images
    second = np.where(flip, ~first, first)
    b, c = stats.discordant(first, second)
    n = len(first)
    diff = (b - c) / n
    half = 1.96 * math.sqrt(((b + c) / n - diff ** 2) / n) * 100
    low, high = stats.difference_ci(first, second)
    assert low < diff * 100 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    # Treated as two independent samples, the interval would be about 1.5 times as wide: pairing
    # is what lets the same 10,000 images separate close models.
    unpaired = 1.96 * math.sqrt((first.mean() * (1 - first.mean()) + second.mean() * (1 - second.mean())) / n)
    assert (high - low) / 2 < 0.8 * unpaired * 100


def test_compare_names_every_pair_larger_model_first():
    correct = {"resnet18": outcomes(2000, 0.70, 4), "resnet34": outcomes(2000, 0.72, 5),
               "resnet50": outcomes(2000, 0.78, 6)}
    out = stats.compare(correct)
    assert list(out) == ["resnet34_vs_resnet18", "resnet50_vs_resnet18", "resnet50_vs_resnet34"]
    for key, entry in out.items():
        first, second = key.split("_vs_")
        assert entry["top1_diff"] == pytest.approx((correct[first].mean() - correct[second].mean()) * 100)
        b, c = entry["discordant"]
        assert (b - c) / 2000 * 100 == pytest.approx(entry["top1_diff"])
        assert entry["mcnemar_p"] == pytest.approx(exact_mcnemar(b, c))
        low, high = entry["top1_diff_ci95"]
        assert low <= entry["top1_diff"] <= high
    assert [e["mcnemar_p_holm"] for e in out.values()] == stats.holm([e["mcnemar_p"] for e in out.values()])


def test_a_small_p_is_written_to_significant_digits_not_rounded_to_zero(tmp_path):
    """metrics/summary.json as the evaluate stage writes it (results.summary, then files.write_json):
    a McNemar p of about 2e-05 is kept, to 4 significant digits; 4 decimals would store 0.0."""
    from src.evaluate import files, results

    n, b, c = 1000, 40, 10  # the first model alone right on 40 images, the second alone on 10
    first = np.zeros(n, dtype=bool)
    second = np.zeros(n, dtype=bool)
    first[:b] = True
    second[b:b + c] = True
    first[b + c:800] = second[b + c:800] = True  # both right on the rest of their images
    exact = exact_mcnemar(b, c)
    assert 1e-5 < exact < 1e-4  # below what 4 decimals can hold
    correct = {"resnet18": second, "resnet50": first}
    headline = {name: {"top1": float(right.mean() * 100)} for name, right in correct.items()}
    files.write_json(tmp_path / "summary.json", results.summary(headline, correct))

    written = json.loads((tmp_path / "summary.json").read_text())["comparisons"][0]
    assert written["pair"] == "resnet50_vs_resnet18" and written["discordant"] == [b, c]
    for key in ("mcnemar_p", "mcnemar_p_holm"):  # one pair: Holm leaves p as it is
        assert written[key] > 0
        assert written[key] == float(f"{exact:.4g}") == 2.386e-05, key
    assert written["top1_diff"] == 3.0  # a percentage keeps its 4 decimals
