"""The tiny sweep the sweep tests and scripts/benchmark_sweep.py run: one model that learns
within a few seconds, and its val split."""
from __future__ import annotations

import json

import yaml

from helpers.commands import ok
from helpers.project import TINY

LEARNS = {**TINY, "data.train_limit": 2000, "model.width": 8, "epochs": 3, "train.warmup_epochs": 0}
VAL_SIZE = 200


def exp_refs(repo) -> dict[str, str]:
    """{experiment name: its git ref} of every experiment (and the queue's stash refs)."""
    listed = ok(repo.git("for-each-ref", "--format=%(refname)", "refs/exps")).stdout.split()
    return {ref.rsplit("/", 1)[-1]: ref for ref in listed}


def exp_json(repo, ref: str, path: str) -> dict:
    """A JSON file of an experiment's commit, as git has it (not as the sweep reports it)."""
    return json.loads(ok(repo.git("show", f"{ref}:{path}")).stdout)


def exp_params(repo, ref: str) -> dict:
    return yaml.safe_load(ok(repo.git("show", f"{ref}:params.yaml")).stdout)
