"""A sweep over several machines, as docs/scale.md runs it: one Optuna study in a real PostgreSQL
server, a bare git repository and a local-path DVC remote that every machine shares, and each
machine a run of the shipped SLURM array job file (scripts/sweep.sbatch, run by bash: everything
but SLURM itself) in a clone of its own.

Machine A is killed with SIGKILL (its driver, its DVC queue workers and their training) while a
trial of its runs; machine B goes on, and after the grace period runs the lost trial's params
again. A third clone then pulls every trial's experiment, sees their val top-1, and runs `--final`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from helpers.commands import command_env, ok, run_cmd
from helpers.docs import command, section
from helpers.project import ROOT, Project, drop_report, keep_models, tiny_repo
from helpers.sweep import LEARNS, VAL_SIZE, exp_json, exp_params, exp_refs

NAME, TRIALS, STALE_AFTER_S = "lr", 4, 10
SPACE = f"objective: resnet18\nval_size: {VAL_SIZE}\nspace:\n  lr: {{low: 0.02, high: 0.2, log: true}}\n"
SBATCH = ROOT / "scripts" / "sweep.sbatch"


@dataclass
class Cluster:
    tmp: Path
    origin: Path  # the shared bare git repository
    remote: Path  # the shared DVC remote
    storage: str  # the study's PostgreSQL URL
    base: Project  # the clone the project was set up and pushed from


def study(url: str) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=url)


def clone(cluster: Cluster, name: str) -> Project:
    ok(run_cmd(["git", "clone", "-q", cluster.origin, cluster.tmp / name], cwd=cluster.tmp))
    (cluster.tmp / f"{name}-dvc-site-cache").mkdir()
    return Project(cluster.tmp / name, env={"DVC_SITE_CACHE_DIR": str(cluster.tmp / f"{name}-dvc-site-cache")})


def start_machine(cluster: Cluster, task: int) -> subprocess.Popen:
    """One array task of scripts/sweep.sbatch, in a session of its own (what a node is to it)."""
    scratch = cluster.tmp / f"node-{task}"
    scratch.mkdir()
    env = command_env({
        "SWEEP_REPO": str(cluster.origin), "SWEEP_STORAGE": cluster.storage, "SWEEP_SPACE": "lr.yaml",
        "SWEEP_TRIALS": str(TRIALS), "SWEEP_STALE_AFTER": str(STALE_AFTER_S), "SWEEP_SCRATCH": str(scratch),
        "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": str(task),
        "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site-cache")})
    log = (cluster.tmp / f"node-{task}.log").open("w")
    return subprocess.Popen(["bash", str(SBATCH)], cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def lose_machine(process: subprocess.Popen, scratch: Path) -> None:
    """SIGKILL to everything of the node: the job's session, and DVC's queue workers and their
    stages (daemons of their own) that run in its clone."""
    os.killpg(process.pid, signal.SIGKILL)
    for proc in psutil.process_iter():
        try:
            if Path(proc.cwd()).is_relative_to(scratch):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    process.wait(30)


def node_of(trial) -> str:
    return Path((trial.user_attrs.get("worker") or {}).get("clone", "?")).parent.name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, cifar_archive, http_server, postgres) -> Cluster:
    """The shared parts, and the project pushed to them with its prepared data."""
    tmp = tmp_path_factory.mktemp("cluster")
    origin, remote = tmp / "origin.git", tmp / "dvc-remote"
    base = tiny_repo(tmp / "base", cifar_archive, http_server)
    # The sweep tests' tiny trial, smaller still: what is tested is where trials run, not what they learn.
    base.set_params({**LEARNS, "epochs": 1, "data.train_limit": 1000, "model.width": 4})
    keep_models(base, ["resnet18"])
    drop_report(base)
    (base.root / "lr.yaml").write_text(SPACE)
    ok(base.dvc("remote", "add", "-d", "shared", str(remote)))
    ok(base.dvc("repro", "augment"))
    ok(base.git("add", "-A"))
    ok(base.git("commit", "-q", "-m", "a one-model project and its sweep, with a shared DVC remote"))
    ok(base.dvc("push"))
    ok(run_cmd(["git", "init", "-q", "--bare", "--initial-branch", "main", origin], cwd=tmp))
    ok(base.git("remote", "add", "origin", str(origin)))
    ok(base.git("push", "-q", "origin", "HEAD:refs/heads/main"))
    return Cluster(tmp, origin, remote, postgres.new_database("cluster_sweep"), base)


@pytest.fixture(scope="module")
def swept(cluster) -> dict:
    """Machines 0 and 1 run the array job; machine 0 is lost during its second trial."""
    a = start_machine(cluster, 0)
    b = start_machine(cluster, 1)
    deadline = time.monotonic() + 900
    while True:  # A finished a trial and runs another: then the node is lost
        assert a.poll() is None and time.monotonic() < deadline, (cluster.tmp / "node-0.log").read_text()
        try:
            trials = study(cluster.storage).get_trials(deepcopy=False)
        except KeyError:  # no study yet
            trials = []
        ours = [t for t in trials if node_of(t) == "node-0"]
        if any(t.state == TrialState.COMPLETE for t in ours) and any(t.state == TrialState.RUNNING for t in ours):
            break
        time.sleep(2)
    time.sleep(3)  # its queue worker takes the next trial up
    lose_machine(a, cluster.tmp / "node-0")
    lost_at = datetime.now()
    assert b.wait(1200) == 0, (cluster.tmp / "node-1.log").read_text()
    return {"lost_at": lost_at, "log": (cluster.tmp / "node-1.log").read_text(),
            "trials": study(cluster.storage).get_trials(deepcopy=False)}


def test_two_machines_share_the_study_and_the_lost_machines_trial_runs_again_once_elsewhere(swept):
    trials, log = swept["trials"], swept["log"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # The study's budget, run once each: four finished trials of four different params.
    assert len(complete) == TRIALS and len({t.params["lr"] for t in complete}) == TRIALS, trials
    assert {node_of(t) for t in complete} == {"node-0", "node-1"}  # both machines ran trials
    assert len({t.user_attrs["experiment"] for t in complete}) == TRIALS
    # Node 0's unfinished trials failed once their heartbeat was STALE_AFTER_S old, and node 1 ran
    # their params again, each once.
    assert failed and all(node_of(t) == "node-0" for t in failed), trials
    for lost in failed:
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and node_of(retries[0]) == "node-1"
        retry = retries[0]
        assert retry.params == lost.params
        # Its last heartbeat came at most one interval (a fifth of the grace period) before the loss.
        assert (lost.datetime_complete - swept["lost_at"]).total_seconds() >= STALE_AFTER_S * 4 / 5 - 1
        print(f"trial {lost.number}: machine lost at {swept['lost_at']:%H:%M:%S}, failed as stale at "
              f"{lost.datetime_complete:%H:%M:%S}, run again as trial {retry.number} from "
              f"{retry.datetime_start:%H:%M:%S} to {retry.datetime_complete:%H:%M:%S}")
        assert f"trial {lost.number} ({lost.user_attrs['experiment']}): no heartbeat from" in log
        assert f"runs again the params of lost trial {lost.number}" in log


def test_a_third_clone_pulls_every_trial_and_final_trains_the_best_once_and_pushes_it(cluster, swept):
    complete = {t.user_attrs["experiment"]: t for t in swept["trials"] if t.state == TrialState.COMPLETE}
    third = clone(cluster, "third")
    recipe = section("scale.md", "A sweep over many machines")
    ok(third.run("bash", "-c", command(recipe, "dvc exp pull")))  # the docs' line: every trial of HEAD
    shown = json.loads(ok(third.dvc("exp", "show", "--json")).stdout)
    val = {exp["name"]: exp["revs"][0]["data"]["metrics"]["metrics/resnet18.json"]["data"]["val"]["top1"]
           for commit in shown for exp in commit.get("experiments") or []}
    assert val == {name: pytest.approx(trial.value) for name, trial in complete.items()}
    best = [name for name, value in val.items() if value == max(val.values())]  # ties: the study's earliest

    ok(third.dvc("pull", "--with-deps", "augment"))
    swept_final = third.run(sys.executable, "-m", "src.sweep", "lr.yaml", "--storage", cluster.storage,
                            "--push", "origin", "--trials", str(TRIALS), "--final", "--json", timeout=900)
    report = json.loads(ok(swept_final).stdout)
    assert report["best"]["experiment"] == min(best, key=lambda name: complete[name].number)
    final = report["final"]
    assert final["experiment"] == f"{NAME}-final"
    # The best params, on the whole training split (nothing held out), scored on the test split once:
    # checked against the experiments' own files, not against what the sweep says of them.
    refs = exp_refs(third)
    final_params = exp_params(third, refs[final["experiment"]])
    best_params = exp_params(third, refs[report["best"]["experiment"]])
    assert final_params["data"].pop("val_size") == 0 and best_params["data"].pop("val_size") == VAL_SIZE
    assert final_params == best_params
    metrics = exp_json(third, refs[final["experiment"]], "metrics/resnet18.json")
    assert "val" not in metrics and final["test"]["resnet18"]["top1"] == metrics["top1"]
    assert "sweep-secret" not in swept_final.stdout + swept_final.stderr  # the URL's password is never printed
    pushed = ok(run_cmd(["git", "ls-remote", cluster.origin, "refs/exps/*"], cwd=cluster.tmp)).stdout
    assert {ref.rsplit("/", 1)[-1] for ref in pushed.split()[1::2]} == {*complete, f"{NAME}-final"}


def test_the_array_job_file_is_valid_bash_and_runs_the_documented_sweep():
    ok(run_cmd(["bash", "-n", SBATCH], cwd=ROOT))
    text = SBATCH.read_text()
    recipe = section("scale.md", "A sweep over many machines")
    assert "scripts/sweep.sbatch" in recipe and command(recipe, "sbatch") in text
    for step in ("git clone", "dvc pull", "python -m src.sweep"):
        assert step in text, step


BAD_SHARING = {
    "not-a-git-remote": (["--push", "nosuch"], "--push nosuch: not a git remote of this clone"),
    "wrong-password": (["--storage", "WRONG"], "password authentication failed"),
}


@pytest.mark.parametrize("case", list(BAD_SHARING))
def test_bad_sharing_fails_in_one_line_before_anything_runs(cluster, postgres, case):
    args, message = BAD_SHARING[case]
    project = clone(cluster, f"bad-{case}")
    args = [postgres.url(password="hunter2") if arg == "WRONG" else arg for arg in args]
    result = project.run(sys.executable, "-m", "src.sweep", "lr.yaml", "--trials", "1", *args, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert not ok(project.git("for-each-ref", "refs/exps")).stdout  # nothing queued


def test_push_without_a_default_dvc_remote_fails_before_anything_runs(cluster):
    project = clone(cluster, "no-dvc-remote")
    ok(project.dvc("remote", "default", "--unset"))
    result = project.run(sys.executable, "-m", "src.sweep", "lr.yaml", "--trials", "1", "--push", "origin",
                         timeout=300)
    assert result.returncode == 1 and "DVC has no default remote" in result.stderr, result.stderr
    assert not (project.root / "sweeps").exists()


def test_drivers_that_start_together_on_a_fresh_database_all_open_it(postgres, tmp_path):
    """Each creates Optuna's tables if they are missing: at the same moment, all but one collide."""
    url, go = postgres.new_database("fresh_together"), tmp_path / "go"
    code = ("import os, sys, time; from src.tuning import study, trials; print('ready', flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
            "study.open_storage(sys.argv[1], 60, trials.StaleTrials(60)); print('opened')")
    starts = [subprocess.Popen([sys.executable, "-c", code, url, go], cwd=ROOT, env=command_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    assert [process.stdout.readline() for process in starts] == ["ready\n"] * 4
    go.touch()  # all four open the storage at once
    outputs = [process.communicate(timeout=120)[0] for process in starts]
    assert all(process.returncode == 0 for process in starts) and outputs == ["opened\n"] * 4, outputs
