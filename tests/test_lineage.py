"""Lineage: every stage declares exactly the project code it runs, so DVC re-runs what a change affects."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from helpers.pipeline import COMMANDS
from src import imports

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def imported_files(script: Path) -> set[Path]:
    """The project files `script` imports, transitively, including package __init__ files: the
    walk `python -m src.space` also uses."""
    return imports.imported_files(script, ROOT)


def has_code(path: Path) -> bool:
    """False for an __init__.py that holds nothing but a docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def stage_script(stage: dict) -> Path:
    module = re.match(r"python -m ([\w.]+)", stage["cmd"]).group(1)
    return imports.module_file(module, ROOT)


def declared_code(stage: dict) -> set[Path]:
    return {ROOT / d for d in stage.get("deps", []) if d.endswith(".py")}


def architecture_module(stage_name: str) -> set[Path]:
    """The module a train stage's model names in params.yaml (`module:`), imported by name."""
    block = PARAMS["model"].get(stage_name.removeprefix("train-"), {}) if stage_name.startswith("train-") else {}
    module = block.get("module") if isinstance(block, dict) else None
    return {ROOT / "src" / "models" / f"{module}.py"} if module else set()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_project_code_it_imports(name):
    stage = STAGES[name]
    imported = {p for p in imported_files(stage_script(stage)) if has_code(p)} | architecture_module(name)
    declared = declared_code(stage)
    rel = lambda paths: sorted(str(p.relative_to(ROOT)) for p in paths)  # noqa: E731
    assert rel(imported - declared) == [], f"{name} imports these but does not list them in deps"
    assert rel(declared - imported) == [], f"{name} lists these in deps but never imports them"


def test_empty_package_inits_really_are_empty():
    """The lineage check skips __init__.py files without code; keep them that way."""
    for init in ROOT.glob("src/**/__init__.py"):
        assert not has_code(init), f"{init} has code: list it in the deps of the stages that import it"


@pytest.mark.parametrize("name", [s for s in STAGES if s.startswith("train-")])
def test_no_train_stage_depends_on_evaluate_or_report_code(name):
    for dep in STAGES[name]["deps"]:
        assert not re.search(r"(evaluate|report)", dep), f"{name} depends on {dep}"


def test_every_project_module_is_used_by_some_stage():
    """But an architecture module no model names (src/models/custom_cnn.py, say): it becomes a
    dep of the train stage of the model that names it, and of that stage alone."""
    used = set().union(*(declared_code(s) for s in STAGES.values()))
    modules = {p for p in ROOT.glob("src/**/*.py") if has_code(p)} - COMMANDS - architecture_modules()
    assert sorted(str(p.relative_to(ROOT)) for p in modules - used) == []


def architecture_modules() -> set[Path]:
    """src/models/<module>.py files that no stage imports: each has build_model and is named by
    `module:` in a model block (src/models/build.py)."""
    imported = set().union(*(imported_files(stage_script(s)) for s in STAGES.values()))
    found = {p for p in (ROOT / "src" / "models").glob("*.py") if p not in imported and p.name != "__init__.py"}
    for path in found:
        assert "def build_model(" in path.read_text(), f"{path} is imported by no stage and has no build_model"
    return found


def test_user_commands_are_no_stage_code():
    """A command's edits must not re-run a stage: no stage lists or imports it."""
    for name, stage in STAGES.items():
        assert not COMMANDS & declared_code(stage), name
        assert not COMMANDS & imported_files(stage_script(stage)), name


def test_evaluation_and_inference_import_no_training_code():
    """Editing the training loop or the checkpoint saver must not re-run evaluate, nor touch the
    code that the app and src.classify run."""
    for script in [stage_script(STAGES["evaluate"]), *COMMANDS, ROOT / "app.py"]:
        training = sorted(str(p.relative_to(ROOT)) for p in imported_files(script)
                          if p.is_relative_to(ROOT / "src" / "train"))
        assert training == [], f"{script.relative_to(ROOT)} imports {training}"


def test_every_model_of_params_has_its_train_stage_and_evaluate_dep():
    """The three places a model is named (docs/models.md) agree."""
    from src.params import load_params

    models = load_params(ROOT / "params.yaml").model.names
    assert models, "params.yaml has no model block"
    assert sorted(s.removeprefix("train-") for s in STAGES if s.startswith("train-")) == sorted(models)
    assert sorted(d for d in STAGES["evaluate"]["deps"] if d.startswith("models/")) == \
        sorted(f"models/{m}.pt" for m in models)
    for name in models:
        assert f"models/{name}.pt" in STAGES[f"train-{name}"]["outs"]
        assert STAGES[f"train-{name}"]["cmd"] == f"python -m stages.train --model {name}"
