"""The evaluate stage: metric functions on hand-computed examples, and the real stage end to end.

The stage test runs `python -m stages.evaluate` in a copy of the working tree on
data/prepared made by the real download + augment stages (the generated archive
served on 127.0.0.1), with tiny models written in the train stage's file format.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers.evaluated import (
    ACCURACY_FILES,
    EVAL_BATCH,
    METRIC_FILES,
    PLOT_TABLES,
    TEST_IMAGES,
    TIMING_FILES,
    WIDTHS,
    write_model_file,
)
from helpers.models import MODELS, build_model
from helpers.project import ROOT, Project
from src import model_file
from src.accuracy import percent, topk_correct
from src.data.normalize import Normalizer
from src.errors import UserError
from src.evaluate import files, metrics, results
from src.evaluate.timing import batch_of, measure
from src.params import RuntimeParams
from src.provenance import data_hash
from src.runtime import resolve

# runtime.* stays on auto here: with a GPU these tests take the CUDA path.
pytestmark = pytest.mark.gpu

HEADLINE = {"top1", "top1_low", "top1_high", "top5", "top5_low", "top5_high", "loss", "ece", "macro_f1"}


def expected_device() -> str:
    """How the stage names the device that runtime.device = auto picks here."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, bf16"
    return "mps, fp32" if torch.backends.mps.is_available() else "cpu, fp32"


ON_CPU = expected_device() == "cpu, fp32"


# --------------------------------------------------------------------------- metric functions

def test_topk_correct_counts_label_among_k_largest():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.2],   # label 1: top-1
                           [0.9, 0.1, 0.8, 0.0],   # label 2: 2nd largest
                           [0.0, 0.1, 0.2, 0.3]])  # label 0: smallest
    labels = np.array([1, 2, 0])
    assert topk_correct(logits, labels, 1).tolist() == [True, False, False]
    assert percent(topk_correct(logits, labels, 1)) == pytest.approx(100 / 3)
    assert percent(topk_correct(logits, labels, 2)) == pytest.approx(200 / 3)
    assert percent(topk_correct(logits, labels, 3)) == pytest.approx(200 / 3)
    assert percent(topk_correct(logits, labels, 5)) == pytest.approx(100)  # k > classes: all


def test_ece_on_a_hand_computed_example():
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.10])
    correct = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    rows = metrics.reliability_bins(confidence, correct, bins=15)
    # 0.95 -> bin 14 (14/15, 1], 0.55 -> bin 8 (8/15, 9/15], 0.10 -> bin 1 (1/15, 2/15]
    assert [(r["bin"], r["count"]) for r in rows] == [(1, 1), (8, 3), (14, 2)]
    assert rows[2]["confidence"] == pytest.approx(95) and rows[2]["accuracy"] == pytest.approx(50)
    assert rows[1]["accuracy"] == pytest.approx(200 / 3)
    # (2 * |50 - 95| + 3 * |66.67 - 55| + 1 * |0 - 10|) / 6 = (90 + 35 + 10) / 6
    assert metrics.expected_calibration_error(rows) == pytest.approx(22.5)


def test_reliability_bins_are_closed_on_the_right():
    rows = metrics.reliability_bins(np.array([1 / 15, 1.0]), np.array([True, False]), bins=15)
    assert [r["bin"] for r in rows] == [0, 14]
    assert rows[0]["lower"] == 0 and rows[-1]["upper"] == pytest.approx(100)


def test_perfect_calibration_has_zero_ece():
    confidence = np.full(10, 0.7)
    correct = np.array([True] * 7 + [False] * 3)
    rows = metrics.reliability_bins(confidence, correct)
    assert metrics.expected_calibration_error(rows) == pytest.approx(0, abs=1e-9)


def test_macro_precision_recall_f1_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    # class 0: P 2/2 R 2/3 F1 0.8 | class 1: P 1/2 R 1/2 F1 0.5 | class 2: P 1/2 R 1/1 F1 2/3
    # class 3 occurs nowhere and is not averaged.
    precision, recall, f1 = metrics.macro_precision_recall_f1(predictions, labels)
    assert precision == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert recall == pytest.approx(100 * (2 / 3 + 0.5 + 1) / 3)
    assert f1 == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)


