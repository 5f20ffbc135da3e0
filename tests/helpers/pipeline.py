"""dvc.yaml as written and as DVC resolves it, and the modules no stage runs."""
from __future__ import annotations

import json

import yaml

from helpers.project import ROOT

# User commands (`python -m src.compare`, `python -m src.classify`, `python -m src.sweep`,
# `python -m src.space`) and the code only they and app.py share (src/serving.py; src/imports.py,
# which src.space and the lineage test use): they read the pipeline's results or run DVC, no stage
# runs them.
COMMANDS = {ROOT / "src" / "compare.py", ROOT / "src" / "classify.py", ROOT / "src" / "classifier.py",
            ROOT / "src" / "images.py", ROOT / "src" / "experiments.py", ROOT / "src" / "sweep.py",
            ROOT / "src" / "serving.py", ROOT / "src" / "space.py", ROOT / "src" / "imports.py",
            *(ROOT / "src" / "tuning").glob("*.py")}


def declared(stage: str) -> dict:
    """A stage of this checkout's dvc.yaml, as written."""
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]


def declared_code(stage: str) -> set[str]:
    return {d for d in declared(stage)["deps"] if d.endswith(".py")}


def resolved_stages(root) -> dict[str, dict]:
    """Each stage as DVC itself loads it from `root`/dvc.yaml: cmd, deps, params by file, outs."""
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        return {stage.name: {"cmd": stage.cmd,
                             "deps": sorted(d.def_path for d in stage.deps if not hasattr(d, "params")),
                             "params": {d.def_path: sorted(d.params) for d in stage.deps if hasattr(d, "params")},
                             "outs": sorted((o.def_path, o.use_cache, o.metric, o.plot) for o in stage.outs)}
                for stage in repo.index.stages}


def written_out(pipeline: dict) -> dict:
    """dvc.yaml with its anchors expanded and every params entry a plain key, as one would write it."""
    pipeline = json.loads(json.dumps(pipeline))  # no shared objects: YAML would anchor them again
    for stage in pipeline["stages"].values():
        keys = []
        for entry in stage.get("params", []):
            keys += [key for keys_of_file in entry.values() for key in keys_of_file] if isinstance(entry, dict) \
                else [entry]
        if keys:
            stage["params"] = keys
    return pipeline
