"""The report stage: its tables on hand-made inputs, and the real stage after the real evaluate."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers.evaluated import write_curves
from helpers.models import MODELS
from helpers.pipeline import declared, declared_code
from helpers.project import ROOT
from src.errors import UserError
from src.params import load_params
from src.report import inputs, markdown, per_class
from stages.report import PRINTED_PARAMS

CLASSES = {"fine": ["apple", "bee", "cat", "dog"], "coarse": ["fruit", "animal"],
           "fine_to_coarse": [0, 1, -1, 1]}


# --------------------------------------------------------------------------- pieces

def test_table_is_github_markdown():
    assert markdown.table(["a", "b"], [["1", "2"]], align="lr").splitlines() == [
        "| a | b |", "| :-- | --: |", "| 1 | 2 |"]


def test_class_order_groups_by_superclass_and_puts_unknown_last():
    names, groups = inputs.class_order(CLASSES)
    assert names == ["apple", "bee", "dog", "cat"]
    assert groups == [("fruit", 0, 1), ("animal", 1, 3), ("(superclass unknown)", 3, 4)]


def test_confusion_counts_rows_actual_columns_predicted():
    # plots/predictions/ holds class indices into classes.json's order (apple, bee, cat, dog)
    table = pd.DataFrame({"label": [0, 0, 3, 1], "prediction": [0, 3, 3, 3]})
    counts = inputs.confusion_counts(table, CLASSES["fine"], ["apple", "bee", "dog", "cat"])
    assert counts.tolist() == [[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(UserError, match="classes.json"):
        inputs.confusion_counts(pd.DataFrame({"label": [4], "prediction": [0]}), CLASSES["fine"],
                                ["apple", "bee", "dog", "cat"])


def test_confused_pairs_sum_both_directions_and_models():
    names, superclass = ["a", "b", "c"], ["x", "x", "y"]
    one = np.array([[5, 3, 0], [1, 5, 0], [0, 2, 5]])  # a->b 3, b->a 1, c->b 2
    two = np.array([[5, 0, 0], [0, 5, 0], [0, 4, 5]])  # c->b 4
    rows = markdown.confused_pairs({"resnet18": one, "resnet34": two}, names, superclass).splitlines()[2:]
    assert rows == ["| b / c | no | 2 | 4 | 6 |", "| a / b | yes | 4 | 0 | 4 |"]
    perfect = {"resnet18": np.eye(3, dtype=int) * 4}
    assert "misclassified" in markdown.confused_pairs(perfect, names, superclass)
    many = np.ones((30, 30), dtype=int)
    listed = markdown.confused_pairs({"resnet18": many}, [f"k{i:02d}" for i in range(30)], ["x"] * 30)
    assert len(listed.splitlines()) == 2 + 20  # header, rule, the 20 most confused


METRICS = {m: {"top1": 70.0, "top1_low": 69.1, "top1_high": 70.9, "top5": 90.0, "top5_low": 89.4,
               "top5_high": 90.6, "loss": 1.2, "ece": 3.0, "macro_precision": 70.0,
               "macro_recall": 70.0, "macro_f1": 70.0, "superclass_top1": 80.0, "parameters": 1234567,
               "provenance": {"trained": {"epochs": 100, "lr": 0.4}}}
           for m in MODELS}
TIMING = {m: {"throughput_img_s": 1000.0, "throughput_img_s_range": [950.0, 1020.0], "latency_ms": 2.5,
              "latency_ms_range": [2.4, 2.9], "batch_size": 1024, "passes": 5, "device": "cpu, fp32"}
          for m in MODELS}


REFERENCES = load_params(ROOT / "params.yaml").model_dump()["reference"]  # params.yaml's published results


def test_results_table_marks_the_reference_numbers():
    text = markdown.results_table(METRICS, TIMING, REFERENCES, reference=True)
    lines = text.splitlines()
    assert lines[0] == "| test split | ResNet-18 | ResNet-34 | ResNet-50 |"
    assert "| **top-1 (%)** | **70.00** | **70.00** | **70.00** |" in lines
    assert "| top-1 95% interval (bootstrap) | [69.10, 70.90] | [69.10, 70.90] | [69.10, 70.90] |" in lines
    assert "| top-5 95% interval (bootstrap) | [89.40, 90.60] | [89.40, 90.60] | [89.40, 90.60] |" in lines
    assert "| parameters | 1,234,567 | 1,234,567 | 1,234,567 |" in lines
    assert "| epochs trained (peak lr) | 100 (0.4) | 100 (0.4) | 100 (0.4) |" in lines
    assert "| top-1 minus reference top-1 (points) | -8.33 | -5.00 | -11.45 |" in lines
    reference = [line for line in lines if "reference" in line and "not measured here" in line]
    assert len(reference) == 2
    assert "*78.33 (published ResNet-18 run, 100 epochs)*" in reference[0]
    assert "*75.00 (target; public ResNet-34: 76.76, 100 epochs)*" in reference[0]
    assert "*81.45 (ResNet-50 Space on an A100, 200 epochs)*" in reference[0]
    assert reference[1].endswith("|  |  | *95.70 (ResNet-50 Space on an A100, 200 epochs)* |")
    assert "| throughput (img/s; slowest-fastest pass) | 1,000 (950-1,020) |" in text
    assert "| latency (ms, one image; fastest-slowest pass) | 2.50 (2.40-2.90) |" in text
    # Not at the reference scale: no difference to the published numbers, which stay for orientation
    small = markdown.results_table(METRICS, TIMING, REFERENCES, reference=False)
    assert "minus reference" not in small and "78.33" in small


def test_a_model_without_a_reference_gets_empty_cells():
    models = {**METRICS, "resnet101": METRICS["resnet50"]}
    text = markdown.results_table(models, {**TIMING, "resnet101": TIMING["resnet50"]}, REFERENCES, reference=True)
    lines = text.splitlines()
    assert lines[0] == "| test split | ResNet-18 | ResNet-34 | ResNet-50 | ResNet-101 |"
    assert "| top-1 minus reference top-1 (points) | -8.33 | -5.00 | -11.45 |  |" in lines
    assert [line for line in lines if "not measured here" in line][0].endswith(
        "(ResNet-50 Space on an A100, 200 epochs)* |  |")
    assert markdown.title("resnet101") == "ResNet-101" and markdown.title("wrn-28-10") == "wrn-28-10"


def test_a_run_off_the_reference_scale_is_flagged():
    epochs = {"resnet18": 100, "resnet34": 100, "resnet50": 200}
    reference = {"model.width": 64, "data.train_limit": None, "data.test_limit": None, "data.val_size": 0}
    published = {"resnet18": 100, "resnet34": 100, "resnet50": 200}  # params.yaml's reference epochs
    assert markdown.scale_departures(reference, epochs, published) == []
    assert markdown.scale_caveat([]) == ""
    found = markdown.scale_departures({**reference, "model.width": 16, "data.train_limit": 10000},
                                      {"resnet18": 2, "resnet34": 2, "resnet50": 4}, published)
    assert found == ["`model.width: 16` (reference: `64`)",
                     "`data.train_limit: 10000` (reference: `null`)",
                     "epochs ResNet-18 2, ResNet-34 2, ResNet-50 4 (reference: 100, 100, 200)"]
    caveat = markdown.scale_caveat(found)
    assert caveat.startswith("\n> **Not the reference recipe:** `model.width: 16`") and "pipeline ran" in caveat


def test_timing_note_flags_passes_that_disagree():
    note = markdown.timing_note(TIMING)
    assert "median of 5 timed passes" in note and "disagree" not in note
    busy = {**TIMING, "resnet18": {**TIMING["resnet18"], "latency_ms": 3.0, "latency_ms_range": [2.9, 652.0]}}
    note = markdown.timing_note(busy)
    assert "**The timed passes disagree**" in note and "ResNet-18 latency (2.90-652.00)" in note
    assert "ResNet-34" not in note.split("disagree**")[1]


def comparison(diff: float, low: float, high: float, b: int, c: int, p: float, holm: float) -> dict:
    return {"top1_diff": diff, "top1_diff_ci95": [low, high], "discordant": [b, c], "mcnemar_p": p,
            "mcnemar_p_holm": holm}


COMPARISONS = {  # ResNet-50 clearly ahead, ResNet-18 and -34 within chance of each other
    "resnet34_vs_resnet18": comparison(-0.3, -1.1, 0.5, 410, 440, 0.3204, 0.3204),
    # p as the metrics files keep them, 4 significant digits (binomtest(290, 890) and Holm over 3)
    "resnet50_vs_resnet18": comparison(3.1, 2.3, 3.9, 600, 290, 1.244e-25, 2.487e-25),
    "resnet50_vs_resnet34": comparison(3.4, 2.6, 4.2, 610, 270, 5.451e-31, 1.635e-30),
}
TOP1 = {"resnet18": {"top1": 78.4}, "resnet34": {"top1": 78.1}, "resnet50": {"top1": 81.5}}


def test_comparisons_table_lists_each_pair_with_its_interval_and_tests():
    lines = markdown.comparisons_table(COMPARISONS).splitlines()
    assert lines[0].startswith("| pair | top-1 difference (points) | 95% interval (paired bootstrap) |")
    assert "Holm-adjusted p (3 pairs)" in lines[0]
    assert lines[2:] == [
        "| ResNet-34 - ResNet-18 | -0.30 | [-1.10, +0.50] | 410 / 440 | 0.3204 | 0.3204 | no |",
        "| ResNet-50 - ResNet-18 | +3.10 | [+2.30, +3.90] | 600 / 290 | 1.2e-25 | 2.5e-25 | **yes** |",
        "| ResNet-50 - ResNet-34 | +3.40 | [+2.60, +4.20] | 610 / 270 | 5.5e-31 | 1.6e-30 | **yes** |"]
    # A small p reads as one, not as 0; 0 itself is a p below the smallest float.
    assert [markdown._p(p) for p in (0.0123, 0.0001, 1.8e-05, 0.0)] == ["0.0123", "0.0001", "1.8e-05", "< 1e-300"]


def test_ranking_sentence_ranks_and_names_the_significant_gaps():
    sentence = markdown.ranking_sentence(TOP1, COMPARISONS)
    assert sentence.startswith("By top-1, ResNet-50 (81.50%) > ResNet-18 (78.40%) > ResNet-34 (78.10%);")
    assert "significant at 0.05" in sentence and "Holm-adjusted over the 3 pairs" in sentence
    assert "ResNet-50 over ResNet-18, ResNet-50 over ResNet-34; within chance: ResNet-18 vs ResNet-34." in sentence
    none = {key: {**c, "mcnemar_p_holm": 0.2} for key, c in COMPARISONS.items()}
    assert "no gap is significant at 0.05" in markdown.ranking_sentence(TOP1, none)
    every = {key: {**c, "mcnemar_p_holm": 0.01} for key, c in COMPARISONS.items()}
    assert "every gap is significant at 0.05" in markdown.ranking_sentence(TOP1, every)
    assert sentence.count(".") == 1 + 4  # one sentence (the dot of each number aside)
    tied = {**TOP1, "resnet34": {"top1": 78.4}}
    assert markdown.ranking_sentence(tied, COMPARISONS).startswith(
        "By top-1, ResNet-50 (81.50%) > ResNet-18 (78.40%) = ResNet-34 (78.40%);")


def test_class_scores_equal_a_direct_computation():
    names = ["apple", "bee", "cat", "dog", "eel"]
    table = pd.DataFrame({"label": [0, 0, 0, 1, 1, 2, 3], "prediction": [0, 0, 1, 1, 2, 2, 4]})
    scores = per_class.class_scores(table, names).set_index("class")
    assert list(scores.index) == ["apple", "bee", "cat", "dog"]  # eel: predicted, never a label
    # apple: P 2/2 R 2/3 | bee: P 1/2 R 1/2 | cat: P 1/2 R 1/1 | dog: P 0 (never predicted) R 0
    for name, p, r in (("apple", 1, 2 / 3), ("bee", 0.5, 0.5), ("cat", 0.5, 1), ("dog", 0, 0)):
        f1 = 2 * p * r / (p + r) if p + r else 0
        got = scores.loc[name, ["precision", "recall", "f1"]].tolist()
        assert got == pytest.approx([100 * p, 100 * r, 100 * f1])
    assert scores["images"].tolist() == [3, 2, 1, 1]


def test_best_and_worst_classes_are_disjoint_and_ordered():
    scores = pd.DataFrame({"class": [f"k{i:02d}" for i in range(25)], "precision": 0.0,
                           "recall": [float(i % 7) for i in range(25)], "f1": [float(i) for i in range(25)],
                           "images": 1})
    best, worst = per_class.best_and_worst(scores, 10)
    assert best["class"].tolist() == [f"k{i:02d}" for i in range(24, 14, -1)]
    assert worst["class"].tolist() == [f"k{i:02d}" for i in range(10)]
    few_best, few_worst = per_class.best_and_worst(scores.head(12), 10)
    assert len(few_best) == 10 and few_worst["class"].tolist() == ["k00", "k01"]  # no class in both


def test_training_curves_read_dvclive_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_curves(tmp_path / "resnet18", epochs=4)
    curves = inputs.training_curves(tmp_path / "resnet18", "resnet18")
    assert list(curves.columns) == ["step", "train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr"]
    assert curves["step"].tolist() == [1, 2, 3, 4]
    assert curves["train_loss"].tolist() == pytest.approx([4.6, 4.3, 4.0, 3.7])
    with pytest.raises(UserError, match="dvc repro train-resnet34"):
        inputs.training_curves(tmp_path / "resnet34", "resnet34")


# --------------------------------------------------------------------------- the stage

@pytest.fixture(scope="session")
def reported(evaluated):
    result = evaluated.project.stage("report")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return evaluated.project


def test_report_has_the_table_and_links_that_exist(reported, evaluated):
    text = (reported.root / "plots" / "report.md").read_text()
    assert "| test split | ResNet-18 | ResNet-34 | ResNet-50 |" in text
    tops = [f"**{evaluated.json(f'metrics/{m}.json')['top1']:.2f}**" for m in MODELS]
    assert f"| **top-1 (%)** | {' | '.join(tops)} |" in text
    assert "not measured here" in text and "81.45" in text and "95.70" in text
    assert "Only 100 of the 10,000 test images" in text  # data.test_limit is flagged
    # ... and the whole run is not the reference recipe: said at the top, no "minus reference" row
    top = text.split("## Results")[0]
    assert "**Not the reference recipe:**" in top and "`data.test_limit: 100`" in top
    assert "minus reference" not in text
    assert "median of 5 timed passes" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {"report/curves.png", "report/superclass_accuracy.png", "report/reliability.png",
                "augment_preview.png"} | {f"report/confusion_{m}.png" for m in MODELS}
    assert set(links) == expected
    for link in links:
        image = reported.root / "plots" / link
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
        assert image.stat().st_size > 5000, link
    assert sorted(p.name for p in (reported.root / "plots" / "report").iterdir()) == sorted(
        [link.split("/")[1] for link in expected if link.startswith("report/")] + ["curves.csv"])
    # Every model's curves in one table, for `dvc plots show` (dvc.yaml's plots name no model).
    curves = pd.read_csv(reported.root / "plots" / "report" / "curves.csv")
    assert list(curves.columns) == ["model", "step", "train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr"]
    assert list(dict.fromkeys(curves["model"])) == list(MODELS)


def test_report_says_which_differences_are_real(reported, evaluated):
    text = (reported.root / "plots" / "report.md").read_text()
    comparisons = inputs.comparisons(evaluated.project.root / "metrics/summary.json")
    metrics = {m: evaluated.json(f"metrics/{m}.json") for m in MODELS}
    section = text.split("## Which differences are real")[1].split("\n## ")[0]
    assert markdown.ranking_sentence(metrics, comparisons) in section
    rows = [line for line in section.splitlines() if line.startswith("| ResNet")]
    assert len(rows) == 3
    for row, (key, c) in zip(rows, comparisons.items()):
        first, second = key.split("_vs_")
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == f"{markdown.title(first)} - {markdown.title(second)}"
        assert float(cells[1]) == pytest.approx(c["top1_diff"], abs=0.005)
        assert cells[3] == f"{c['discordant'][0]:,} / {c['discordant'][1]:,}"
    for m in MODELS:  # the side-by-side table carries the intervals
        assert "[{:.2f}, {:.2f}]".format(metrics[m]["top1_low"], metrics[m]["top1_high"]) in text


def test_report_lists_the_best_and_worst_classes_of_each_model(reported, evaluated):
    text = (reported.root / "plots" / "report.md").read_text()
    section = text.split("## Per-class precision, recall and F1")[1].split("\n## ")[0]
    classes = evaluated.json("data/prepared/classes.json")["fine"]
    for m in MODELS:
        table = section.split(f"### {markdown.title(m)}")[1].split("###")[0]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                if line.startswith(("| best", "| worst"))]
        assert [r[0] for r in rows[:10]] == [f"best {i}" for i in range(1, 11)]
        assert [r[0] for r in rows[10:]] == [f"worst {i}" for i in range(1, 11)]
        # F1 of every listed class, recomputed by hand from the predictions file
        predictions = pd.read_csv(reported.root / f"plots/predictions/{m}.csv")
        f1 = {}
        for row in rows:
            k = classes.index(row[1])
            tp = int(((predictions["label"] == k) & (predictions["prediction"] == k)).sum())
            support = int((predictions["label"] == k).sum())
            predicted = int((predictions["prediction"] == k).sum())
            f1[row[1]] = 200 * tp / (support + predicted) if support + predicted else 0.0
            assert float(row[4]) == pytest.approx(f1[row[1]], abs=0.005) and int(row[5]) == support
        assert len(f1) == 20  # no class is both among the best and the worst
        assert min(float(r[4]) for r in rows[:10]) >= max(float(r[4]) for r in rows[10:])


def test_report_states_the_params_and_data_the_numbers_came_from(reported, evaluated):
    text = (reported.root / "plots" / "report.md").read_text()
    data_hash = evaluated.json("evaluation/detail/resnet18.json")["provenance"]["prepared_data_hash"]
    assert f"`{data_hash}`" in text
    assert evaluated.json("data/prepared/stats.json")["archive_md5"] in text
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    printed = yaml.safe_load(block)
    params = reported.params()
    assert list(printed) == list(PRINTED_PARAMS)
    assert printed["data"]["test_limit"] == params["data"]["test_limit"] == 100
    assert printed["runtime"]["eval_batch_size"] == params["runtime"]["eval_batch_size"]
    assert printed["lr"] == params["lr"] and printed["model"]["width"] == params["model"]["width"]


def test_report_fails_clearly_and_keeps_the_old_report_without_metrics(reported):
    metrics = reported.root / "metrics" / "resnet50.json"
    report = reported.root / "plots" / "report.md"
    before = report.read_bytes()
    saved = metrics.read_bytes()
    metrics.unlink()
    try:
        result = reported.stage("report")
    finally:
        metrics.write_bytes(saved)
    assert result.returncode == 1
    assert "metrics/resnet50.json not found: run `dvc repro evaluate`" in result.stderr
    assert "Traceback" not in result.stderr
    assert report.read_bytes() == before


# --------------------------------------------------------------------------- dvc.yaml
# tests/test_lineage.py checks every stage's code deps against its imports; these check the rest.

def test_report_does_not_depend_on_evaluate_or_torch_code():
    """Evaluation code changes reach the report through evaluate's outputs only."""
    code = declared_code("report")
    assert {"stages/report.py", "src/report/figures.py", "src/report/markdown.py"} <= code
    assert not {d for d in code if d.startswith(("src/evaluate/", "src/train/", "src/models/"))}


def test_report_declares_its_data_params_and_outputs():
    stage = declared("report")
    data = {d for d in stage["deps"] if not d.endswith(".py")}
    # Folders, so that no dep names a model: what every model's stages wrote.
    assert data == {"data/prepared/classes.json", "metrics", "evaluation", "plots/reliability",
                    "plots/predictions", "plots/train"}
    assert tuple(stage["params"]) == ("reference", *PRINTED_PARAMS)
    assert stage["outs"] == [{"plots/report.md": {"cache": False}}, {"plots/report": {"cache": False}}]
