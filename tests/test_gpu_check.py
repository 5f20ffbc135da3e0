"""scripts/gpu_check.sh --dry-run: the one command for a GPU machine runs on CPU at a tiny size and
writes the summary a GPU run writes. Two parts run (the cheapest that take the benchmark's and
pytest's figures); the others are skipped with --parts, as a rerun on a GPU skips what passed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.project import ROOT

# It runs scripts/gpu_check.sh, whose parts train, benchmark and run dvc.
pytestmark = pytest.mark.slow

PARTS = ["setup", "tests", "resnet18", "resnet50", "distributed", "repro"]


def test_the_dry_run_writes_the_summary_a_gpu_run_writes(tmp_path):
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items()  # the run's own pytest is not an xdist worker
           if not key.startswith(("PYTEST_", "PYTHONPATH"))}
    env.update(OUT=str(out), PYTHON=sys.executable, GPU_VENV=str(tmp_path / "venv"))
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--parts", "tests,resnet18"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert files == ["resnet18.log", "setup.log", "summary.json", "tests.log"]  # a log per part that ran, the summary
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"dry_run", "seconds", "limit_s", "passed", "parts", "goals", "accuracy_run"}
    assert summary["dry_run"] is True and summary["passed"] is True
    assert list(summary["parts"]) == PARTS
    for name, part in summary["parts"].items():
        assert set(part) == {"status", "seconds", "limit_s", "note", "log", "figures"}, name
        assert isinstance(part["seconds"], int) and isinstance(part["limit_s"], int), name
    statuses = {name: part["status"] for name, part in summary["parts"].items()}
    assert statuses == {"setup": "ok", "tests": "ok", "resnet18": "ok", "resnet50": "skipped",
                        "distributed": "skipped", "repro": "skipped"}
    assert summary["parts"]["repro"]["note"] == "not in --parts"

    environment = summary["parts"]["setup"]["figures"]
    assert environment["gpus"] == 0 and environment["torch"] and environment["dvc"]
    assert summary["parts"]["tests"]["figures"] == {"counts": {"passed": 1}, "failed": []}
    bench = summary["parts"]["resnet18"]["figures"]
    for key in ("train_step_img_s", "bare_step_img_s", "epoch_img_s", "eval_img_s",
                "train_step/bare_step", "epoch/train_step", "eval/bare_eval"):
        assert isinstance(bench[key], (int, float)) and bench[key] > 0, key
    assert bench["runtime"].startswith("cpu, fp32")
    # The H100/H200 goals are judged on a GPU run only; the accuracy run's minutes come from ResNet-18's speed.
    assert set(summary["goals"].values()) == {None}
    assert summary["accuracy_run"]["minutes"] > 0 and summary["accuracy_run"]["fits_a_10_minute_call"] is False
