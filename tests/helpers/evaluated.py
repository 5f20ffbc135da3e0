"""The evaluate stage's inputs, made without training: tiny model files in the train stage's
format, DVCLive curves, and a project after two evaluate runs (tests/test_evaluate.py and
tests/test_report.py read it)."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live

from helpers.models import ARCHITECTURES, MODELS, build_model
from helpers.project import Project, copy_working_tree
from src import model_file
from src.provenance import data_hash, versions

# runtime.device stays auto: on a GPU machine the stage runs the CUDA path (bf16, channels_last),
# deterministically and without torch.compile, whose compile time would dominate these tiny runs.
TINY = {"data.train_limit": 300, "data.test_limit": 100, "data.val_size": 0,
        "augment.preview_images": 8, "runtime.eval_batch_size": 32, "runtime.workers": 0,
        "runtime.compile": False, "runtime.deterministic": True}
TEST_IMAGES, EVAL_BATCH = TINY["data.test_limit"], TINY["runtime.eval_batch_size"]
WIDTHS = {"resnet18": 2, "resnet34": 3, "resnet50": 2}  # tiny: speed only (any other model: 2)
PLOT_TABLES = ("confusion", "reliability", "per_class", "predictions")
METRIC_FILES = [f"metrics/{m}.json" for m in MODELS] + ["metrics/summary.json"]  # DVC metrics
DETAIL_FILES = [f"evaluation/detail/{m}.json" for m in MODELS]
ACCURACY_FILES = (METRIC_FILES + DETAIL_FILES
                  + [f"plots/{kind}/{m}.csv" for kind in PLOT_TABLES for m in MODELS])
TIMING_FILES = [f"evaluation/timing/{m}.json" for m in MODELS]


def write_model_file(path: Path, name: str, width: int, prepared_hash: str, mean, std, seed: int = 0) -> None:
    """A models/<name>.pt as stages/train.py writes it (untrained weights: only the format matters)."""
    torch.manual_seed(seed)
    model = build_model(name, width=width)
    model_file.write(path, name=name, architecture=ARCHITECTURES[name], width=width, state_dict=model.state_dict(),
                     ema=False, params={"model": name, "seed": seed, "lr": 0.1, "epochs": 1, "width": width},
                     prepared_data_hash=prepared_hash, normalize={"mean": list(mean), "std": list(std)},
                     classes=[f"class{i}" for i in range(100)], history=[], versions=versions())


def write_curves(folder: Path, epochs: int = 3) -> None:
    """plots/train/<name>/ as the train stage logs it with DVCLive (step: the epoch, from 1)."""
    with Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for epoch in range(epochs):
            live.step = epoch + 1
            for key, value in (("train/loss", 4.6 - 0.3 * epoch), ("train/acc", 1.0 + 5 * epoch),
                               ("heldout/loss", 4.5 - 0.2 * epoch), ("heldout/acc", 2.0 + 4 * epoch),
                               ("lr", 0.1 * (epochs - epoch) / epochs)):
                live.log_metric(key, value)
            live.next_step()
        live.summary["heldout_split"] = "test (monitoring only, nothing selected on it)"


@dataclass
class Evaluated:
    project: Project
    first: object   # CompletedProcess of the first evaluate run
    second: object  # ... and of the second
    first_bytes: dict[str, bytes]

    def json(self, rel: str) -> dict:
        return json.loads((self.project.root / rel).read_text())


def evaluated_project(tmp_path_factory, downloaded) -> Evaluated:
    """A git copy of the project after augment, tiny models and curves, and two evaluate runs."""
    source, _, download = downloaded
    assert download.returncode == 0, download.stderr[-3000:]
    project = copy_working_tree(tmp_path_factory.mktemp("evaluate") / "project", git=True)
    project.link_raw_from(source)
    project.set_params(TINY)
    augment = project.stage("augment")
    assert augment.returncode == 0, augment.stderr[-3000:]
    prepared = project.root / "data" / "prepared"
    stats = json.loads((prepared / "stats.json").read_text())
    for seed, name in enumerate(MODELS):
        write_model_file(project.root / "models" / f"{name}.pt", name, WIDTHS.get(name, 2),
                         data_hash(prepared), stats["mean"], stats["std"], seed)
        with contextlib.chdir(project.root):  # DVCLive looks for a repo from the working directory
            write_curves(project.root / "plots" / "train" / name)
    first = project.stage("evaluate")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    first_bytes = {rel: (project.root / rel).read_bytes() for rel in ACCURACY_FILES + TIMING_FILES}
    second = project.stage("evaluate")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    return Evaluated(project, first, second, first_bytes)
