"""`python -m src.sweep`: a search over DVC experiments that chooses on the val split, on a one-model
pipeline small enough to learn something in seconds (`--final`, the test split once, is run from a
third clone of a sweep over two machines: test_sweep_cluster.py).

The sweep's numbers are checked against the experiments' own files (`git show` of each
experiment's commit), not against what the sweep says about them; the driver is killed with
SIGKILL mid-sweep and started again; every bad input fails before anything is queued.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time

import pytest
from optuna import distributions

from helpers.commands import BIN_DIR, ok, run_cmd, start_cmd
from helpers.docs import command, section
from helpers.project import ROOT, drop_report, keep_models, tiny_repo
from helpers.queue import wait_until_queue_idle
from helpers.sweep import LEARNS, VAL_SIZE, exp_json, exp_params, exp_refs
from src.errors import UserError
from src.experiments import worker_env
from src.tuning.space import load_space

SPACE = f"objective: resnet18\nval_size: {VAL_SIZE}\nspace:\n  lr: {{low: 0.02, high: 0.2, log: true}}\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, cifar_archive, http_server):
    """A committed one-model project (ResNet-18 at width 8, 1,800 training images) with its data
    in the DVC cache."""
    project = tiny_repo(tmp_path_factory.mktemp("sweep") / "project", cifar_archive, http_server)
    project.set_params(LEARNS)
    keep_models(project, ["resnet18"])
    drop_report(project)  # a sweep reads metrics only
    ok(project.dvc("repro", "augment"))
    project.git("add", "-A")
    ok(project.git("commit", "-q", "-m", "baseline: one model"))
    return project


def sweep(repo, *args: str, timeout: float = 900):
    return repo.run(sys.executable, "-m", "src.sweep", *args, timeout=timeout)


def write_space(repo, name: str, text: str):
    path = repo.root / f"{name}.yaml"
    path.write_text(text)
    return path.name


# ------------------------------------------------------------------ bad input: one line, nothing queued

BAD = {
    "unknown-key": (SPACE.replace("lr:", "train.lrr:"), [], "space.train.lrr is not a key of params.yaml"),
    "refused-range": (SPACE.replace("low: 0.02, high: 0.2, log: true", "low: 0.0, high: 0.5"), [],
                      "space.lr: 0.0 is refused by params.yaml's schema"),
    "refused-choice": (SPACE.replace("lr: {low: 0.02, high: 0.2, log: true}",
                                     "train.label_smoothing: {choices: [0.0, 1.5]}"),
                       [], "space.train.label_smoothing: 1.5 is refused"),
    "test-objective": (SPACE.replace("objective: resnet18", "objective: resnet18.top1"), [],
                       "a sweep chooses on the val split only"),
    "unknown-model": (SPACE.replace("objective: resnet18", "objective: resnet99"), [],
                      "objective 'resnet99' is not a model of params.yaml"),
    "val-size-0": (SPACE.replace(f"val_size: {VAL_SIZE}", "val_size: 0"), [], "val_size 0 holds out no images"),
    "val-size-too-large": (SPACE.replace(f"val_size: {VAL_SIZE}", "val_size: 2000"), [],
                           "val_size 2000 is too large"),
    "not-yaml": ("objective: resnet18\nspace: [lr: {low: 0.02\n", [], "is not valid YAML"),
    "empty-space": ("objective: resnet18\nval_size: 200\nspace: {}\n", [], "space is empty"),
    "no-trials": (SPACE, ["--trials", "0"], "--trials must be at least 1, not 0"),
    "grid-of-a-range": (SPACE, ["--sampler", "grid"], "--sampler grid needs a list for every key"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_in_one_line_before_anything_is_queued(repo, case):
    text, args, message = BAD[case]
    before = exp_refs(repo)
    result = sweep(repo, write_space(repo, f"bad-{case}", text), *(args or ["--trials", "2"]), timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and message in lines[0], result.stderr
    assert exp_refs(repo) == before, "something was queued"
    assert not (repo.root / "sweeps" / f"bad-{case}.db").exists()


def test_queue_workers_get_their_share_of_the_cores_unless_the_user_chose():
    cores = os.cpu_count() or 1
    assert worker_env(2, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": str(max(1, cores // 2))}
    assert worker_env(cores * 4, {})["OMP_NUM_THREADS"] == "1"  # never 0
    assert "OMP_NUM_THREADS" not in worker_env(1, {})  # one worker: torch's default, every core
    assert worker_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_space_forms_become_optuna_distributions(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("objective: mean\nspace:\n  lr: {low: 0.05, high: 0.8, log: true}\n"
                    "  epochs: {low: 2, high: 6, step: 2}\n  train.label_smoothing: {choices: [0.0, 0.1]}\n")
    space = load_space(path, ROOT / "params.yaml")  # all 50,000 training images: the default val_size fits
    assert space.objective == "mean" and space.val_size == 5000 and space.grid is None
    assert space.dimensions == {"lr": distributions.FloatDistribution(0.05, 0.8, log=True),
                                "epochs": distributions.IntDistribution(2, 6, step=2),
                                "train.label_smoothing": distributions.CategoricalDistribution([0.0, 0.1])}
    path.write_text("objective: resnet18\nspace:\n  epochs: {values: [50, 100]}\n  seed: {values: [0, 1]}\n")
    assert load_space(path, ROOT / "params.yaml").grid == {"epochs": [50, 100], "seed": [0, 1]}
    path.write_text("objective: resnet18\nspace:\n  epochs: {low: 1.5, high: 4}\n")  # epochs is an int
    with pytest.raises(UserError, match="space.epochs: 1.5 is refused"):
        load_space(path, ROOT / "params.yaml")


# ------------------------------------------------------------------ a failed trial

def test_a_failed_trial_is_recorded_with_its_log_hint_and_the_sweep_goes_on(repo):
    # Two archive md5s that do not match: each trial fails at download, in seconds.
    name = write_space(repo, "md5s", f"objective: resnet18\nval_size: {VAL_SIZE}\n"
                                     f"space:\n  data.md5: {{values: ['{'0' * 32}', '{'1' * 32}']}}\n")
    result = ok(sweep(repo, name, "--sampler", "grid", "--json"))
    report = json.loads(result.stdout)
    assert len(report["trials"]) == 2 and report["best"] is None, report  # the first failure did not stop it
    for trial in report["trials"]:
        assert trial["state"] == "failed" and f"dvc queue logs {trial['experiment']}" in trial["failure"], trial
        assert "md5" in ok(repo.dvc("queue", "logs", trial["experiment"])).stdout
    assert "no trial finished" in result.stderr


# ------------------------------------------------------------------ a sweep killed and resumed

def test_random_sweep_resumes_after_kill_9_and_runs_no_trial_twice(repo):
    space = write_space(repo, "lr", SPACE)
    # Two at a time: the kill comes once two trials have finished, with the other two queued.
    driver = start_cmd([sys.executable, "-m", "src.sweep", space, "--trials", "4", "--sampler", "random",
                        "--jobs", "2"], cwd=repo.root, env=repo.env)
    finished, output = 0, []
    deadline = time.monotonic() + 600
    while finished < 2:
        line = driver.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(output)
        output.append(line)
        finished += "val top-1" in line
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    wait_until_queue_idle(repo, timeout=600, poll_s=10)  # the trials it left queued finish while no driver runs

    # --final is tested from a third clone of a sweep over two machines (test_sweep_cluster.py).
    result = ok(sweep(repo, space, "--trials", "4", "--sampler", "random", "--jobs", "2", "--json"))
    report = json.loads(result.stdout)
    # It took up what the dead driver left: the trials it had queued ahead finished meanwhile.
    assert "resumed: it finished while no driver ran" in result.stderr, result.stderr
    trials = report["trials"]
    names = sorted(t["experiment"] for t in trials)
    assert names == [f"lr-t{n}" for n in range(4)] and all(t["state"] == "complete" for t in trials), trials
    refs = exp_refs(repo)
    # None ran twice: each trial is one task of DVC's queue, and one experiment.
    status = wait_until_queue_idle(repo, timeout=600, poll_s=10)
    assert [status.count(f" {name} ") for name in names] == [1] * 4, status
    assert sorted(n for n in refs if n.startswith("lr-t")) == names

    val_top1 = {}
    for trial in trials:
        ref = refs[trial["experiment"]]
        params = exp_params(repo, ref)
        assert params["data"]["val_size"] == VAL_SIZE
        assert params["lr"] == pytest.approx(trial["params"]["lr"], rel=1e-12)
        val_top1[trial["experiment"]] = exp_json(repo, ref, "metrics/resnet18.json")["val"]["top1"]
        assert trial["value"] == val_top1[trial["experiment"]]
    best = report["best"]
    assert best["value"] == max(val_top1.values())
    assert best["experiment"] in [n for n, v in val_top1.items() if v == best["value"]]

    # docs/experiments.md's view of the trials: each one, with its val top-1, best first.
    shown = ok(run_cmd([BIN_DIR / "dvc", *shlex.split(readme_command("dvc exp show"))[1:], "--no-pager"], repo.root,
                       env={**repo.env, "COLUMNS": "300"})).stdout  # one model: its files' keys are columns too
    rows = [line for line in shown.splitlines() if "[lr-t" in line]
    assert "resnet18.val.top1" in shown and len(rows) == 4, shown
    assert f"[{best['experiment']}]" in rows[0] and f" {best['value']:g} " in rows[0], shown


def readme_tuning() -> str:
    """docs/experiments.md's Tuning section, whose snippets these tests run."""
    return section("experiments.md", "Tuning: validation first, the test split once")


def readme_command(start: str) -> str:
    """The first command of the Tuning section that starts with `start`."""
    return command(readme_tuning(), start)


def test_readme_space_yaml_is_a_valid_space(tmp_path):
    text = readme_tuning().split("cat > lr.yaml <<'END'\n")[1].split("\nEND\n")[0]
    (tmp_path / "lr.yaml").write_text(text)
    space = load_space(tmp_path / "lr.yaml", ROOT / "params.yaml")
    assert (space.objective, space.val_size, list(space.dimensions)) == (
        "resnet18", 5000, ["lr", "train.label_smoothing"])