def test_macro_scores_count_never_predicted_and_never_actual_classes_as_zero():
    # class 0: actual, never predicted (P 0, R 0); class 1 perfect; class 3: predicted, never actual
    precision, recall, f1 = metrics.macro_precision_recall_f1(np.array([3, 1]), np.array([0, 1]))
    assert (precision, recall, f1) == pytest.approx((100 / 3, 100 / 3, 100 / 3))


def test_group_accuracy_per_superclass():
    correct = np.array([True, False, True, True, False])
    groups = np.array([0, 0, 2, 2, 2])
    assert metrics.group_accuracy(correct, groups, ["a", "b", "c"]) == pytest.approx(
        {"a": 50.0, "c": 200 / 3})  # b has no images: absent, not 0


def test_superclass_of_fills_classes_missing_from_the_training_split():
    mapping = metrics.superclass_of([-1, 0, 1], np.array([0, 2]), np.array([1, 1]))
    assert mapping.tolist() == [1, 0, 1]


def test_model_results_on_a_small_split():
    classes = {"fine": ["a0", "a1", "b0", "b1"], "coarse": ["A", "B"], "fine_to_coarse": [0, 0, 1, 1]}
    logits = torch.tensor([[4.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 4.0, 0], [0, 0, 0, 4.0]])
    split = {"fine_labels": np.array([0, 1, 2, 3]), "coarse_labels": np.array([0, 0, 1, 1])}
    out = results.model_results(logits, split, classes)
    m, detail = out["metrics"], out["detail"]
    assert set(m) == HEADLINE  # plain numbers only: what DVC's tables list
    assert m["top1"] == pytest.approx(75) and m["top5"] == pytest.approx(100)
    assert detail["superclass_top1"] == pytest.approx(75)  # a1 predicted as b0: wrong superclass
    assert detail["per_superclass"] == pytest.approx({"A": 50.0, "B": 100.0})
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(
        logits, torch.tensor([0, 1, 2, 3])).item())
    # DVC's confusion plot is by superclass: a1 (of A) predicted as b0 (of B)
    assert out["confusion"] == [{"actual": "A", "predicted": "A"}, {"actual": "A", "predicted": "B"},
                                {"actual": "B", "predicted": "B"}, {"actual": "B", "predicted": "B"}]
    assert [(r["class"], r["superclass"], r["accuracy"]) for r in out["per_class"]] == [
        ("a0", "A", 100.0), ("a1", "A", 0.0), ("b0", "B", 100.0), ("b1", "B", 100.0)]
    assert sum(r["count"] for r in out["reliability"]) == 4
    assert out["correct"].tolist() == [True, False, True, True]
    # Each image: its label, the argmax, the max softmax probability, the classes best first.
    p_top = float(torch.softmax(logits[0], 0).max())
    first = out["predictions"][0]
    assert {k: first[k] for k in ("index", "label", "prediction")} == {"index": 0, "label": 0, "prediction": 0}
    assert first["confidence"] == pytest.approx(p_top)
    assert [r["prediction"] for r in out["predictions"]] == [0, 2, 2, 3]
    for row in out["predictions"]:  # 4 classes: all of them, the predicted one first
        assert row["top5"].split()[0] == str(row["prediction"]) and sorted(row["top5"].split()) == list("0123")
    assert 0 <= m["top1_low"] <= 75 <= m["top1_high"] <= 100
    assert m["top5_low"] == m["top5_high"] == 100.0


def test_rounded_json_is_deterministic(tmp_path):
    value = {"b": np.float32(1 / 3), "a": [np.int64(2), -1e-9, True], "s": "x"}
    files.write_json(tmp_path / "one.json", value)
    files.write_json(tmp_path / "two.json", dict(reversed(list(value.items()))))
    text = (tmp_path / "one.json").read_text()
    assert text == (tmp_path / "two.json").read_text()
    assert json.loads(text) == {"a": [2, 0.0, True], "b": 0.3333, "s": "x"}
    assert "-0.0" not in text


