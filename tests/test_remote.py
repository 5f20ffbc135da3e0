"""Sharing runs through a DVC remote: a local-path remote (what a cluster filesystem or a
mounted bucket looks like to DVC) and a bare git repository, with the real `dvc` and `git`.

Proves that a fresh clone gets A's exact outputs from `dvc pull` into a cache of its own
and then has nothing to reproduce; that an experiment pushed with `dvc exp push` comes back
in the clone with `dvc exp pull` + `dvc exp apply` byte for byte, without training; and
that resume checkpoints never leave the machine that wrote them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers.commands import ok, ran_stages, run_cmd
from helpers.project import Project, copy_project

EXP = "shared-lr-scale"
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots")  # every DVC output, cached or in git


def digests(project: Project, folders=OUTPUT_FOLDERS) -> dict[str, str]:
    """sha256 of every file below `folders` (gitignore files included), by relative path."""
    return {str(path.relative_to(project.root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in project.files_under(folder) if path.is_file()}


def files_below(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def assert_clean(project: Project) -> None:
    status = ok(project.dvc("status", "--json")).stdout
    assert json.loads(status or "{}") == {}, status


@dataclass
class Shared:
    a: Project
    b: Project
    remote: Path  # the DVC remote
    origin: Path  # the bare git repository
    checkpoint: bytes  # a resume point left in A's checkpoints/ when it pushed
    pushed_runs: set[str]  # A's run-cache entries when it pushed


@pytest.fixture(scope="module")
def shared(tmp_path_factory, trained_tiny) -> Shared:
    """A ran the pipeline (a copy of the trained tiny project) and pushes it (DVC remote + git); B
    is a fresh clone that pulled."""
    tmp = tmp_path_factory.mktemp("remote")
    remote, origin = tmp / "dvc-remote", tmp / "origin.git"
    a = copy_project(trained_tiny, tmp / "a")
    ok(a.dvc("remote", "add", "-d", "shared", str(remote)))
    # What an interrupted run leaves behind: resume points are local, never shared.
    checkpoint = b"resume point " + os.urandom(64)
    assert (a.root / "checkpoints").is_dir()  # the train stages write their resume points there
    (a.root / "checkpoints" / "resnet50.pt").write_bytes(checkpoint)
    ok(a.git("add", "-A"))
    ok(a.git("commit", "-q", "-m", "trained, with a shared DVC remote"))
    ok(a.dvc("push", "--run-cache"))
    ok(run_cmd(["git", "init", "-q", "--bare", origin], cwd=tmp))
    ok(a.git("remote", "add", "origin", str(origin)))
    ok(a.git("push", "-q", "origin", "HEAD:refs/heads/main"))

    ok(run_cmd(["git", "clone", "-q", "--branch", "main", origin, tmp / "b"], cwd=tmp))
    (tmp / "b-dvc-site-cache").mkdir()
    b = Project(tmp / "b", env={"DVC_SITE_CACHE_DIR": str(tmp / "b-dvc-site-cache")})
    b_cache = Path(ok(b.dvc("cache", "dir")).stdout.strip())
    assert b_cache == b.root / ".dvc" / "cache" and not b_cache.exists()  # nothing of A's
    ok(b.dvc("pull"))  # no --run-cache: the outputs alone are all `repro` needs
    return Shared(a, b, remote, origin, checkpoint, files_below(a.root / ".dvc" / "cache" / "runs"))


def test_a_clone_pulls_the_outputs_into_its_own_cache_and_reproduces_nothing(shared):
    a, b = shared.a, shared.b
    # B's cache holds exactly what the remote holds: it was filled by the pull, from the remote.
    assert files_below(b.root / ".dvc" / "cache" / "files") == files_below(shared.remote / "files") != set()
    # The run-cache went to the remote too (`dvc push --run-cache`).
    assert files_below(shared.remote / "runs") == shared.pushed_runs != set()
    a_outputs, b_outputs = digests(a), digests(b)
    assert {"models/resnet18.pt", "models/resnet34.pt", "models/resnet50.pt",
            "metrics/summary.json", "data/raw/train.npz"} <= set(b_outputs)
    assert b_outputs == a_outputs
    repro = ok(b.dvc("repro"))
    assert ran_stages(repro.stdout) == set(), repro.stdout
    assert_clean(b)
    assert digests(b) == a_outputs


def test_an_experiment_comes_back_in_the_clone_without_training(shared):
    a, b = shared.a, shared.b
    baseline = digests(a, ("models",))
    # A key of ResNet-18's block: one train stage runs, then evaluate and report (a shared key's
    # three trainings would prove no more about the way back).
    run = ok(a.dvc("exp", "run", "-n", EXP, "-S", "model.resnet18.lr_scale=0.5"))
    assert ran_stages(run.stdout) == {"train-resnet18", "evaluate", "report"}, run.stdout
    trained = digests(a, ("models", "metrics", "plots"))
    assert trained["models/resnet18.pt"] != baseline["models/resnet18.pt"]  # new weights
    ok(a.dvc("exp", "push", "origin", EXP))  # the git refs, and the outputs to the DVC remote
    ok(b.dvc("exp", "pull", "origin", EXP))
    listed = ok(b.dvc("exp", "list", "--name-only")).stdout.split()
    assert EXP in listed, listed
    apply = ok(b.dvc("exp", "apply", EXP))
    assert ran_stages(apply.stdout) == set() and "epoch" not in apply.stdout + apply.stderr
    assert b.params()["model"]["resnet18"]["lr_scale"] == 0.5
    assert digests(b, ("models", "metrics", "plots")) == trained
    assert_clean(b)  # the applied outputs match the applied dvc.lock: nothing left to run
    assert not (b.root / "checkpoints").exists()  # a train stage run in B would have made it


def test_resume_checkpoints_are_not_shared(shared):
    names = ok(run_cmd(["git", "log", "--all", "--name-only", "--format="], cwd=shared.origin)).stdout.split()
    assert "dvc.lock" in names and not [n for n in names if n.startswith("checkpoints/") or n.endswith(".pt")]
    lock = yaml.safe_load(ok(run_cmd(["git", "show", "main:dvc.lock"], cwd=shared.origin)).stdout)
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert "models/resnet50.pt" in outs and not [o for o in outs if o.startswith("checkpoints")]
    remote_files = [p for p in shared.remote.rglob("*") if p.is_file()]
    assert remote_files and not [p for p in remote_files if p.read_bytes() == shared.checkpoint]
    assert not (shared.b.root / "checkpoints").exists()
