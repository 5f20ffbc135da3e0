"""models/<name>.pt, the trained model file: written, read and checked here and nowhere else.

The train stage writes it (atomically); evaluate, `python -m src.classify` and the app read it.
It holds everything inference needs: the model's name and architecture (as its params.yaml
block gives it), width, input normalisation, class names and weights, plus the training params,
the hash of the prepared data it was trained on, its curves and the library versions. It is read
with weights_only=True, so a truncated or hostile file is refused instead of executed, and every
refusal says how to get a good file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.atomic import staged_file
from src.errors import UserError

REQUIRED = ("model", "architecture", "num_classes", "width", "state_dict", "normalize", "classes")


def path_of(name: str, root: str | Path = ".") -> Path:
    return Path(root) / "models" / f"{name}.pt"


def how_to_get(name: str) -> str:
    return f"train it with `dvc repro train-{name}`, or fetch the trained model with `dvc pull`"


def retrain(name: str) -> str:
    return f"Retrain it with `dvc repro train-{name}` (or `dvc repro` for everything)"


def write(path: str | Path, *, name: str, architecture: dict, width: int, state_dict: dict, ema: bool,
          params: dict, prepared_data_hash: str, normalize: dict, classes: list[str], history: list[dict],
          versions: dict, pretrained: dict | None = None) -> None:
    """`pretrained`: the ImageNet weights file the model started from (src/models/pretrained.py)."""
    state = {"model": name, "architecture": architecture, "num_classes": len(classes), "width": width,
             "state_dict": state_dict, "ema": ema, "params": params, "prepared_data_hash": prepared_data_hash,
             "normalize": normalize, "classes": classes, "history": history, "versions": versions,
             "pretrained": pretrained}
    with staged_file(path) as tmp:
        torch.save(state, tmp)


def read(path: str | Path) -> dict:
    """The model file at `path`, checked; a UserError saying what is wrong and how to fix it."""
    path = Path(path)
    name = path.stem
    if not path.is_file():
        raise UserError(f"{path} not found: {how_to_get(name)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"refusing {path}: expected a model file written by the train stage, "
                        f"found something torch's safe loader rejects ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'}). Delete it "
                        f"and run `dvc repro train-{name}`.") from None
    if not isinstance(state, dict) or "state_dict" not in state or "architecture" not in state:
        raise UserError(f"refusing {path}: it is not a model file written by the train stage "
                        f"(no state_dict/architecture). Delete it and run `dvc repro train-{name}`.")
    name = state.get("model", name) if isinstance(state.get("model"), str) else name
    if isinstance(state["architecture"], str):
        raise UserError(f"{path} was written by an older train stage (its architecture is a name, not the "
                        f"block and layers of its params.yaml block). {retrain(name)}.")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise UserError(f"refusing {path}: it lacks {', '.join(missing)}, so it is not a model file "
                        f"written by the train stage. {retrain(name)}.")
    _check_architecture(state["architecture"], path, name)
    classes = state["classes"]
    if (not isinstance(classes, list) or len(classes) != state["num_classes"]
            or not all(isinstance(c, str) for c in classes)):
        raise UserError(f"refusing {path}: it lists {len(classes) if isinstance(classes, list) else 'no'} "
                        f"class names for {state['num_classes']} outputs. {retrain(name)}.")
    return state


def _check_architecture(architecture, path: Path, name: str) -> None:
    resnet = (isinstance(architecture, dict) and architecture.get("block") in ("basic", "bottleneck")
              and isinstance(architecture.get("layers"), list) and len(architecture["layers"]) == 4
              and all(isinstance(n, int) and n >= 1 for n in architecture["layers"]))
    module = isinstance(architecture, dict) and isinstance(architecture.get("module"), str)
    zoo = (isinstance(architecture, dict) and architecture.get("zoo") in ("torchvision", "timm")
           and isinstance(architecture.get("name"), str))
    if not (resnet or module or zoo):
        raise UserError(f"refusing {path}: its architecture {architecture!r} is neither a ResNet "
                        f"(block basic|bottleneck, four layers), a module nor a zoo's. {retrain(name)}.")


def check_trained_on(state: dict, path: str | Path, prepared_hash: str) -> None:
    """A UserError if the model was trained on other prepared data than `prepared_hash`.

    Scores of a model trained on other data (another train_limit, val_size, archive, ...)
    would be recorded next to params that did not produce them.
    """
    trained_on = state.get("prepared_data_hash")
    if trained_on != prepared_hash:
        raise UserError(
            f"{path} is stale: it was trained on prepared data with hash {trained_on}, but "
            f"data/prepared now hashes to {prepared_hash} (the data, its limits or the "
            f"augmentation changed since). {retrain(state['model'])}, then evaluate again.")