def test_timing_of_tiny_models_over_passes():
    runtime = resolve(RuntimeParams(device="cpu", compile=False))
    models = {name: (build_model(name, width=2), Normalizer([0.5] * 3, [0.25] * 3, runtime.device,
                                                           runtime.channels_last)) for name in ("resnet18", "resnet50")}
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert len(batch_of(images, 12)) == 12  # a split smaller than one batch is repeated
    timings = measure(models, images, runtime, batch_size=8, passes=3)
    assert list(timings) == ["resnet18", "resnet50"]
    for t in timings.values():
        assert t["batch_size"] == 8 and t["passes"] == 3
        for key in ("throughput_img_s", "latency_ms"):  # the median pass, within the passes' range
            low, high = t[f"{key}_range"]
            assert 0 < low <= t[key] <= high


def test_a_model_trained_on_other_data_is_refused(tmp_path):
    path = tmp_path / "resnet18.pt"
    write_model_file(path, "resnet18", 2, prepared_hash="a" * 32, mean=[0.5] * 3, std=[0.25] * 3)
    state = model_file.read(path)
    assert state["model"] == "resnet18" and state["architecture"] == {"block": "basic", "layers": [2, 2, 2, 2]}
    model_file.check_trained_on(state, path, "a" * 32)
    with pytest.raises(UserError, match=r"stale.*dvc repro train-resnet18"):
        model_file.check_trained_on(state, path, "b" * 32)


def test_a_hostile_model_file_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "resnet18.pt"
    torch.save({"payload": 1}, path)  # a real torch zip file, then its pickle swapped for a hostile one
    with zipfile.ZipFile(path) as original:
        entries = {i.filename: original.read(i) for i in original.infolist()}
    pickle_name = next(name for name in entries if name.endswith("data.pkl"))
    entries[pickle_name] = b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR."
    with zipfile.ZipFile(path, "w") as hostile:
        for name, data in entries.items():
            hostile.writestr(name, data)
    with pytest.raises(UserError, match=r"refusing .*resnet18.pt.*safe loader rejects"):
        model_file.read(path)
    assert not sentinel.exists()
    path.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="refusing"):
        model_file.read(path)


def test_a_missing_model_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="not found.*dvc repro train-resnet50"):
        model_file.read(tmp_path / "resnet50.pt")


# --------------------------------------------------------------------------- stage inputs

# --------------------------------------------------------------------------- the stage

def test_metrics_files_have_the_expected_keys_and_ranges(evaluated):
    stats = evaluated.json("data/prepared/stats.json")
    classes = evaluated.json("data/prepared/classes.json")
    for name in MODELS:
        m = evaluated.json(f"metrics/{name}.json")
        detail = evaluated.json(f"evaluation/detail/{name}.json")
        assert set(m) == HEADLINE and all(type(v) in (int, float) for v in m.values())
        assert {"macro_precision", "macro_recall", "superclass_top1", "per_superclass", "parameters",
                "test_images", "val_images", "hflip_tta", "ema", "provenance"} == set(detail)
        assert detail["test_images"] == TEST_IMAGES and detail["val_images"] == 0  # no val: no `val` metrics
        for key in ("top1", "top5", "ece", "macro_f1"):
            assert 0 <= m[key] <= 100, (name, key, m[key])
        for key in ("macro_precision", "macro_recall", "superclass_top1"):
            assert 0 <= detail[key] <= 100, (name, key, detail[key])
        assert m["top1"] <= m["top5"] and m["top1"] <= detail["superclass_top1"]
        for key in ("top1", "top5"):  # 95% bootstrap intervals around the measured numbers
            low, high = m[f"{key}_low"], m[f"{key}_high"]
            assert 0 <= low <= m[key] <= high <= 100 and high - low < 100, (name, key, low, high)
        assert 0 < m["loss"] < 50
        assert detail["parameters"] == sum(p.numel() for p in build_model(name, width=WIDTHS.get(name, 2)).parameters())
        assert set(detail["per_superclass"]) <= set(classes["coarse"]) and len(detail["per_superclass"]) >= 10
        assert all(0 <= v <= 100 for v in detail["per_superclass"].values())
        p = detail["provenance"]
        assert p["archive_md5"] == stats["archive_md5"]
        assert p["prepared_data_hash"] == data_hash(evaluated.project.root / "data/prepared")
        assert p["device"] == expected_device() and p["torch"] == torch.__version__
        assert p["trained"] == {"epochs": 1, "lr": 0.1}  # from the model file, not params.yaml
        # rounded to 4 decimals, keys sorted
        assert all(round(v, 4) == v for v in m.values() if isinstance(v, float))
        assert list(m) == sorted(m) and list(detail) == sorted(detail)


