"""The whole pipeline, end to end, through DVC itself: repro, exp run, metrics/params diff."""
from __future__ import annotations

import json
import os
import pty
import re
import shlex
import subprocess
import time

import pytest
import yaml

from helpers.commands import BIN_DIR, command_env, ok, ran_stages
from helpers.docs import section
from helpers.models import MODELS, TRAIN_STAGES
from helpers.pipeline import COMMANDS
from helpers.project import ROOT, copy_project

AFTER_TRAIN = TRAIN_STAGES | {"evaluate", "report"}
ALL_STAGES = {"download", "augment"} | AFTER_TRAIN
timings: dict[str, float] = {}
baseline: dict[str, bytes] = {}  # accuracy metrics of the first repro, byte for byte


def ran(result) -> set[str]:
    return ran_stages(result.stdout)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, trained_tiny):
    """The tiny pipeline after its first `dvc repro`, committed (the last test trains ResNet-18 and
    evaluates again, in another copy, and compares)."""
    return copy_project(trained_tiny, tmp_path_factory.mktemp("e2e") / "project")


def test_repro_exp_run_and_diffs_end_to_end(repo):
    summary = json.loads((repo.root / "metrics/summary.json").read_text())
    assert set(summary) == {*MODELS, "comparisons"}
    assert (repo.root / "plots/report.md").read_text().count("ResNet-50") >= 1
    assert json.loads(ok(repo.dvc("status", "--json")).stdout or "{}") == {}
    baseline.update(accuracy_files(repo.root))

    # docs/experiments.md's two experiments, as written there: a shared key retrains the three models, a
    # ResNet-50 key (on top of the first's lr, left in the workspace) retrains ResNet-50 only.
    names = []
    for line, expected in zip(readme_experiment_runs(), (AFTER_TRAIN, {"train-resnet50", "evaluate", "report"})):
        args = shlex.split(line)
        exp = ok(repo.run(BIN_DIR / "dvc", *args[1:], timeout=600))
        assert ran(exp) == expected, (line, exp.stdout)
        names.append(args[args.index("-n") + 1])

    shown = ok(repo.dvc("exp", "show", "--csv"))
    assert all(name in shown.stdout for name in names) and "workspace" in shown.stdout
    assert "0.2" in shown.stdout and "0.1" in shown.stdout

    params_diff = json.loads(ok(repo.dvc("params", "diff", "HEAD", "--json")).stdout)["params.yaml"]
    assert (params_diff["lr"]["old"], params_diff["lr"]["new"]) == (0.1, 0.2)
    mixup = params_diff["model.resnet50.mixup_alpha"]
    assert (mixup["old"], mixup["new"]) == (0.2, 0.4)
    metrics_diff = json.loads(ok(repo.dvc("metrics", "diff", "HEAD", "--json")).stdout)
    changed = metrics_diff["metrics/resnet18.json"]
    assert "top1" in changed or "loss" in changed, metrics_diff
    assert changed["loss"]["old"] != changed["loss"]["new"]

    start = time.perf_counter()
    again = ok(repo.dvc("repro"))
    timings["no-op dvc repro"] = time.perf_counter() - start
    assert ran(again) == set(), again.stdout
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower()
    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s")


def accuracy_files(root) -> dict[str, bytes]:
    """metrics/ and evaluation/detail/ (not the timings), byte for byte: {path: bytes}."""
    files = [*(root / "metrics").glob("*.json"), *(root / "evaluation" / "detail").glob("*.json")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def readme_experiment_runs() -> list[str]:
    """The `dvc exp run -n ...` lines of docs/experiments.md "Experiments" (two)."""
    block = section("experiments.md", "Experiments")
    runs = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("dvc exp run -n")]
    assert len(runs) == 2, runs
    return runs


