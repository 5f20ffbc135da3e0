"""Markdown pieces of plots/report.md: tables that GitHub renders.

The published results the recipe aims to beat are params.yaml's `reference`: never measured by this
pipeline, so the report prints them apart from, and marked unlike, the measured ones.
"""
from __future__ import annotations

import re

import numpy as np

from src.params import CIFAR100_TEST_SIZE

# The scale of the reference recipe (params.yaml's defaults): a run at another scale is a check that
# the pipeline works, not a result to hold against the published numbers.
REFERENCE_SCALE = {"model.width": 64, "data.train_limit": None, "data.test_limit": None, "data.val_size": 0}
DISAGREE_RATIO = 1.5  # timed passes whose slowest and fastest differ more: the machine was busy
ALPHA = 0.05  # significance level of the "which differences are real" table


def title(name: str) -> str:
    """'resnet101' -> 'ResNet-101'; any other model name as it is."""
    depth = re.fullmatch(r"resnet(\d+)", name)
    return f"ResNet-{depth.group(1)}" if depth else name


def table(header: list[str], rows: list[list[str]], align: str = "l" + "r" * 20) -> str:
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(marks[a] for a in align[:len(header)]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(models: dict[str, dict], timing: dict[str, dict], references: dict[str, dict],
                  reference: bool) -> str:
    """Measured numbers of the models side by side, then the reference results in italics.

    models: each model's metrics and detail in one dict; references: params.yaml's `reference`
    (top1, top5, epochs, source per model; a model without one gets empty cells). reference: the
    run is at the reference recipe's scale, so its difference to the published top-1 means something.
    """
    names = list(models)
    measured = [
        ("**top-1 (%)**", lambda m, t: f"**{m['top1']:.2f}**"),
        ("top-1 95% interval (bootstrap)", lambda m, t: _interval([m["top1_low"], m["top1_high"]])),
        ("top-5 (%)", lambda m, t: f"{m['top5']:.2f}"),
        ("top-5 95% interval (bootstrap)", lambda m, t: _interval([m["top5_low"], m["top5_high"]])),
        ("cross-entropy loss", lambda m, t: f"{m['loss']:.4f}"),
        ("ECE (%, 15 bins)", lambda m, t: f"{m['ece']:.2f}"),
        ("macro precision / recall / F1 (%)",
         lambda m, t: f"{m['macro_precision']:.2f} / {m['macro_recall']:.2f} / {m['macro_f1']:.2f}"),
        ("superclass of the prediction right (%)", lambda m, t: f"{m['superclass_top1']:.2f}"),
        ("parameters", lambda m, t: f"{m['parameters']:,}"),
        ("epochs trained (peak lr)", lambda m, t: _trained(m)),
        ("weights scored", lambda m, t: ("EMA" if m.get("ema") else "final")
         + (" + flip TTA" if m.get("hflip_tta") else "")),
        ("throughput (img/s; slowest-fastest pass)",
         lambda m, t: f"{t['throughput_img_s']:,.0f} ({_range(t['throughput_img_s_range'], ',.0f')})"),
        ("latency (ms, one image; fastest-slowest pass)",
         lambda m, t: f"{t['latency_ms']:.2f} ({_range(t['latency_ms_range'], '.2f')})"),
    ]
    rows = [[label] + [cell(models[n], timing[n]) for n in names] for label, cell in measured]
    published = {n: references.get(n) or {} for n in names}
    if reference:
        rows.append(["top-1 minus reference top-1 (points)"]
                    + [f"{models[n]['top1'] - published[n]['top1']:+.2f}" if published[n].get("top1") is not None
                       else "" for n in names])
    rows += [[f"*reference {label} (%), not measured here*"] + [_reference(published[n], key) for n in names]
             for key, label in (("top1", "top-1"), ("top5", "top-5"))]
    return table(["test split"] + [title(n) for n in names], rows)


def _reference(published: dict, key: str) -> str:
    """'*78.33 (published ResNet-18 run, 100 epochs)*', or an empty cell for a model without that number."""
    if published.get(key) is None:
        return ""
    where = ", ".join(str(part) for part in (published.get("source"), published.get("epochs") and
                                             f"{published['epochs']} epochs") if part)
    return f"*{published[key]:.2f}" + (f" ({where})*" if where else "*")


def _range(bounds: list[float], spec: str) -> str:
    return f"{bounds[0]:{spec}}-{bounds[1]:{spec}}"


def scale_departures(settings: dict[str, object], epochs: dict[str, int],
                     reference_epochs: dict[str, int]) -> list[str]:
    """How a run departs from the reference recipe's scale, one phrase each; [] when it does not.

    settings: the REFERENCE_SCALE keys' values in this run; epochs: each model's epochs trained;
    reference_epochs: those of the models with a reference result that gives them.
    """
    found = [f"`{key}: {_shown(value)}` (reference: `{_shown(REFERENCE_SCALE[key])}`)"
             for key, value in settings.items() if value != REFERENCE_SCALE[key]]
    shorter = [f"{title(m)} {n}" for m, n in epochs.items() if n != reference_epochs.get(m, n)]
    if shorter:
        found.append("epochs " + ", ".join(shorter) + " (reference: " + ", ".join(
            f"{reference_epochs[m]}" for m in epochs if m in reference_epochs) + ")")
    return found


def _shown(value) -> str:
    return "null" if value is None else str(value)  # as params.yaml spells it


def scale_caveat(departures: list[str]) -> str:
    """The warning at the top of a report whose run is not at the reference recipe's scale."""
    if not departures:
        return ""
    return ("\n> **Not the reference recipe:** " + "; ".join(departures) + ". These numbers show that the "
            "pipeline ran, not what the recipe reaches, so the report does not set them against the "
            "published results (the reference rows are there for orientation only).\n")


def timing_note(timing: dict[str, dict]) -> str:
    """A sentence on how the timings were taken, and a warning for figures whose passes disagree."""
    first = next(iter(timing.values()))
    note = (f"Throughput and latency: {first['device']}, including the host-to-device copy; the median "
            f"of {first['passes']} timed passes in which the models took turns, with the slowest and "
            f"fastest pass beside it (`evaluation/timing/`).")
    uneven = [f"{title(m)} {what} ({_range(t[key], spec)})" for m, t in timing.items()
              for what, key, spec in (("throughput", "throughput_img_s_range", ",.0f"),
                                      ("latency", "latency_ms_range", ".2f"))
              if t[key][0] <= 0 or t[key][1] / t[key][0] > DISAGREE_RATIO]
    if uneven:
        note += (f"\n\n> **The timed passes disagree** (more than {DISAGREE_RATIO:g}x between the slowest "
                 f"and the fastest): {', '.join(uneven)}. The machine was busy while they were timed; "
                 "compare these figures with care, or time them again on an idle machine with "
                 "`dvc repro -f evaluate`.")
    return note


def _interval(bounds: list[float], sign: str = "") -> str:
    return f"[{bounds[0]:{sign}.2f}, {bounds[1]:{sign}.2f}]"


def _p(value: float) -> str:
    """'0.0123', and a p below 0.0001 as '1.8e-05' (the metrics files keep a p to 4 significant
    digits, not decimals); '< 1e-300' for a p of 0, one below what a float holds."""
    if value >= 0.0001:
        return f"{value:.4f}"
    return f"{value:.1e}" if value > 0 else "< 1e-300"


def _pair(key: str) -> tuple[str, str]:
    """'resnet50_vs_resnet18' -> ('resnet50', 'resnet18')."""
    first, second = key.split("_vs_")
    return first, second


def comparisons_table(comparisons: dict[str, dict], alpha: float = ALPHA) -> str:
    """Which differences are real: each pair's top-1 difference, interval, discordant images, p."""
    rows = []
    for key, c in comparisons.items():
        first, second = (title(m) for m in _pair(key))
        rows.append([f"{first} - {second}", f"{c['top1_diff']:+.2f}", _interval(c["top1_diff_ci95"], "+"),
                     f"{c['discordant'][0]:,} / {c['discordant'][1]:,}", _p(c["mcnemar_p"]),
                     _p(c["mcnemar_p_holm"]), "**yes**" if c["mcnemar_p_holm"] < alpha else "no"])
    return table(["pair", "top-1 difference (points)", "95% interval (paired bootstrap)",
                  "images only the first / only the second gets right", "McNemar p (exact)",
                  f"Holm-adjusted p ({len(rows)} pairs)", f"real at {alpha:g}?"], rows, align="lrrrrrc")


def ranking_sentence(metrics: dict[str, dict], comparisons: dict[str, dict], alpha: float = ALPHA) -> str:
    """One sentence: the models ranked by top-1, and which gaps are significant at `alpha`."""
    ranked = sorted(metrics, key=lambda m: -metrics[m]["top1"])
    ranking = f"{title(ranked[0])} ({metrics[ranked[0]]['top1']:.2f}%)"
    for before, m in zip(ranked, ranked[1:]):
        sign = "=" if metrics[m]["top1"] == metrics[before]["top1"] else ">"
        ranking += f" {sign} {title(m)} ({metrics[m]['top1']:.2f}%)"
    real, chance = [], []
    for key, c in comparisons.items():
        better, worse = sorted(_pair(key), key=lambda m: -metrics[m]["top1"])
        if c["mcnemar_p_holm"] < alpha:
            real.append(f"{title(better)} over {title(worse)}")
        else:
            chance.append(f"{title(better)} vs {title(worse)}")
    test = f"exact McNemar test, Holm-adjusted over the {len(comparisons)} pairs"
    if not chance:
        verdict = f"every gap is significant at {alpha:g} ({test})"
    elif not real:
        verdict = (f"no gap is significant at {alpha:g} ({test}): on this test split the models "
                   "cannot be told apart")
    else:
        verdict = (f"significant at {alpha:g} ({test}): {', '.join(real)}; within chance: "
                   f"{', '.join(chance)}")
    return f"By top-1, {ranking}; {verdict}."


def per_class_section(scores: dict[str, tuple]) -> str:
    """Per model, a table of the classes with the best and with the worst F1.

    scores: {model: (best rows, worst rows)} from src/report/per_class.py's best_and_worst.
    """
    parts = []
    for model, (best, worst) in scores.items():
        rows = [[f"{rank} {i + 1}", r["class"], f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['f1']:.2f}",
                 str(r["images"])]
                for rank, part in (("best", best), ("worst", worst)) for i, r in enumerate(part.to_dict("records"))]
        parts.append(f"### {title(model)}\n\n"
                     + table(["rank (F1)", "class", "precision (%)", "recall (%)", "F1 (%)", "test images"],
                             rows, align="llrrrr"))
    return "\n\n".join(parts)


