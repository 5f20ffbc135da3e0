"""A trained model ready for image arrays: shared by `python -m src.classify` and app.py.

A models/<name>.pt file is all inference needs (src/model_file.py reads and checks it). Images
go through the same normalisation and forward pass as evaluation (src/predict.py), so a 32x32
test image gets the probabilities the evaluate stage computed for it. The models are the
`model.<name>` blocks of params.yaml (without one, as in a folder of model files alone: the
files in models/).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from src import model_file
from src.data.normalize import Normalizer
from src.errors import UserError
from src.params import RuntimeParams, load_params
from src.predict import build_trained, predict_logits
from src.runtime import Runtime, resolve

BATCH = 256  # images per forward pass


# --------------------------------------------------------------------------- model files

def model_names(root: Path = Path(".")) -> list[str]:
    """The models of params.yaml under `root`, in its order (no params.yaml: the model files there)."""
    if (root / "params.yaml").is_file():
        return load_params(root / "params.yaml").model.names
    return sorted(path.stem for path in (root / "models").glob("*.pt"))


def trained_models(root: Path = Path(".")) -> list[str]:
    """The models whose file exists, in the pipeline's order."""
    return [name for name in model_names(root) if model_file.path_of(name, root).is_file()]


def inference_runtime(device: str = "auto") -> Runtime:
    """fp32 on any device: a few images gain nothing from bf16, which would change the
    probabilities; eager (compiling costs seconds, a forward pass milliseconds)."""
    return resolve(RuntimeParams(device=device, compile=False, precision="fp32", workers=0))


@dataclass
class Classifier:
    """A trained model ready for inference, with what its file says about it."""
    name: str
    path: Path
    model: nn.Module
    normalize: Normalizer
    classes: list[str]
    runtime: Runtime
    trained_with: dict  # the training params stored in the model file

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, classes) softmax of uint8 (N, 32, 32, 3) RGB images."""
        logits = predict_logits(self.model, images, self.normalize, self.runtime, BATCH)
        return logits.softmax(1).numpy()

    def top(self, image: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable (class, probability) of one image, best first."""
        return top_k(self.probabilities(image[None])[0], self.classes, k)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]  # stable: ties keep class order
    return [(classes[i], float(probabilities[i])) for i in order]


def load_classifier(path: Path, runtime: Runtime) -> Classifier:
    """The model file at `path` (read and checked by src/model_file.py) on the runtime's device."""
    state = model_file.read(path)  # refuses hostile, foreign and outdated files with a clear message
    model, normalize = build_trained(state, runtime)
    return Classifier(state["model"], path, model, normalize, list(state["classes"]), runtime,
                      state.get("params") or {})


# --------------------------------------------------------------------------- metrics

def test_metrics(name: str, root: Path = Path(".")) -> dict | None:
    """metrics/<name>.json as the evaluate stage wrote it, or None when absent or unreadable."""
    try:
        metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "top1" in metrics else None


def default_model(root: Path = Path(".")) -> tuple[str, str]:
    """(model, why): the trained model with the best test top-1, else the first trained one."""
    trained = trained_models(root)
    if not trained:
        first = (model_names(root) or ["<name>"])[0]
        raise UserError(f"no trained model in models/: train one with `dvc repro train-{first}` (all of "
                        "them: `dvc repro`), or fetch the trained models with `dvc pull`")
    try:
        summary = json.loads((root / "metrics" / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    scores = {name: summary[name]["top1"] for name in trained
              if isinstance(summary.get(name), dict) and isinstance(summary[name].get("top1"), (int, float))}
    if scores:
        best = max(scores, key=scores.get)
        return best, f"the best test top-1 in metrics/summary.json ({scores[best]:.2f}%)"
    return trained[0], ("no test metrics in metrics/summary.json (run `dvc repro evaluate`): the first "
                        "trained model found")


def score_text(metrics: dict | None, key: str = "top1") -> str:
    """"78.12% (77.31-78.95)": a test score of metrics/<name>.json with its 95% interval."""
    if metrics is None:
        return "not evaluated yet: `dvc repro evaluate`"
    text = f"{metrics[key]:.2f}%"
    low, high = metrics.get(f"{key}_low"), metrics.get(f"{key}_high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        text += f" ({low:.2f}-{high:.2f})"
    return text


def trained_with_text(params: dict) -> str:
    """The training params stored in the model file, in a line."""
    recipe, train = params.get("recipe") or {}, params.get("train") or {}
    parts = [f"{label} {params[key]:g}" for key, label in
             (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch"), ("width", "width"), ("seed", "seed"))
             if isinstance(params.get(key), (int, float))]
    parts += [f"{key.replace('_alpha', '')} {recipe[key]:g}" for key in ("mixup_alpha", "cutmix_alpha")
              if recipe.get(key)]
    autoaugment = recipe.get("autoaugment")  # a probability (a flag in older model files)
    parts += [f"AutoAugment {autoaugment:g}" if not isinstance(autoaugment, bool) else "AutoAugment"] \
        if autoaugment else []
    parts += [f"EMA {train['ema_decay']:g}"] if train.get("ema_decay") else []
    return ", ".join(parts) or "(no params in the model file)"