def test_summary_puts_each_top1_side_by_side(evaluated):
    summary = evaluated.json("metrics/summary.json")
    assert list(summary) == sorted([*MODELS, "comparisons"])
    for name in MODELS:  # no val split here: the test top-1 alone
        assert summary[name] == {"top1": evaluated.json(f"metrics/{name}.json")["top1"]}
    # A list of records: DVC lists numbers only, so the comparisons stay out of its tables.
    assert isinstance(summary["comparisons"], list)


def test_summary_compares_every_pair_on_the_same_images(evaluated):
    """Recomputed here from the per-image predictions with scipy directly."""
    from scipy.stats import binomtest
    comparisons = {entry.pop("pair"): entry for entry in evaluated.json("metrics/summary.json")["comparisons"]}
    assert list(comparisons) == ["resnet34_vs_resnet18", "resnet50_vs_resnet18", "resnet50_vs_resnet34"]
    right = {}
    for name in MODELS:
        table = np.loadtxt(evaluated.project.root / f"plots/predictions/{name}.csv", delimiter=",",
                           skiprows=1, usecols=(1, 2), dtype=np.int64)
        right[name] = table[:, 0] == table[:, 1]
    p_values = []
    for key, entry in comparisons.items():
        first, second = key.split("_vs_")
        top1 = {m: evaluated.json(f"metrics/{m}.json")["top1"] for m in (first, second)}
        assert entry["top1_diff"] == pytest.approx(top1[first] - top1[second], abs=2e-4)
        b, c = int(np.sum(right[first] & ~right[second])), int(np.sum(right[second] & ~right[first]))
        assert entry["discordant"] == [b, c]
        p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert entry["mcnemar_p"] == files.significant(p)  # p-values: 4 significant digits, not decimals
        p_values.append(p)
        low, high = entry["top1_diff_ci95"]
        assert low <= entry["top1_diff"] <= high
    # Holm over the three pairs, spelled out for three p-values
    order = np.argsort(p_values)
    expected = np.minimum(1, np.maximum.accumulate(np.array(p_values)[order] * [3, 2, 1]))
    for rank, i in enumerate(order):
        assert list(comparisons.values())[i]["mcnemar_p_holm"] == files.significant(expected[rank])


def test_predictions_agree_with_an_independent_forward_pass(evaluated):
    import pandas as pd
    root = evaluated.project.root
    with np.load(root / "data/prepared/test.npz") as npz:
        images, labels = npz["images"], npz["fine_labels"]
    for name in MODELS:
        table = pd.read_csv(root / f"plots/predictions/{name}.csv", dtype={"top5": str})
        assert list(table.columns) == ["index", "label", "prediction", "confidence", "top5"]
        assert table["index"].tolist() == list(range(TEST_IMAGES)) and table["label"].tolist() == labels.tolist()
        top5 = np.array([[int(k) for k in row.split()] for row in table["top5"]])
        assert top5.shape == (TEST_IMAGES, 5) and (top5[:, 0] == table["prediction"]).all()
        m = evaluated.json(f"metrics/{name}.json")
        assert m["top1"] == round(float(np.mean(table["prediction"] == labels) * 100), 4)
        assert m["top5"] == round(float(np.mean((top5 == labels[:, None]).any(1)) * 100), 4)
        assert table["confidence"].between(0, 1).all()
        if ON_CPU:
            model, x = independent_model_and_inputs(root, name, images)
            with torch.no_grad():
                probs = model(x).softmax(1).double().numpy()
            assert table["confidence"].to_numpy() == pytest.approx(probs.max(1), abs=1e-4)
            # The five listed are the five most probable, best first (up to float noise between the
            # two forward passes, which may swap near-ties of these untrained models).
            listed = np.take_along_axis(probs, top5, axis=1)
            assert (np.diff(listed, axis=1) <= 1e-6).all()
            rest = probs.copy()
            np.put_along_axis(rest, top5, -1.0, axis=1)
            assert (listed[:, -1] >= rest.max(1) - 1e-6).all()