def _trained(metrics: dict) -> str:
    """'100 (0.4)': the epochs and peak lr the model file says it was trained with."""
    trained = metrics["provenance"].get("trained", {})
    return f"{trained['epochs']} ({trained['lr']:g})" if {"epochs", "lr"} <= trained.keys() else "?"


def confused_pairs(counts: dict[str, np.ndarray], names: list[str], superclass: list[str],
                   top: int = 20) -> str:
    """The `top` class pairs most often mistaken for each other (both directions, all models summed)."""
    models = list(counts)
    # Unordered pairs: a->b and b->a are one confusion; the upper triangle holds each pair once.
    pair_counts = {m: np.triu(c + c.T, k=1) for m, c in counts.items()}
    total = sum(pair_counts.values())
    order = sorted(zip(*np.nonzero(total)), key=lambda ij: (-total[ij], names[ij[0]], names[ij[1]]))[:top]
    rows = [[f"{names[i]} / {names[j]}", "yes" if superclass[i] == superclass[j] else "no"]
            + [str(pair_counts[m][i, j]) for m in models] + [str(total[i, j])] for i, j in order]
    if not rows:
        return "_No test image was misclassified._"
    return table(["class pair", "same superclass"] + [title(m) for m in models] + ["all models"],
                 rows, align="lc" + "r" * (len(models) + 1))


