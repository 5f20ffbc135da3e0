"""docs/models.md "Add a model": ResNet-101 as three edits and no Python, and nothing else retrains.

Follows the page's steps (the snippets are read out of its "Add a model" section) in a copy of
the repository at a tiny width: the model is added, trained, evaluated, compared, reported, served
and classified with; then it is removed the same way and the three original models' outputs are
the bytes they were.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers.adding import insert_models, original_outputs, snippets
from helpers.commands import ok, ran_stages, run_cmd
from helpers.docs import section
from helpers.models import MODELS, TRAIN_STAGES
from helpers.pipeline import resolved_stages, written_out
from helpers.project import ROOT, copy_project

NEW = "resnet101"


def readme_steps() -> tuple[str, str, str]:
    """(the params.yaml block, the dvc.yaml stage, evaluate's dep line) of docs/models.md "Add a model"."""
    params_block, stage = snippets("models.md", "Add a model")[:2]
    dep = re.search(r"`(- models/resnet101\.pt)`", section("models.md", "Add a model")).group(1)
    return params_block, stage, dep


def add_model(root: Path) -> None:
    """The page's three edits, as a script makes them: text inserted, nothing else rewritten."""
    params_block, stage, dep = readme_steps()
    insert_models(root, params_block, stage, [dep.removeprefix("- models/").removesuffix(".pt")])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment, by hand."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_tiny):
    """The three models trained and committed."""
    return copy_project(trained_tiny, tmp_path_factory.mktemp("add-model") / "project")


def test_the_readme_steps_are_three_edits_and_the_stage_resolves_as_written_out(tmp_path):
    params_block, stage, dep = readme_steps()
    block = yaml.safe_load(params_block)[NEW]
    assert block["block"] == "bottleneck" and block["layers"] == [3, 4, 23, 3]
    assert set(block) == {"block", "layers", "epochs_scale", "lr_scale", "mixup_alpha", "cutmix_alpha",
                          "cutmix_prob", "autoaugment", "augment"}  # the architecture and every recipe key
    assert "*train_deps" in stage and "*train_params" in stage and dep == f"- models/{NEW}.pt"
    # The short stage (anchors) resolves as the same stage written out in full, and DVC runs either.
    anchored = tmp_path / "anchored"
    for folder in (anchored, tmp_path / "full"):
        folder.mkdir()
        ok(run_cmd(["git", "init", "-q"], cwd=folder))
        (folder / ".dvc").mkdir()
        (folder / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (anchored / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    add_model(anchored)
    full = written_out(yaml.safe_load((anchored / "dvc.yaml").read_text()))
    (tmp_path / "full" / "dvc.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    (tmp_path / "full" / "params.yaml").write_text((anchored / "params.yaml").read_text())
    resolved = resolved_stages(anchored)
    assert resolved == resolved_stages(tmp_path / "full")
    assert resolved[f"train-{NEW}"]["deps"] == resolved["train-resnet18"]["deps"]
    assert f"models/{NEW}.pt" in resolved["evaluate"]["deps"]


def test_adding_a_model_retrains_nothing_else_and_removing_it_leaves_the_others(project, tmp_path):
    root = project.root
    before = original_outputs(root)
    params, pipeline = (root / "params.yaml").read_text(), (root / "dvc.yaml").read_text()
    # Half an addition (the block without its stage and dep) is refused in one line, before any work.
    add_model(root)
    (root / "dvc.yaml").write_text(pipeline)
    half = project.stage("evaluate")
    assert half.returncode == 1 and "Traceback" not in half.stderr
    assert (f"params.yaml has a model.{NEW} block, but dvc.yaml has no train-{NEW} stage: add it as docs/models.md "
            'shows (or remove the block)') in half.stderr, half.stderr
    (root / "params.yaml").write_text(params)
    add_model(root)
    edited = {line[3:] for line in ok(project.git("status", "--short")).stdout.splitlines()}
    assert edited == {"params.yaml", "dvc.yaml"}  # no Python

    # Before it runs, DVC names none of the original train stages as changed.
    status = ok(project.dvc("status"))
    changed = set(re.findall(r"^([\w-]+):", status.stdout, re.M))
    assert f"train-{NEW}" in changed and not changed & TRAIN_STAGES, status.stdout
    run = ok(project.dvc("repro"))
    assert ran_stages(run.stdout) == {f"train-{NEW}", "evaluate", "report"}, run.stdout
    assert original_outputs(root) == before  # the other models' weights, curves and metrics

    # Four models side by side, six pairs, Holm's adjustment over six.
    summary = json.loads((root / "metrics/summary.json").read_text())
    models = [*MODELS, NEW]
    assert sorted(key for key in summary if key != "comparisons") == sorted(models)  # sorted keys: stable bytes
    pairs = summary["comparisons"]
    assert len(pairs) == 6 and {tuple(sorted(p["pair"].split("_vs_"))) for p in pairs} == {
        tuple(sorted((a, b))) for i, a in enumerate(models) for b in models[i + 1:]}
    expected = holm([p["mcnemar_p"] for p in pairs])
    # Both sides rounded to 4 significant digits: Holm multiplies the rounded p (relative error <= 5e-5,
    # at most 5e-5 as p <= 1) by up to 6.
    assert [p["mcnemar_p_holm"] for p in pairs] == pytest.approx(expected, abs=4e-4)

    # The report, the app's model table, src.compare and src.classify include it.
    report = (root / "plots/report.md").read_text()
    assert "| test split | ResNet-18 | ResNet-34 | ResNet-50 | ResNet-101 |" in report
    assert "![resnet101 confusion matrix](report/confusion_resnet101.png)" in report
    assert "Holm-adjusted p (6 pairs)" in report
    curves = (root / "plots/report/curves.csv").read_text()
    assert f"\n{NEW}," in curves
    script = "from pathlib import Path; import app; print(app.models_table(Path('.'), *app.load_models(Path('.'))))"
    table = ok(project.run(sys.executable, "-c", script)).stdout
    assert re.search(rf"^\| {NEW} \| \d+\.\d\d% \(", table, re.M), table
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    classified = json.loads(ok(project.run(sys.executable, "-m", "src.classify", str(image), "--model", NEW,
                                           "--json", "--device", "cpu")).stdout)
    assert len(classified[0]["predictions"]) == 5
    ok(project.git("add", "-A"))  # the new metrics files too: `dvc exp save` takes what git tracks
    ok(project.dvc("exp", "save", "-n", "four-models"))  # the workspace as an experiment: nothing runs
    compared = json.loads(ok(project.run(sys.executable, "-m", "src.compare", "--json")).stdout)
    assert list(compared["groups"][0]["models"]) == models

    # Removed again the same way (the three edits undone): the originals are untouched.
    (root / "params.yaml").write_text(params)
    (root / "dvc.yaml").write_text(pipeline)
    status = ok(project.dvc("status"))
    assert not set(re.findall(r"^([\w-]+):", status.stdout, re.M)) & TRAIN_STAGES, status.stdout
    run = ok(project.dvc("repro"))
    assert ran_stages(run.stdout) == {"evaluate", "report"}, run.stdout
    assert original_outputs(root) == before
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert sorted(key for key in summary if key != "comparisons") == sorted(MODELS)
    assert len(summary["comparisons"]) == 3
    assert not (root / f"metrics/{NEW}.json").exists() and not (root / f"plots/predictions/{NEW}.csv").exists()
    assert not (root / f"evaluation/detail/{NEW}.json").exists()


TINY_CNN = '''"""A two-layer CNN: an architecture in code, as docs/models.md describes."""
from torch import nn


def build_model(num_classes, width, zero_init_residual, dropout, hidden=8):
    return nn.Sequential(nn.Conv2d(3, hidden * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(dropout), nn.Linear(hidden * width, num_classes))
'''

ROUND_TRIP = '''
import numpy as np
from src import classifier, model_file
from src.models.build import build_model
from src.params import load_params
params = load_params()
architecture = params.recipe("tinycnn").architecture()
model = build_model(architecture, width=params.model.width)
model_file.write(model_file.path_of("tinycnn"), name="tinycnn", architecture=architecture, width=params.model.width,
                 state_dict=model.state_dict(), ema=False, params={}, prepared_data_hash="",
                 classes=[str(i) for i in range(100)], normalize={"mean": [0.5] * 3, "std": [0.25] * 3},
                 history=[], versions={})
served = classifier.load_classifier(model_file.path_of("tinycnn"), classifier.inference_runtime("cpu"))
print(architecture, served.probabilities(np.zeros((2, 32, 32, 3), np.uint8)).shape, classifier.model_names())
'''


def test_an_architecture_in_code_is_one_module_built_from_its_block(stage_copy):
    (stage_copy.root / "src/models/tiny_cnn.py").write_text(TINY_CNN)
    params = (stage_copy.root / "params.yaml").read_text()
    block = "  tinycnn:\n    module: tiny_cnn\n    options: {hidden: 4}\n"
    (stage_copy.root / "params.yaml").write_text(params.replace("\ntrain:\n", "\n" + block + "\ntrain:\n", 1))
    shown = ok(stage_copy.run(sys.executable, "-c", ROUND_TRIP)).stdout
    assert shown.strip() == ("{'module': 'tiny_cnn', 'options': {'hidden': 4}} (2, 100) "
                             "['resnet18', 'resnet34', 'resnet50', 'tinycnn']")
    # A module that is not there: the train stage says so in one line, before any work.
    (stage_copy.root / "src/models/tiny_cnn.py").unlink()
    failed = stage_copy.run(sys.executable, "-m", "stages.train", "--model", "tinycnn")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "ERROR: cannot build model.tinycnn: there is no src/models/tiny_cnn.py" in failed.stderr
