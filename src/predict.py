"""Running a trained model: built from its model file, then batched logits for uint8 images.

The one way every stage and command runs a model: train (the held-out split each epoch),
evaluate, src.classify and the app.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from src.data.normalize import Normalizer
from src.errors import UserError
from src.models.build import build_model
from src.runtime import Runtime


def build_trained(state: dict, runtime: Runtime) -> tuple[nn.Module, Normalizer]:
    """The model of a checked model file (src/model_file.py) with its trained weights on the
    runtime's device, in eval mode, and its input normalisation."""
    name = state["model"]
    try:
        model = build_model(state["architecture"], num_classes=state["num_classes"], width=state["width"])
    except (ValueError, TypeError) as error:  # an architecture module that is not here, or other options
        raise UserError(f"cannot build {name} as its model file says ({state['architecture']}): {error}. "
                        f"Retrain it with `dvc repro train-{name}`.") from None
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise UserError(f"the weights of {name} do not fit its architecture {state['architecture']} "
                        f"(width {state['width']}): {str(error).splitlines()[0]}. "
                        f"Retrain it with `dvc repro train-{name}`.") from None
    model = model.to(runtime.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalizer(state["normalize"]["mean"], state["normalize"]["std"],
                           runtime.device, runtime.channels_last)
    return model, normalize


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, normalize: Normalizer, runtime: Runtime,
                   batch_size: int, hflip_tta: bool = False) -> torch.Tensor:
    """float32 logits (N, classes) on the CPU; the model is put in eval mode and left there.

    hflip_tta: test-time augmentation with the mirror image. The softmax of each image and
    of its mirror are averaged; what comes back is the log of that average, whose softmax
    (and so every metric computed from logits) is the averaged probability.
    """
    model.eval()
    source = torch.from_numpy(images)
    if runtime.device.type == "cuda":
        source = source.pin_memory()
    outputs = []
    for start in range(0, len(source), batch_size):
        x = normalize(source[start:start + batch_size])
        with runtime.autocast():
            logits = model(x).float()
            if hflip_tta:
                # log((p + p_mirror) / 2) in log space: no underflow to log(0).
                mirrored = model(x.flip(3)).float()
                logits = torch.logaddexp(logits.log_softmax(1), mirrored.log_softmax(1)) - math.log(2)
        outputs.append(logits)
    return torch.cat(outputs).cpu()
