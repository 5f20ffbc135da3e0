"""Copies of this checkout to run stages and dvc in, as a user's clone would.

Nothing here imports pytest or torch at import time: scripts/gpu_check.py uses it on machines
where pytest is not installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers.commands import BIN_DIR, run_cmd

ROOT = Path(__file__).resolve().parents[2]

# The whole pipeline through DVC in about half a minute on two CPU cores.
TINY = {"data.train_limit": 400, "data.test_limit": 200, "model.width": 2, "epochs": 1,
        "batch_size": 100, "lr": 0.1, "runtime.workers": 0}
# A few seconds per training run on two CPU cores.
SMALL = {"data.train_limit": 1000, "data.test_limit": 300, "model.width": 4, "epochs": 3,
         "batch_size": 64, "lr": 0.2, "train.warmup_epochs": 1, "runtime.workers": 1}


@dataclass
class Project:
    """A copy of the working tree in a temporary folder, to run stages and dvc in."""
    root: Path
    env: dict = field(default_factory=dict)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Set dotted keys in params.yaml, e.g. set_params({"data.url": url, "seed": 1})."""
        params = self.params()
        for key, value in {**(values or {}), **kwargs}.items():
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(self, *args: str | os.PathLike, timeout: float = 600) -> subprocess.CompletedProcess:
        return run_cmd(list(args), cwd=self.root, env=self.env, timeout=timeout)

    def stage(self, name: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`python -m stages.<name>`, as dvc.yaml runs it, without dvc."""
        return self.run(sys.executable, "-m", f"stages.{name}", timeout=timeout)

    def dvc(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run(BIN_DIR / "dvc", *args, timeout=timeout)

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("git", "-c", "user.name=pytest", "-c", "user.email=pytest@localhost",
                        "-c", "commit.gpgsign=false", *args)

    def files_under(self, folder: str) -> list[Path]:
        """Every file and folder below `folder` (empty when it is absent)."""
        path = self.root / folder
        return sorted(path.rglob("*")) if path.exists() else []

    def link_raw_from(self, other: Project) -> None:
        """Share another copy's data/raw (hard links: stages only read it)."""
        raw = self.root / "data" / "raw"
        raw.mkdir(parents=True)
        for file in (other.root / "data" / "raw").iterdir():
            os.link(file, raw / file.name)


def copy_tracked_files(dest: Path) -> None:
    """Copy the tracked and the untracked-but-not-ignored files of this checkout to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():  # not deleted in the working tree
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


def copy_working_tree(dest: Path, git: bool = True) -> Project:
    """Copy tracked and untracked-but-not-ignored files of the repo to `dest`; git-init it."""
    copy_tracked_files(dest)
    site_cache = dest.parent / f"{dest.name}-dvc-site-cache"
    site_cache.mkdir(exist_ok=True)
    project = Project(dest, env={"DVC_SITE_CACHE_DIR": str(site_cache)})
    if git:
        project.git("init", "-q")
        project.git("add", "-A")
        result = project.git("commit", "-q", "-m", "copy of the working tree")
        assert result.returncode == 0, result.stderr
    return project


def copy_project(project: Project, dest: Path) -> Project:
    """A copy of `project` at `dest`: git history, DVC cache and outputs, with a site cache of its
    own (DVC's per-repository state, such as its index, is keyed by the path) and none of .dvc/tmp."""
    shutil.copytree(project.root, dest, symlinks=True, ignore=lambda folder, names:
                    ["tmp"] if Path(folder) == project.root / ".dvc" else [])
    site_cache = dest.parent / f"{dest.name}-dvc-site-cache"
    site_cache.mkdir(exist_ok=True)
    return Project(dest, env={**project.env, "DVC_SITE_CACHE_DIR": str(site_cache)})


def tiny_repo(path: Path, archive, server) -> Project:
    """A git copy of the working tree with TINY params and the generated archive on loopback."""
    project = copy_working_tree(path, git=True)
    project.set_params({**TINY, "data.url": server.publish(archive.path), "data.md5": archive.md5})
    return project


def model_names(params: dict) -> list[str]:
    """The models of params.yaml's contents: the blocks under `model` (the other keys are shared
    settings such as `width`)."""
    return [name for name, block in params["model"].items() if isinstance(block, dict)]


def remove_models(params: dict, pipeline: dict, keep: list[str]) -> None:
    """Remove every model but `keep` from the contents of params.yaml and dvc.yaml, as docs/models.md
    removes one: its params block and reference, its train stage, its evaluate dep."""
    for name in [name for name in model_names(params) if name not in keep]:
        del params["model"][name], pipeline["stages"][f"train-{name}"]
        params["reference"].pop(name, None)
    evaluate = pipeline["stages"]["evaluate"]
    evaluate["deps"] = [dep for dep in evaluate["deps"]
                        if not dep.startswith("models/") or dep[len("models/"):-len(".pt")] in keep]


def keep_models(project: Project, names: list[str]) -> None:
    """Remove every other model from a project copy (its params block and reference, its train
    stage, its evaluate dep): a pipeline of `names` only."""
    params, pipeline = project.params(), yaml.safe_load((project.root / "dvc.yaml").read_text())
    remove_models(params, pipeline, names)
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def drop_report(project: Project) -> None:
    """Remove the report stage from a project copy: for tests that read metrics only (each run of
    the pipeline is then a process start, seconds of imports, shorter)."""
    pipeline = yaml.safe_load((project.root / "dvc.yaml").read_text())
    del pipeline["stages"]["report"]
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def clone(prepared: Project, path: Path) -> Project:
    """Another copy sharing the prepared data (hard links: stages only read it)."""
    project = copy_working_tree(path, git=False)
    (project.root / "params.yaml").write_text((prepared.root / "params.yaml").read_text())
    for folder in ("data/raw", "data/prepared"):
        (project.root / folder).mkdir(parents=True)
        for file in (prepared.root / folder).iterdir():
            os.link(file, project.root / folder / file.name)
    return project


def train(project: Project, model: str = "resnet18", timeout: float = 300) -> subprocess.CompletedProcess:
    return project.run(sys.executable, "-m", "stages.train", "--model", model, timeout=timeout)


def weights(project: Project, model: str = "resnet18") -> dict:
    import torch
    return torch.load(project.root / f"models/{model}.pt", weights_only=True)
