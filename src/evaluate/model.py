"""A trained model file, checked against the data it is about to be evaluated on."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.cli import UserError
from src.models.resnet import build_model
from src.runtime import Runtime
from src.train.checkpoint import load_model_file
from src.data.normalize import Normalizer


def load_state(path: str | Path, prepared_hash: str) -> dict:
    """The model file at `path`; a UserError if it was trained on other prepared data.

    Scores of a model trained on other data (another train_limit, val_size,
    archive, ...) would be recorded next to params that did not produce them.
    """
    state = load_model_file(path)
    trained_on = state.get("prepared_data_hash")
    if trained_on != prepared_hash:
        raise UserError(
            f"{path} is stale: it was trained on prepared data with hash {trained_on}, but "
            f"data/prepared now hashes to {prepared_hash} (the data, its limits or the "
            f"augmentation changed since). Retrain it with `dvc repro train-{state['architecture']}` "
            "(or `dvc repro` for everything), then evaluate again.")
    return state


def build_trained(state: dict, runtime: Runtime) -> tuple[nn.Module, Normalizer]:
    """The model with its trained weights on the runtime's device, and its input normalisation."""
    model = build_model(state["architecture"], num_classes=state["num_classes"], width=state["width"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise UserError(f"the weights of {state['architecture']} do not fit its architecture "
                        f"(width {state['width']}): {str(error).splitlines()[0]}. "
                        "Retrain it with `dvc repro`.") from None
    model = model.to(runtime.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalizer(state["normalize"]["mean"], state["normalize"]["std"],
                           runtime.device, runtime.channels_last)
    return model, normalize
