"""What DVC re-runs for the train stages after a change, and that resuming keeps the run-cache."""
from __future__ import annotations

import json

import pytest

from helpers.commands import ran_stages
from helpers.models import TRAIN_STAGES
from helpers.project import copy_project

UPSTREAM = ["download", "augment", *sorted(TRAIN_STAGES)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, trained_tiny):
    """A git repository where `dvc repro` has run every stage (2 epochs), committed."""
    return copy_project(trained_tiny, tmp_path_factory.mktemp("dvc_train") / "project")


def changed_stages(project) -> set[str]:
    result = project.dvc("status", "--json", *UPSTREAM)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout or "{}"))


def test_a_clean_repro_leaves_nothing_to_do(repo):
    assert changed_stages(repo) == set()


@pytest.mark.parametrize("change, expected", [
    ({"lr": 0.05}, TRAIN_STAGES),
    ({"epochs": 3}, TRAIN_STAGES),
    ({"model.resnet50.mixup_alpha": 0.4}, {"train-resnet50"}),
    ({"model.resnet18.lr_scale": 0.5}, {"train-resnet18"}),
    # A shared augmentation key reaches every model (and the augment stage's preview); a model's
    # override, its AutoAugment probability or the preview alone reach only their own stage.
    ({"augment.cutout_p": 0.25}, {"augment"} | TRAIN_STAGES),
    ({"augment.preview_images": 4}, {"augment"}),
    ({"model.resnet50.augment": {"crop": "pad"}}, {"train-resnet50"}),
    ({"model.resnet50.autoaugment": 0.0}, {"train-resnet50"}),
    ({"model.resnet18.augment": {"cutout_inside": True}}, {"train-resnet18"}),
    ({"augment.crop_fill": "reflect"}, {"augment"} | TRAIN_STAGES),
    ({"model.resnet34.augment": {"crop_fill": "mean"}}, {"train-resnet34"}),
    ({"model.width": 3}, TRAIN_STAGES),
    ({"model.dropout": 0.2}, TRAIN_STAGES),
    ({"model.zero_init_residual": True}, TRAIN_STAGES),
    ({"train.ema_decay": 0.99}, TRAIN_STAGES),
    ({"model.resnet34.cutmix_alpha": 1.0}, {"train-resnet34"}),
])
def test_dvc_status_marks_exactly_the_stages_a_param_reaches(repo, change, expected):
    original = (repo.root / "params.yaml").read_text()
    try:
        repo.set_params(change)
        assert changed_stages(repo) == expected
    finally:
        (repo.root / "params.yaml").write_text(original)


def test_exp_run_with_lr_retrains_the_three_models_only_and_the_run_cache_restores(repo):
    # The train stages as targets: evaluate and report would run in both experiments and tell
    # nothing about training (their own re-runs are test_pipeline_e2e's).
    result = repo.dvc("exp", "run", "-S", "lr=0.05", *sorted(TRAIN_STAGES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ran_stages(result.stdout) == TRAIN_STAGES
    assert not ran_stages(result.stdout) & {"download", "augment"}
    # Back to the committed lr: the earlier models come back from the run-cache, no training.
    result = repo.dvc("exp", "run", "-S", "lr=0.1", *sorted(TRAIN_STAGES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not ran_stages(result.stdout) & TRAIN_STAGES, result.stdout
    assert "epoch 1/" not in result.stdout + result.stderr
