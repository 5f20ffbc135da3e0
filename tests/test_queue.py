"""Parallel experiments: queued with `dvc exp run --queue`, run by `dvc queue start -j 2`,
each gives the same metrics as that experiment run alone."""
from __future__ import annotations

import json
import time

import pytest

from conftest import ok, tiny_repo

LRS = ("0.05", "0.2", "0.03")
ACCURACY_FILES = ("resnet18.json", "resnet34.json", "resnet50.json", "summary.json")


def applied_metrics(repo, name: str) -> dict[str, bytes]:
    ok(repo.dvc("exp", "apply", name))
    return {f: (repo.root / "metrics" / f).read_bytes() for f in ACCURACY_FILES}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, cifar_archive, http_server):
    project = tiny_repo(tmp_path_factory.mktemp("queue") / "project", cifar_archive, http_server)
    ok(project.dvc("repro"))
    project.git("add", "-A")
    ok(project.git("commit", "-q", "-m", "baseline"))
    return project


def test_queued_experiments_run_two_at_a_time_match_runs_alone(repo):
    # --force: every stage really runs (no run-cache restore), alone and in the queue.
    for lr in LRS:
        ok(repo.dvc("exp", "run", "--force", "-n", f"alone-{lr}", "-S", f"lr={lr}"))
    for lr in LRS:
        ok(repo.dvc("exp", "run", "--queue", "--force", "-n", f"queued-{lr}", "-S", f"lr={lr}"))
    ok(repo.dvc("queue", "start", "-j", "2"))
    deadline = time.monotonic() + 900
    while True:
        status = ok(repo.dvc("queue", "status")).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == len(LRS), status
    for lr in LRS:
        alone, queued = applied_metrics(repo, f"alone-{lr}"), applied_metrics(repo, f"queued-{lr}")
        for name in ACCURACY_FILES:
            assert queued[name] == alone[name], f"lr={lr}: metrics/{name} differs in the queue"
        assert json.loads(alone["summary.json"]) != {}
    ok(repo.dvc("queue", "stop"))
