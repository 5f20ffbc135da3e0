"""Adding a model as docs/models.md says: its snippets, inserted into params.yaml and dvc.yaml as
a user pastes them, and the outputs of the models already there (which must not change)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from helpers.docs import section
from helpers.models import MODELS


def snippets(page: str, title: str) -> list[str]:
    """The ```yaml blocks of a docs section, each as it goes into its file (indentation removed)."""
    return [dedented(block) for block in re.findall(r"```yaml\n(.*?)```", section(page, title), re.S)]


def dedented(block: str) -> str:
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def indented(text: str) -> str:
    """Two spaces in: a block under `model:`, a stage under `stages:`."""
    return "".join(f"  {line}\n" if line else "\n" for line in text.splitlines())


def insert_models(root: Path, blocks: str, stages: str, models: list[str]) -> None:
    """Model blocks after the others under `model:`, stages before `evaluate`, and each model's file
    after the last of evaluate's model deps: text inserted, nothing else rewritten."""
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("\ntrain:\n", "\n" + indented(blocks) + "\ntrain:\n", 1))
    pipeline = (root / "dvc.yaml").read_text()
    pipeline = pipeline.replace("\n  evaluate:\n", "\n" + indented(stages) + "\n  evaluate:\n", 1)
    last_model = [m.group(0) for m in re.finditer(r"\n      - models/[\w-]+\.pt", pipeline)][-1]
    deps = "".join(f"\n      - models/{name}.pt" for name in models)
    (root / "dvc.yaml").write_text(pipeline.replace(last_model, last_model + deps, 1))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def original_outputs(root: Path) -> dict[str, str]:
    """md5 of every output of the original models: weights, curves, metrics, plot tables."""
    files = [root / f"models/{m}.pt" for m in MODELS] + [root / f"metrics/{m}.json" for m in MODELS]
    files += [p for m in MODELS for p in sorted((root / "plots/train" / m).rglob("*")) if p.is_file()]
    files += [root / f"plots/{kind}/{m}.csv" for kind in ("confusion", "reliability", "per_class", "predictions")
              for m in MODELS]
    return {str(p.relative_to(root)): md5(p) for p in files}
