"""Parallel experiments: queued with `dvc exp run --queue`, run by `dvc queue start -j 2`,
each gives the same metrics as that experiment run alone. A one-model pipeline (ResNet-18, no
report): what is under test is DVC's queue and the stages' determinism, not the set of models."""
from __future__ import annotations

import json

import pytest
import torch

from helpers.commands import ok, ran_stages
from helpers.project import drop_report, keep_models, tiny_repo
from helpers.queue import run_queue

LRS = ("0.05", "0.2")  # two experiments, run at the same time by two queue workers
ACCURACY_FILES = ("resnet18.json", "summary.json")
TRAIN_STAGES = {"train-resnet18"}


def applied_metrics(repo, name: str) -> dict[str, bytes]:
    ok(repo.dvc("exp", "apply", name))
    return {f: (repo.root / "metrics" / f).read_bytes() for f in ACCURACY_FILES}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, cifar_archive, http_server):
    project = tiny_repo(tmp_path_factory.mktemp("queue") / "project", cifar_archive, http_server)
    keep_models(project, ["resnet18"])
    drop_report(project)
    ok(project.dvc("repro", "augment"))  # the data, in the cache; every experiment trains anew
    project.git("add", "-A")
    ok(project.git("commit", "-q", "-m", "baseline"))
    return project


def test_queued_experiments_run_two_at_a_time_match_runs_alone(repo):
    # Alone with no loader worker, queued with one: the result must not depend on that either,
    # and the changed `runtime` params make DVC really run every train stage again instead of
    # restoring the models of the runs alone from its run-cache.
    for lr in LRS:
        alone = ok(repo.dvc("exp", "run", "-n", f"alone-{lr}", "-S", f"lr={lr}", "-S", "runtime.workers=0"))
        assert ran_stages(alone.stdout) >= TRAIN_STAGES, alone.stdout
    for lr in LRS:
        ok(repo.dvc("exp", "run", "--queue", "-n", f"queued-{lr}", "-S", f"lr={lr}", "-S", "runtime.workers=1"))
    run_queue(repo, jobs=2, expected=len(LRS), timeout=900)
    for lr in LRS:  # the queued runs trained (their logs are DVC's record of each task)
        log = ok(repo.dvc("queue", "logs", f"queued-{lr}")).stdout
        assert ran_stages(log) >= TRAIN_STAGES, log[-3000:]
    for lr in LRS:
        alone, queued = applied_metrics(repo, f"alone-{lr}"), applied_metrics(repo, f"queued-{lr}")
        for name in ACCURACY_FILES:
            assert queued[name] == alone[name], f"lr={lr}: metrics/{name} differs in the queue"
        assert json.loads(alone["summary.json"]) != {}
    ok(repo.dvc("queue", "stop"))


def test_queued_experiments_pinned_one_per_gpu(repo):
    """docs/scale.md's way to spread N queued experiments over N GPUs: each pinned with
    runtime.device=cuda:K. Where there are not two GPUs, each fails with the device error."""
    names = {"cuda:0": "on-gpu0", "cuda:1": "on-gpu1"}
    for device, name in names.items():
        ok(repo.dvc("exp", "run", "--queue", "-n", name, "-S", f"runtime.device={device}"))
    on_gpus = torch.cuda.device_count() >= len(names)
    succeeded_before = ok(repo.dvc("queue", "status")).stdout.count("Success")  # this module's other tasks
    status = run_queue(repo, jobs=len(names), expected=succeeded_before + (len(names) if on_gpus else 0),
                       timeout=900, tasks=len(names))
    for device, name in names.items():
        if on_gpus:  # each model file records the GPU that trained it
            ok(repo.dvc("exp", "apply", name))
            model = torch.load(repo.root / "models" / "resnet18.pt", weights_only=True)
            assert model["params"]["runtime"]["device"] == device
        else:
            log = ok(repo.dvc("queue", "logs", name)).stdout
            assert f"runtime.device = '{device}' but no cuda device is available here" in log, log[-3000:]
    assert status.count("Failed") == (0 if on_gpus else len(names)), status
    ok(repo.dvc("queue", "stop"))
