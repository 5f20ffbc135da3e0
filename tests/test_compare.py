"""`python -m src.compare`: a real seed study (three queued tiny experiments) summarised from DVC,
checked against each experiment's own metrics files; bad experiments fail with one clear line.
The study's pipeline has two of the models (a basic-block and a bottleneck one) and no report:
compare reads metrics only, and a third model would add process starts, not cases."""
from __future__ import annotations

import json
import statistics
import sys

import pytest
import yaml

from helpers.commands import ok
from helpers.project import Project, copy_working_tree, drop_report, keep_models, tiny_repo
from helpers.queue import run_queue

SEEDS = (0, 1, 2)
METRICS = ("top1", "top5")
MODELS = ("resnet18", "resnet50")  # the study's


def compare(project: Project, *args: str):
    return project.run(sys.executable, "-m", "src.compare", *args, timeout=300)


def one_error_line(result) -> str:
    """The command failed with exactly one non-empty line on stderr and nothing on stdout."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    assert result.stdout.strip() == ""
    return lines[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar_archive, http_server):
    """A tiny repository after `dvc exp run --queue -S seed=0,1,2` and `dvc queue start -j 2`."""
    project = tiny_repo(tmp_path_factory.mktemp("compare") / "project", cifar_archive, http_server)
    keep_models(project, list(MODELS))
    drop_report(project)
    ok(project.dvc("repro", "download"))  # seed is an augment param: each experiment prepares its data
    project.git("add", "-A")
    ok(project.git("commit", "-q", "-m", "baseline"))
    ok(project.dvc("exp", "run", "--queue", "-S", f"seed={','.join(str(s) for s in SEEDS)}"))
    run_queue(project, jobs=2, expected=len(SEEDS), timeout=1500)
    yield project
    project.dvc("queue", "stop")


def experiment_metrics(project: Project) -> dict[int, dict[str, dict]]:
    """{seed: {model: metrics/<model>.json}} of every experiment, as `dvc exp apply` restores them."""
    found = {}
    for name in ok(project.dvc("exp", "ls", "--name-only")).stdout.split():
        ok(project.dvc("exp", "apply", name))
        found[project.params()["seed"]] = {m: json.loads((project.root / f"metrics/{m}.json").read_text())
                                           for m in MODELS}
    ok(project.git("checkout", "--", "."))
    return found


def test_compare_gives_mean_std_min_max_of_each_model_over_the_seeds(study, tmp_path):
    result = ok(compare(study, "--json", str(tmp_path / "seeds.json"), "--figure", str(tmp_path / "seeds.png")))
    document = json.loads((tmp_path / "seeds.json").read_text())
    assert document["not_finished"] == 0 and len(document["groups"]) == 1
    group = document["groups"][0]
    assert group["seeds"] == list(SEEDS) and len(group["experiments"]) == len(SEEDS)
    assert "seed" not in group["params"] and group["params"]["model.width"] == 2  # every other param
    assert group["params"]["data.test_limit"] == 200

    per_seed = experiment_metrics(study)
    assert sorted(per_seed) == list(SEEDS)
    for model in MODELS:
        summary = group["models"][model]
        assert summary["n"] == len(SEEDS)
        for metric in METRICS:
            values = [per_seed[seed][model][metric] for seed in SEEDS]
            assert summary[metric]["mean"] == pytest.approx(statistics.mean(values), abs=1e-9)
            assert summary[metric]["std"] == pytest.approx(statistics.stdev(values), abs=1e-9)
            assert (summary[metric]["min"], summary[metric]["max"]) == (min(values), max(values))
        # The table for people prints the same numbers.
        row = next(line for line in result.stdout.splitlines() if line.startswith(model))
        top1 = summary["top1"]
        assert f"{top1['mean']:.2f} +- {top1['std']:.2f}" in row and f"{top1['min']:.2f}-{top1['max']:.2f}" in row
        assert row.split()[1] == str(len(SEEDS))
    assert "3 experiments in 1 group" in result.stdout
    png = (tmp_path / "seeds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # --json without a path: the same document on stdout, for pipes
    assert json.loads(ok(compare(study, "--json")).stdout) == document


def saved_experiment(project: Project, name: str, seed: int, change) -> None:
    """`dvc exp save` of a finished experiment's workspace with `change` applied (no pipeline run)."""
    first = ok(project.dvc("exp", "ls", "--name-only")).stdout.split()[0]
    ok(project.dvc("exp", "apply", first))
    project.set_params({"seed": seed})
    change(project.root)
    ok(project.dvc("exp", "save", "-n", name, "-I", "metrics"))  # metrics/ is not in the baseline commit
    ok(project.git("checkout", "--", "."))


def without_resnet50(root) -> None:
    """The experiment of a pipeline that does not evaluate ResNet-50 (as an older dvc.yaml would)."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    keep = lambda entries: [e for e in entries if "metrics/resnet50.json" not in str(e)]  # noqa: E731
    pipeline["stages"]["evaluate"]["metrics"] = keep(pipeline["stages"]["evaluate"]["metrics"])
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (root / "metrics" / "resnet50.json").unlink()


@pytest.mark.parametrize("name, change, expected", [
    ("broken-json", lambda root: (root / "metrics" / "resnet18.json").write_text("{\"top1\": 4"),
     "experiment broken-json: metrics/resnet18.json is not valid JSON"),
    ("no-resnet50", without_resnet50, "experiment no-resnet50 has no metrics/resnet50.json (it lacks resnet50"),
])
def test_a_bad_experiment_is_one_clear_line(study, name, change, expected):
    saved_experiment(study, name, seed=7, change=change)
    try:
        line = one_error_line(compare(study))
        assert expected in line, line
        assert f"dvc exp remove {name}" in line  # the fix
    finally:
        ok(study.dvc("exp", "remove", name))
    ok(compare(study))  # the other experiments are fine


def test_no_experiments_is_one_clear_line(tmp_path):
    project = copy_working_tree(tmp_path / "empty", git=True)
    line = one_error_line(compare(project))
    assert "no finished experiment" in line and "dvc exp run --queue -S seed=0,1,2,3,4" in line
    bare = copy_working_tree(tmp_path / "bare", git=False)  # not a git repository: DVC has no experiments
    assert "`dvc exp show` failed" in one_error_line(compare(bare))
