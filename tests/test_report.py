"""The report stage: its tables on hand-made inputs, and the real stage after the real evaluate."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from src.cli import UserError
from src.params import MODELS
from src.report import inputs, markdown
from stages.report import PRINTED_PARAMS
from test_evaluate import declared, declared_code, evaluated_project, write_curves

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
    table = pd.DataFrame({"actual": ["apple", "apple", "dog", "bee"],
                          "predicted": ["apple", "dog", "dog", "dog"]})
    counts = inputs.confusion_counts(table, ["apple", "bee", "dog", "cat"])
    assert counts.tolist() == [[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(UserError, match="classes.json"):
        inputs.confusion_counts(pd.DataFrame({"actual": ["eel"], "predicted": ["apple"]}), ["apple"])


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


def test_results_table_marks_the_reference_numbers():
    metrics = {m: {"top1": 70.0, "top5": 90.0, "loss": 1.2, "ece": 3.0, "macro_precision": 70.0,
                   "macro_recall": 70.0, "macro_f1": 70.0, "superclass_top1": 80.0, "parameters": 1234567,
                   "provenance": {"trained": {"epochs": 100, "lr": 0.4}}}
               for m in MODELS}
    timing = {m: {"throughput_img_s": 1000.0, "latency_ms": 2.5, "batch_size": 1024} for m in MODELS}
    text = markdown.results_table(metrics, timing)
    lines = text.splitlines()
    assert lines[0] == "| test split | ResNet-18 | ResNet-34 | ResNet-50 |"
    assert "| **top-1 (%)** | **70.00** | **70.00** | **70.00** |" in lines
    assert "| parameters | 1,234,567 | 1,234,567 | 1,234,567 |" in lines
    assert "| epochs trained (peak lr) | 100 (0.4) | 100 (0.4) | 100 (0.4) |" in lines
    assert "| top-1 minus reference top-1 (points) | -8.33 | -5.00 | -11.45 |" in lines
    reference = [line for line in lines if "reference" in line and "not measured here" in line]
    assert len(reference) == 2
    assert "78.33" in reference[0] and "76.76" in reference[0] and "75.00 target" in reference[0]
    assert "81.45" in reference[0] and "95.70" in reference[1]


def test_training_curves_read_dvclive_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_curves(tmp_path / "resnet18", epochs=4)
    curves = inputs.training_curves(tmp_path / "resnet18", "resnet18")
    assert list(curves.columns) == ["step", "train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr"]
    assert curves["step"].tolist() == [0, 1, 2, 3]
    assert curves["train_loss"].tolist() == pytest.approx([4.6, 4.3, 4.0, 3.7])
    with pytest.raises(UserError, match="dvc repro train-resnet34"):
        inputs.training_curves(tmp_path / "resnet34", "resnet34")


# --------------------------------------------------------------------------- the stage

@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, downloaded):
    """The project tests/test_evaluate.py evaluated (built once, whichever file runs first)."""
    return evaluated_project(tmp_path_factory, downloaded)


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
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {"report/curves.png", "report/superclass_accuracy.png", "report/reliability.png",
                "augment_preview.png"} | {f"report/confusion_{m}.png" for m in MODELS}
    assert set(links) == expected
    for link in links:
        image = reported.root / "plots" / link
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
        assert image.stat().st_size > 5000, link
    assert sorted(p.name for p in (reported.root / "plots" / "report").iterdir()) == sorted(
        link.split("/")[1] for link in expected if link.startswith("report/"))


def test_report_states_the_params_and_data_the_numbers_came_from(reported, evaluated):
    text = (reported.root / "plots" / "report.md").read_text()
    data_hash = evaluated.json("metrics/resnet18.json")["provenance"]["prepared_data_hash"]
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
    assert data == ({"data/prepared/classes.json"}
                    | {f"metrics/{m}.json" for m in MODELS} | {f"metrics/timing/{m}.json" for m in MODELS}
                    | {f"plots/{kind}/{m}.csv" for kind in ("confusion", "reliability") for m in MODELS}
                    | {f"plots/train/{m}" for m in MODELS})
    assert tuple(stage["params"]) == PRINTED_PARAMS
    assert stage["outs"] == [{"plots/report.md": {"cache": False}}, {"plots/report": {"cache": False}}]