def provenance_table(metrics: dict[str, dict], timing: dict[str, dict]) -> str:
    rows = []
    for name, values in metrics.items():
        p = values["provenance"]
        rows.append([title(name), f"`{p['archive_md5']}`", f"`{p['prepared_data_hash']}`",
                     str(values["test_images"]), p["device"], timing[name]["device"], p["torch"]])
    return table(["model", "archive md5", "prepared data hash", "test images", "evaluated on",
                  "timed on", "torch"], rows, align="l" * 7)


def document(metrics: dict[str, dict], timing: dict[str, dict], links: dict[str, str], *, heldout: str,
             pairs: str, comparisons: dict[str, dict], per_class: str, data_hash: str, params_yaml: str,
             departures: list[str], references: dict[str, dict]) -> str:
    """The whole report.md. metrics: each model's metrics and detail; links: figure key -> path
    relative to report.md; departures: how the run departs from the reference scale."""
    models = list(metrics)
    test_images = metrics[models[0]]["test_images"]
    partial = ("" if test_images == CIFAR100_TEST_SIZE else
               f"\n> **Only {test_images:,} of the {CIFAR100_TEST_SIZE:,} test images** (`data.test_limit`): "
               "these numbers are not comparable with the reference results.\n")
    confusion = "\n\n".join(f"![{m} confusion matrix]({links[f'confusion_{m}']})" for m in models)
    return f"""# CIFAR-100: {', '.join(title(m) for m in models)}

Generated by `dvc repro report` from `metrics/` and `plots/`; every number below was measured by this
pipeline on the test split ({test_images:,} images) from prepared data `{data_hash}`, except the rows
marked *reference*, which are published results quoted for comparison.
{scale_caveat(departures)}{partial}
## Results

{results_table(metrics, timing, references, reference=not departures)}

The final model of each run is evaluated; nothing is selected on the test split. Intervals: 95%
percentile bootstrap over the test images (seeded, so re-runs give the same bounds).
{timing_note(timing)}

## Which differences are real

{ranking_sentence(metrics, comparisons)}

{comparisons_table(comparisons)}

The difference is the first model's top-1 minus the second's; its interval resamples the same test
images for both models (paired). McNemar's exact test asks whether the images that only one of the two
gets right split more unevenly than a fair coin would; Holm's adjustment keeps the chance of calling any
of the {len(comparisons)} gaps real by luck at {ALPHA:g} or less. With few such images (a small test split) the
bootstrap interval is too narrow; trust the exact test. None of this covers another training seed:
for that, train several (`python -m src.compare`, see docs/results.md).

## Training curves

Dashed: the {heldout} split, monitored after every epoch.

![training curves]({links['curves']})

## Accuracy per superclass

![per-superclass accuracy]({links['superclass']})

## Per-class precision, recall and F1

From `plots/predictions/` (scikit-learn's `classification_report`): the ten classes with the highest
and the ten with the lowest F1 of each model (the macro averages are in [Results](#results)). Equal
F1s are ordered by recall (higher first), then by class name.

{per_class}

## Confusion matrices

Rows: actual class, columns: predicted class, both grouped by superclass; colour: % of the actual class.

{confusion}

## The 20 most-confused class pairs

Test images of either class predicted as the other, summed over both directions and over the models;
equal counts are ordered by the class names.

{pairs}

## Calibration

Reliability diagrams: accuracy against confidence (top softmax probability) in 15 equal-width bins.

![reliability diagrams]({links['reliability']})

## Augmentation

Training images as the augment stage's pipelines show them to the networks
(`plots/augment_preview.png`, a DVC output: `dvc pull` or `dvc repro augment` to see it).

![augmentation preview]({links['augment_preview']})

## Where the numbers came from

{provenance_table(metrics, timing)}

The params (from `params.yaml`, as validated by `src/params.py`):

```yaml
{params_yaml}```
"""