def test_timings_are_kept_apart(evaluated):
    for name in MODELS:
        t = evaluated.json(f"evaluation/timing/{name}.json")
        assert t["batch_size"] == EVAL_BATCH and t["device"] == expected_device()
        assert t["passes"] == 5
        for key in ("throughput_img_s", "latency_ms"):
            assert 0 < t[f"{key}_range"][0] <= t[key] <= t[f"{key}_range"][1]
        assert not {"throughput_img_s", "latency_ms"} & set(evaluated.json(f"metrics/{name}.json"))


def test_two_runs_give_byte_identical_accuracy_files(evaluated):
    root = evaluated.project.root
    for rel in ACCURACY_FILES:
        assert (root / rel).read_bytes() == evaluated.first_bytes[rel], f"{rel} differs between runs"


def independent_model_and_inputs(root: Path, name: str, images: np.ndarray):
    """The model file loaded without the project's evaluate code, and the images normalised by hand."""
    state = torch.load(root / "models" / f"{name}.pt", weights_only=True)
    model = build_model(name, width=state["width"]).eval()
    model.load_state_dict(state["state_dict"])
    mean = torch.tensor(state["normalize"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(state["normalize"]["std"]).view(1, 3, 1, 1)
    return model, (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


def test_metrics_agree_with_an_independent_forward_pass(evaluated):
    """The superclass confusion rows match the model run here in fp32, with its stored normalisation."""
    root = evaluated.project.root
    classes = evaluated.json("data/prepared/classes.json")
    with np.load(root / "data/prepared/test.npz") as npz:
        images, labels, coarse = npz["images"], npz["fine_labels"], npz["coarse_labels"]
    # classes.json's mapping (from the training split), completed from the test labels
    superclass_of = ({k: c for k, c in enumerate(classes["fine_to_coarse"]) if c >= 0}
                     | dict(zip(labels.tolist(), coarse.tolist())))
    for name in MODELS:
        model, x = independent_model_and_inputs(root, name, images)
        with torch.no_grad():
            mine = [classes["coarse"][superclass_of[p]] if p in superclass_of else None
                    for p in model(x).argmax(1).tolist()]
        rows = (root / f"plots/confusion/{name}.csv").read_text().splitlines()
        assert rows[0] == "actual,predicted" and len(rows) == 1 + len(labels)
        actual, predicted = zip(*(row.split(",") for row in rows[1:]))
        assert list(actual) == [classes["coarse"][c] for c in coarse]
        assert set(actual) | set(predicted) <= set(classes["coarse"]) | {"(superclass unknown)"}
        detail = evaluated.json(f"evaluation/detail/{name}.json")
        right = float(np.mean(np.array(actual) == np.array(predicted)) * 100)
        assert detail["superclass_top1"] == pytest.approx(right, abs=1e-4)
        if ON_CPU:
            predicted = [p if p != "(superclass unknown)" else None for p in predicted]
            assert list(predicted) == mine
        else:  # bf16 on an accelerator may flip near-ties of these untrained models
            assert np.mean(np.array(predicted) == np.array(mine)) >= 0.8


def linked_copy(evaluated, path: Path) -> Project:
    """The evaluated project under `path`, its files hard links (the stages replace their output
    folders, never write into a file), params.yaml a copy (set_params writes into it)."""
    import os
    import shutil
    project = Project(path, env=evaluated.project.env)
    shutil.copytree(evaluated.project.root, path, copy_function=os.link, ignore=shutil.ignore_patterns(".git"))
    (path / "params.yaml").unlink()
    shutil.copyfile(evaluated.project.root / "params.yaml", path / "params.yaml")
    return project


def test_hflip_tta_scores_the_averaged_softmax_and_is_recorded(evaluated, tmp_path):
    """evaluate.hflip_tta: top-1 from the mean of the softmaxes of each image and its mirror."""
    assert evaluated.json("evaluation/detail/resnet18.json")["hflip_tta"] is False
    project = linked_copy(evaluated, tmp_path / "tta")
    project.set_params({"evaluate.hflip_tta": True})
    result = project.stage("evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(project.root / "data/prepared/test.npz") as npz:
        images, labels = npz["images"], npz["fine_labels"]
    for name in MODELS:
        model, x = independent_model_and_inputs(project.root, name, images)
        with torch.no_grad():
            # float64: a float32 probability of e^-44 (these untrained models) underflows to log(0)
            probs = (model(x).double().softmax(1) + model(x.flip(3)).double().softmax(1)) / 2
        metrics_file = json.loads((project.root / f"metrics/{name}.json").read_text())
        assert json.loads((project.root / f"evaluation/detail/{name}.json").read_text())["hflip_tta"] is True
        top1 = float(np.mean(probs.argmax(1).numpy() == labels) * 100)
        if ON_CPU:
            assert metrics_file["top1"] == pytest.approx(top1, abs=1e-4)
        assert metrics_file["loss"] == pytest.approx(
            torch.nn.functional.nll_loss(probs.log(), torch.from_numpy(labels)).item(), rel=0.02)


def test_val_split_is_scored_as_the_test_split_is(evaluated, tmp_path):
    """data.val_size > 0: metrics/<model>.json gains val {top1, top5, loss} (what tuning chooses
    by) and summary.json each model's val.top1, all as an independent forward pass finds them."""
    project = linked_copy(evaluated, tmp_path / "val")
    project.set_params({"data.val_size": 50})
    result = project.stage("augment")
    assert result.returncode == 0, result.stderr[-3000:]
    prepared = project.root / "data" / "prepared"
    stats = json.loads((prepared / "stats.json").read_text())
    for seed, name in enumerate(MODELS):  # the same untrained models, made for the new split
        (project.root / "models" / f"{name}.pt").unlink()  # a hard link to the other project's file
        write_model_file(project.root / "models" / f"{name}.pt", name, WIDTHS.get(name, 2),
                         data_hash(prepared), stats["mean"], stats["std"], seed)
    result = project.stage("evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "100 test images and 50 val images" in result.stdout
    with np.load(prepared / "val.npz") as npz:
        images, labels = npz["images"], npz["fine_labels"]
    summary = json.loads((project.root / "metrics/summary.json").read_text())
    for name in MODELS:
        metrics_file = json.loads((project.root / f"metrics/{name}.json").read_text())
        assert set(metrics_file) == HEADLINE | {"val"} and set(metrics_file["val"]) == {"top1", "top5", "loss"}
        assert summary[name] == {"top1": metrics_file["top1"], "val": {"top1": metrics_file["val"]["top1"]}}
        assert json.loads((project.root / f"evaluation/detail/{name}.json").read_text())["val_images"] == 50
        model, x = independent_model_and_inputs(project.root, name, images)
        with torch.no_grad():
            logits = model(x).double()
        top5 = (logits.topk(5, dim=1).indices == torch.from_numpy(labels).view(-1, 1)).any(1).double().mean() * 100
        if ON_CPU:
            assert metrics_file["val"]["top1"] == pytest.approx(
                float(np.mean(logits.argmax(1).numpy() == labels) * 100), abs=1e-4)
            assert metrics_file["val"]["top5"] == pytest.approx(top5.item(), abs=1e-4)
        assert metrics_file["val"]["loss"] == pytest.approx(
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item(), rel=0.02)


def test_reliability_table_reproduces_the_ece(evaluated):
    import pandas as pd
    for name in MODELS:
        table = pd.read_csv(evaluated.project.root / f"plots/reliability/{name}.csv")
        assert list(table.columns) == ["bin", "lower", "upper", "confidence", "accuracy", "count"]
        assert table["count"].sum() == TEST_IMAGES and table["bin"].between(0, 14).all()
        ece = (table["count"] * (table["accuracy"] - table["confidence"]).abs()).sum() / TEST_IMAGES
        assert evaluated.json(f"metrics/{name}.json")["ece"] == pytest.approx(ece, abs=1e-3)
        per_class = pd.read_csv(evaluated.project.root / f"plots/per_class/{name}.csv")
        assert per_class["images"].sum() == TEST_IMAGES


def test_a_stale_model_is_refused_and_nothing_is_written(evaluated):
    root = evaluated.project.root
    model = root / "models" / "resnet34.pt"
    original = model.read_bytes()
    before = {rel: (root / rel).read_bytes() for rel in ACCURACY_FILES + TIMING_FILES}
    state = torch.load(model, weights_only=True)
    try:
        state["prepared_data_hash"] = "0" * 32
        torch.save(state, model)
        result = evaluated.project.stage("evaluate")
        assert result.returncode == 1
        assert "models/resnet34.pt is stale" in result.stderr and "Traceback" not in result.stderr
        assert "dvc repro train-resnet34" in result.stderr
    finally:
        model.write_bytes(original)
    assert {rel: (root / rel).read_bytes() for rel in before} == before
    leftovers = [p for p in (root / "metrics").rglob("*") if ".tmp" in p.name]
    leftovers += [p for p in (root / "plots").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_dvc_metrics_and_plots_show_and_diff(evaluated):
    project = evaluated.project
    shown = project.dvc("metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    revisions = json.loads(shown.stdout)  # {"": {"data": ...}}: the workspace (no revision name)
    data = revisions.get("workspace", revisions.get(""))["data"]
    assert set(data) == set(METRIC_FILES)  # detail and timings are in git, but not DVC metrics
    assert data["metrics/resnet18.json"]["data"]["top1"] == evaluated.json("metrics/resnet18.json")["top1"]
    table = project.dvc("metrics", "show")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert len(rows) == 1 + len(METRIC_FILES) and rows[0].split()[:2] == ["Path", "ece"]
    assert max(len(row) for row in rows) <= 200, table.stdout  # every row readable in one line
    assert "resnet18.top1" in rows[0] and "comparisons" not in table.stdout

    # The curves are the report's table of every model's: draw them from a report of these runs.
    report = project.stage("report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert project.git("add", "-A").returncode == 0
    assert project.git("commit", "-q", "-m", "evaluated").returncode == 0
    for command in (["plots", "show", "--json"], ["plots", "diff", "--json", "HEAD"]):
        result = project.dvc(*command)
        assert result.returncode == 0, result.stderr
        plots = json.loads(result.stdout)
        assert not plots.get("errors"), plots["errors"]
        rendered = plots["data"]
        expected = {"train/loss", "train/acc", "heldout/loss", "heldout/acc", "lr"} | {
            f"plots/{kind}/{m}.csv" for kind in ("confusion", "reliability", "per_class") for m in MODELS}
        assert expected == set(rendered), sorted(rendered)
        curves = rendered["train/loss"][0]["content"]["data"]["values"]
        assert {row["model"] for row in curves} == set(MODELS)  # all the models, in one plot
        confusion = rendered["plots/confusion/resnet18.csv"][0]["content"]
        assert confusion["data"]["values"][0].keys() >= {"actual", "predicted"}
        assert len(confusion["data"]["values"]) == TEST_IMAGES * (1 if command[1] == "show" else 2)


# --------------------------------------------------------------------------- dvc.yaml
# tests/test_lineage.py checks every stage's code deps against its imports; these check the rest.

def declared(stage: str) -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]


def declared_code(stage: str) -> set[str]:
    return {d for d in declared(stage)["deps"] if d.endswith(".py")}


def test_evaluate_declares_its_data_and_params():
    stage = declared("evaluate")
    data = {d for d in stage["deps"] if not d.endswith(".py")}
    assert data == {"data/prepared"} | {f"models/{m}.pt" for m in MODELS}
    assert stage["params"] == ["model", "evaluate", "runtime"]  # model: the list of models
    # Folders, so that no output names a model: the metrics (DVC metrics, in git), the detail and
    # timings (in git, not metrics), the plot tables (in the DVC cache).
    assert stage["metrics"] == [{"metrics": {"cache": False}}]
    assert stage["outs"] == [{"evaluation": {"cache": False}}] + [f"plots/{kind}" for kind in PLOT_TABLES]


def test_top_level_plots_name_no_model():
    plots = {next(iter(p)): next(iter(p.values())) for p in
             yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    for curve in ("train/loss", "train/acc", "heldout/loss", "heldout/acc", "lr"):
        assert plots[curve]["x"] == "step"
        assert plots[curve]["y"] == {"plots/report/curves.csv": curve.replace("/", "_")}
    confusion = plots["plots/confusion"]
    assert confusion | {"template": "confusion", "x": "actual", "y": "predicted"} == confusion
    assert plots["plots/reliability"]["y"] == "accuracy" and plots["plots/per_class"]["y"] == "superclass"


def test_report_code_changes_do_not_rerun_evaluate():
    assert {d for d in declared_code("evaluate") if d.startswith("src/")} >= {
        "src/evaluate/metrics.py", "src/evaluate/results.py", "src/evaluate/stats.py", "src/predict.py"}
    assert not {d for d in declared_code("evaluate") if d.startswith("src/report/")}