def in_terminal(command: list, project, columns: int) -> str:
    """What `command` prints in a terminal `columns` wide (a pseudo-terminal), colours stripped."""
    leader, follower = pty.openpty()
    env = command_env({**project.env, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm-256color"})
    process = subprocess.Popen([str(c) for c in command], cwd=project.root, env=env,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())


def test_the_readme_experiments_read_in_a_120_column_terminal(repo):
    """docs/experiments.md's experiments (run by the first test), then its `dvc exp show` recipe in a terminal 120
    columns wide: every experiment's name, its changed params and each model's top-1, no cell collapsed.
    (--no-pager: rich then fits the table to the terminal, collapsing what does not fit; through
    the pager it is drawn at its full width, which the same assertion bounds.)"""
    assert baseline, "runs after test_repro_exp_run_and_diffs_end_to_end (which ran the docs' experiments)"
    block = section("experiments.md", "Experiments")
    recipe = next(line.split("#")[0] for line in block.splitlines()
                  if line.startswith("dvc exp show --only-changed"))
    shown = in_terminal([BIN_DIR / "dvc", *shlex.split(recipe)[1:], "--no-pager"], repo, columns=120)
    print(shown)  # what the terminal shows (pytest -s)
    assert "…" not in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    baseline_row = next(row for row in json.loads(ok(repo.dvc("exp", "show", "--json")).stdout)
                        if row.get("experiments"))
    experiments = baseline_row["experiments"]
    assert len(experiments) == 2
    header = next(line for line in shown.splitlines() if "Experiment" in line)
    top1s = {model: {e["revs"][0]["data"]["metrics"]["metrics/summary.json"]["data"][model]["top1"]
                     for e in experiments} for model in MODELS}
    for model, values in top1s.items():  # --only-changed drops a column that no experiment changes
        assert f"{model}.top1" in header or len(values) == 1, (model, values, header)
    for experiment in experiments:
        state = experiment["revs"][0]
        row = next(line for line in shown.splitlines() if f"[{experiment['name']}]" in line)
        summary = state["data"]["metrics"]["metrics/summary.json"]["data"]
        for model in MODELS:
            if f"{model}.top1" in header:
                assert f" {summary[model]['top1']:.5g} " in row, (model, row)
        params = state["data"]["params"]["params.yaml"]["data"]
        assert f" {params['lr']:g} " in row and f" {params['model']['resnet50']['mixup_alpha']:g} " in row
    assert any(f"{model}.top1" in header for model in MODELS), header
    for column in ("Experiment", "lr", "model.resnet50.mixup_alpha"):  # the top-1s: checked above
        assert column in header, header


def _prepared_md5(repo) -> str:
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for out in lock["augment"]["outs"]}["data/prepared"]


@pytest.mark.parametrize("overrides, expected", [
    # Model keys and a shared key in one experiment: the shared key reaches every model. Which
    # stages each key alone reaches is test_dvc_train's (dvc status) and test_pipeline_e2e's first test.
    (["model.resnet50.augment.crop=pad", "model.resnet50.autoaugment=0", "+model.resnet18.augment.cutout_inside=true",
      "augment.cutout_size=8"], {"augment"} | AFTER_TRAIN),
])
def test_augmentation_changes_retrain_the_models_they_reach_and_never_change_prepared_data(
        repo, overrides, expected):
    assert baseline, "runs after test_repro_exp_run_and_diffs_end_to_end"
    prepared = _prepared_md5(repo)
    exp = ok(repo.dvc("exp", "run", *[arg for o in overrides for arg in ("-S", o)]))
    assert ran(exp) == expected, exp.stdout
    assert _prepared_md5(repo) == prepared, "data/prepared changed"
    import torch  # the model files record the augmentation they were trained with
    recorded = {m: torch.load(repo.root / f"models/{m}.pt", weights_only=True)["params"]["augment"]
                for m in ("resnet18", "resnet50")}
    params = repo.params()
    assert recorded["resnet50"]["autoaugment"] == params["model"]["resnet50"]["autoaugment"]
    assert recorded["resnet50"]["crop"] == params["model"]["resnet50"]["augment"].get("crop", "pad")
    assert recorded["resnet18"]["cutout_inside"] == params["model"]["resnet18"]["augment"].get(
        "cutout_inside", params["augment"]["cutout_inside"])
    assert (recorded["resnet18"]["cutout_size"] == recorded["resnet50"]["cutout_size"]
            == params["augment"]["cutout_size"])


def _stages_listing(relative: str) -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if relative in stage.get("deps", [])}


