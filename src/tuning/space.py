"""SPACE.yaml of `python -m src.sweep`: what to search and what to choose by, checked in full
against params.yaml's schema (src/params.py) before anything is queued.

    objective: resnet18        # that model's val top-1; or mean: the mean over the models
    val_size: 5000             # images held out of train for the objective (default 5000)
    space:                     # any -S key
      lr: {low: 0.05, high: 0.8, log: true}       # a range (ints if both ends are ints)
      train.label_smoothing: {choices: [0.0, 0.1]}
      epochs: {values: [50, 100]}                 # a grid (choices, for tpe and random)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from optuna import distributions
from pydantic import ValidationError

from src.errors import UserError
from src.params import Params, load_params, parse_params

DEFAULT_VAL_SIZE = 5000
MEAN = "mean"
RANGE_KEYS, LIST_KEYS = {"low", "high", "log", "step"}, ("choices", "values")
VAL_SIZE_KEY = "data.val_size"


@dataclass(frozen=True)
class Space:
    objective: str  # a model of params.yaml, or "mean"
    val_size: int
    dimensions: dict[str, distributions.BaseDistribution]  # {-S key: its distribution}
    grid: dict[str, list] | None  # {-S key: values} when every key is a list (`--sampler grid`)

    def models(self, names: list[str]) -> list[str]:
        """The models whose val top-1 the objective reads."""
        return list(names) if self.objective == MEAN else [self.objective]

    def as_dict(self) -> dict:
        """What the study records, to refuse resuming it with another space."""
        return {"objective": self.objective, "val_size": self.val_size,
                "space": {key: distributions.distribution_to_json(d) for key, d in self.dimensions.items()}}


def load_space(path: str | Path, params_path: str | Path = "params.yaml") -> Space:
    """SPACE.yaml as a Space, or a one-line UserError naming the problem."""
    path = Path(path)
    where = path.name
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: write a SPACE.yaml (docs/experiments.md, Tuning, has one)") from None
    except yaml.YAMLError as error:
        raise UserError(f"{where} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with objective, val_size and space; found "
                        f"{type(raw).__name__}")
    unknown = set(raw) - {"objective", "val_size", "space"}
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}: the keys are objective, val_size, space")
    params = load_params(params_path)  # a broken params.yaml says so first
    params_raw = yaml.safe_load(Path(params_path).read_text())
    objective = _objective(raw.get("objective"), params.model.names, where)
    val_size = _val_size(raw.get("val_size", DEFAULT_VAL_SIZE), params_raw, where)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise UserError(f"{where}: space is empty: give at least one -S key and its range, e.g. "
                        "`space: {lr: {low: 0.05, high: 0.8, log: true}}`")
    base = _with(params_raw, VAL_SIZE_KEY, val_size)
    dimensions, lists = {}, {}
    for key, spec in ((str(k), v) for k, v in space.items()):
        dimensions[key], values = _dimension(key, spec, where)
        _check_values(base, key, values, where)
        if isinstance(spec, dict) and any(k in spec for k in LIST_KEYS):
            lists[key] = values
    return Space(objective, val_size, dimensions, lists if len(lists) == len(dimensions) else None)


def _objective(value: Any, models: list[str], where: str) -> str:
    choices = f"a model ({', '.join(models)}: its val top-1) or {MEAN} (the mean of their val top-1)"
    if value is None:
        raise UserError(f"{where} has no objective: name {choices}")
    if value in models or value == MEAN:
        return value
    text = str(value)
    if any(text.startswith(f"{m}.") or text.startswith(f"metrics/{m}") for m in models) or "test" in text:
        raise UserError(f"{where}: objective {text!r} is not allowed: a sweep chooses on the val split only "
                        f"(the test split is scored once, by --final); name {choices}")
    raise UserError(f"{where}: objective {text!r} is not a model of params.yaml: name {choices}")


def _val_size(value: Any, params_raw: dict, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: val_size must be a whole number of images, not {value!r}")
    if value <= 0:
        raise UserError(f"{where}: val_size {value} holds out no images, and the objective is a val "
                        f"top-1: hold out some (default {DEFAULT_VAL_SIZE})")
    try:
        parse_params(_with(params_raw, VAL_SIZE_KEY, value))
    except UserError as error:
        reason = str(error).splitlines()[0].removeprefix("params.yaml: ").split(". Fix params.yaml")[0]
        raise UserError(f"{where}: val_size {value} is too large ({reason}): hold out fewer images") from None
    return value


def _dimension(key: str, spec: Any, where: str) -> tuple[distributions.BaseDistribution, list]:
    """(the distribution of one space entry, the values to check against the schema)."""
    form = (f"{where}: space.{key} must be {{low: A, high: B}} (optionally log: true, step: S), "
            f"{{choices: [...]}} or {{values: [...]}}")
    if key == VAL_SIZE_KEY:
        raise UserError(f"{where}: space.{key}: the val split's size is SPACE.yaml's val_size, not a "
                        "searched key (every trial holds out the same images)")
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{form}, not {spec!r}")
    lists = [k for k in LIST_KEYS if k in spec]
    if lists:
        values = spec[lists[0]]
        if set(spec) != {lists[0]} or not isinstance(values, list) or not values:
            raise UserError(f"{form}: a non-empty list alone")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise UserError(f"{where}: space.{key}: each of {lists[0]} must be a number, a string, "
                            f"true/false or null, not {values!r}")
        return distributions.CategoricalDistribution(values), values
    if not set(spec) <= RANGE_KEYS or not {"low", "high"} <= set(spec):
        raise UserError(form)
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers) or not isinstance(log, bool):
        raise UserError(f"{where}: space.{key}: low, high and step must be numbers and log true/false")
    if not low < high:
        raise UserError(f"{where}: space.{key}: low {low} must be below high {high}")
    if log and (low <= 0 or step is not None):
        raise UserError(f"{where}: space.{key}: log: true needs low > 0 and no step")
    if all(isinstance(v, int) for v in numbers):
        return distributions.IntDistribution(low, high, log=log, step=step or 1), [low, high]
    return distributions.FloatDistribution(float(low), float(high), log=log, step=step), [low, high]


def _check_values(base: dict, key: str, values: list, where: str) -> None:
    """Each end of a range and each listed value must be a value params.yaml's schema takes for
    `key` (the bounds there are ranges, so a range whose ends pass passes in between)."""
    for value in values:
        try:
            Params.model_validate(_with(base, key, value))
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]
            if problem["type"] == "extra_forbidden":
                raise UserError(f"{where}: space.{key} is not a key of params.yaml (check its spelling; "
                                "the keys are those `dvc exp run -S` takes, see src/params.py)") from None
            raise UserError(f"{where}: space.{key}: {value!r} is refused by params.yaml's schema: "
                            f"{problem['msg'].removeprefix('Value error, ')}") from None
        except KeyError:
            raise UserError(f"{where}: space.{key} is not a key of params.yaml (check its spelling; "
                            "the keys are those `dvc exp run -S` takes, see src/params.py)") from None


def _with(raw: dict, key: str, value: Any) -> dict:
    """A copy of params.yaml's mapping with the dotted `key` set to `value`, as `-S` would.
    KeyError when a part of `key` before the last is not a mapping."""
    params = copy.deepcopy(raw)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(key)
    node[leaf] = value
    return params
