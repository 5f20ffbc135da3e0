"""Copies of this checkout, shared by the suite (conftest.py) and the GPU check (gpu_check.py,
which runs where pytest is not installed, so nothing here imports it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def model_names(params: dict) -> list[str]:
    """The models of params.yaml's contents: the blocks under `model` (the other keys are shared
    settings such as `width`)."""
    return [name for name, block in params["model"].items() if isinstance(block, dict)]


def remove_models(params: dict, pipeline: dict, keep: list[str]) -> None:
    """Remove every model but `keep` from the contents of params.yaml and dvc.yaml, as README "Add a
    model" removes one: its params block and reference, its train stage, its evaluate dep."""
    for name in [name for name in model_names(params) if name not in keep]:
        del params["model"][name], pipeline["stages"][f"train-{name}"]
        params["reference"].pop(name, None)
    evaluate = pipeline["stages"]["evaluate"]
    evaluate["deps"] = [dep for dep in evaluate["deps"]
                        if not dep.startswith("models/") or dep[len("models/"):-len(".pt")] in keep]
