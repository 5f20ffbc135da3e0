"""Projects with trained models, for the tests of `python -m src.classify` and app.py.

`trained_project` is a copy of the working tree where the real download, augment, train
(ResNet-18, tiny; the two others written untrained in the same format) and evaluate stages
ran; `partial_project` holds nothing but the code and one of those model files (no data, no
metrics), as after a partial `dvc pull`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.commands import ok
from helpers.models import ARCHITECTURES, MODELS, build_model
from helpers.project import Project, copy_working_tree, train
from src import model_file

PARAMS = {"data.train_limit": 300, "data.test_limit": 60, "model.width": 2, "epochs": 1,
          "batch_size": 100, "lr": 0.1, "augment.preview_images": 4,
          "runtime.device": "cpu", "runtime.workers": 0, "runtime.compile": False,
          "runtime.eval_batch_size": 64}
PARTIAL_MODEL = "resnet34"  # the one model of partial_project
# Everything these projects run (stages, the command, the app) gets one OpenMP thread: on two
# cores shared with other test processes, a forward pass of these tiny models on two threads
# waits up to 0.6 s for a descheduled thread; on one it takes a millisecond.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

_built: dict[str, Project] = {}  # once per test process, shared by test_classify.py and test_app.py


def trained_project(tmp_path_factory, downloaded) -> Project:
    if "trained" not in _built:
        source, _, download = downloaded
        ok(download)
        project = copy_working_tree(tmp_path_factory.mktemp("inference") / "project", git=False)
        project.env.update(ONE_THREAD)
        project.link_raw_from(source)
        project.set_params(PARAMS)
        ok(project.stage("augment"))
        ok(train(project, "resnet18"))
        write_untrained_like(project.root / "models" / "resnet18.pt", [m for m in MODELS if m != "resnet18"])
        ok(project.stage("evaluate"))
        _built["trained"] = project
    return _built["trained"]


def write_untrained_like(trained: Path, names: list[str]) -> None:
    """Model files in the format of `trained` (the train stage's), with untrained weights of other
    architectures: training them too would double the time of these tests and check nothing more."""
    state = model_file.read(trained)
    for seed, name in enumerate(names, start=1):
        torch.manual_seed(seed)
        model = build_model(name, width=state["width"])
        model_file.write(trained.parent / f"{name}.pt", name=name, architecture=ARCHITECTURES[name],
                         width=state["width"], state_dict=model.state_dict(), ema=state["ema"],
                         params={**state["params"], "model": name}, prepared_data_hash=state["prepared_data_hash"],
                         normalize=state["normalize"], classes=state["classes"], history=state["history"],
                         versions=state["versions"])


def partial_project(tmp_path_factory, trained: Project) -> Project:
    if "partial" not in _built:
        project = copy_working_tree(tmp_path_factory.mktemp("partial") / "project", git=False)
        project.env.update(ONE_THREAD)
        (project.root / "models").mkdir()
        os.link(trained.root / "models" / f"{PARTIAL_MODEL}.pt", project.root / "models" / f"{PARTIAL_MODEL}.pt")
        _built["partial"] = project
    return _built["partial"]


def split_images(project: Project) -> tuple[np.ndarray, np.ndarray]:
    with np.load(project.root / "data" / "prepared" / "test.npz") as split:
        return split["images"], split["fine_labels"]


def save_pngs(images: np.ndarray, folder: Path, first: int = 0) -> list[Path]:
    """test-<first>.png, ...: the images exactly, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"test-{i:05d}.png" for i in range(first, first + len(images))]
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path)
    return paths


def classify(project: Project, *args: str | os.PathLike, timeout: float = 120):
    """`python -m src.classify ARGS` run in the project, as a user would."""
    return project.run(sys.executable, "-m", "src.classify", *args, timeout=timeout)