def test_editing_a_module_marks_exactly_the_stages_that_import_it(repo):
    status = ok(repo.dvc("status", "--json"))
    assert json.loads(status.stdout or "{}") == {}, "the pipeline must be up to date first"
    modules = sorted(p.relative_to(repo.root) for p in [*repo.root.glob("src/**/*.py"),
                                                        *repo.root.glob("stages/*.py")]
                     if p.read_text().strip() and p.name != "__init__.py"
                     and ROOT / p.relative_to(repo.root) not in COMMANDS)  # user commands: no stage
    assert len(modules) > 20
    # One module of each set of stages that list theirs: DVC marks what dvc.yaml lists (shown here
    # once per set), and test_lineage checks each listing against the stages' imports.
    # (The modules no default stage lists, such as stages/weights.py or an example architecture
    # module, mark nothing: docs/models.md adds them with the models that use them.)
    modules = list({frozenset(_stages_listing(str(m))): m for m in modules if _stages_listing(str(m))}.values())
    assert len(modules) > 5
    for module in modules:
        path = repo.root / module
        original = path.read_text()
        path.write_text(original + "\n# edited by the lineage test\n")
        try:
            marked = set(json.loads(ok(repo.dvc("status", "--json")).stdout or "{}"))
        finally:
            path.write_text(original)
        assert marked == _stages_listing(str(module)) and marked, f"editing {module} marks {marked}"


def test_the_first_repro_runs_every_stage_without_warnings_and_writes_nothing_outside(trained_tiny):
    """The trained tiny project's build: the first `dvc repro` of a new copy, with a fresh HOME and
    TMPDIR (conftest.trained_tiny): every stage runs, no WARNING, and afterwards HOME and TMPDIR
    hold library caches only, nothing of ours."""
    built = trained_tiny.root.parent
    first = (built / "first-repro.log").read_text()
    assert ran_stages(first) == ALL_STAGES, first
    assert "WARNING" not in first, first
    outside = built / "outside"
    written = [p.relative_to(outside) for p in outside.rglob("*") if p.is_file()]
    caches = ("home/.cache/matplotlib", "home/.config/matplotlib", "home/.config/dvc", "home/.cache/dvc",
              "home/.local/share/dvc", "home/.config/iterative", "home/.cache/torch")
    assert [p for p in written if not str(p).startswith(caches)] == [], "a stage wrote outside the repository"


def test_the_same_params_give_byte_identical_accuracy_metrics(tmp_path, trained_tiny):
    """ResNet-18 trained again from scratch and every model evaluated again, in another folder,
    with the params of the trained tiny project: the accuracy files are byte for byte its own.
    (A train stage removes its resume point when it ends: the forced run starts from nothing.)"""
    assert baseline, "runs after test_repro_exp_run_and_diffs_end_to_end"
    again = copy_project(trained_tiny, tmp_path / "again")
    assert not list((again.root / "checkpoints").glob("*"))
    start = time.perf_counter()
    forced = ok(again.dvc("repro", "--force", "--single-item", "train-resnet18", "evaluate"))
    print(f"train-resnet18 and evaluate again: {time.perf_counter() - start:.1f} s")
    assert ran(forced) == {"train-resnet18", "evaluate"}, forced.stdout
    assert "resnet18: no checkpoint: starting from scratch" in forced.stdout, forced.stdout
    repeated = accuracy_files(again.root)
    assert sorted(repeated) == sorted(baseline) == sorted(
        [f"evaluation/detail/{m}.json" for m in MODELS] + [f"metrics/{m}.json" for m in MODELS]
        + ["metrics/summary.json"])
    for name in baseline:
        assert repeated[name] == baseline[name], f"{name} differs between two identical runs"
