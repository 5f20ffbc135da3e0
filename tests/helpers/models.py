"""The models, as every stage and command takes them: the model.<name> blocks of params.yaml."""
from __future__ import annotations

from pathlib import Path

from src.params import load_params

ROOT = Path(__file__).resolve().parents[2]
_PARAMS = load_params(ROOT / "params.yaml")
MODELS = tuple(_PARAMS.model.names)
ARCHITECTURES = {name: _PARAMS.recipe(name).architecture() for name in MODELS}  # what build_model takes
TRAIN_STAGES = {f"train-{name}" for name in MODELS}


def build_model(name: str, **options):
    """The model `name` of params.yaml as the train stage builds it (src.models.build)."""
    from src.models.build import build_model as build
    return build(ARCHITECTURES[name], **options)
