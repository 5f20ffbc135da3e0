"""The one way to build a model: from the architecture in its params.yaml block (or its model file).

    {"block": "basic" | "bottleneck", "layers": [n1, n2, n3, n4]}    a CIFAR ResNet (resnet.py)
    {"module": "<name>", "options": {...}}                            src/models/<name>.py's
                                                                      build_model(**common, **options)
    {"zoo": "torchvision" | "timm", "name": "<name>", "options": {...}, "input_size": None | N}
                                                                      the zoo's architecture (zoo.py)

A ResNet variant is data (its block in params.yaml); an architecture that needs code is one
module under src/models/, imported here by name, so that only its own train stage depends on it
(evaluate reaches it through the model file, which the train stage rewrites when it changes).
A zoo's architecture takes its own `options`; width, zero_init_residual and dropout are the
project's ResNet keys and do not reach it.
"""
from __future__ import annotations

import importlib

from torch import nn

from src.models import zoo
from src.models.resnet import CifarResNet
from src.params import MODULE_NAME  # a module under src/models/, never a path


def build_model(architecture: dict, num_classes: int = 100, width: int = 64, zero_init_residual: bool = False,
                dropout: float = 0.0) -> nn.Module:
    common = {"num_classes": num_classes, "width": width, "zero_init_residual": zero_init_residual,
              "dropout": dropout}
    if "module" in architecture:
        return architecture_module(architecture["module"]).build_model(**common, **architecture.get("options", {}))
    if "zoo" in architecture:
        return zoo.build(architecture, num_classes)
    return CifarResNet(architecture["block"], list(architecture["layers"]), **common)


def check_architecture(architecture: dict) -> None:
    """A ValueError now, before any work, for an architecture module or zoo architecture that
    cannot be built (or cannot take 32x32 images)."""
    if "module" in architecture:
        architecture_module(architecture["module"])
    elif "zoo" in architecture:
        zoo.build(architecture)


def architecture_module(name: str):
    """src.models.<name>; a ValueError naming the problem when there is no such module."""
    if not MODULE_NAME.fullmatch(name) or name in ("build", "resnet", "zoo", "pretrained"):
        raise ValueError(f"{name!r} is not an architecture module name (a file src/models/<name>.py "
                         "with a build_model function)")
    try:
        module = importlib.import_module(f"src.models.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"src.models.{name}":  # the module exists; something it imports does not
            raise
        raise ValueError(f"there is no src/models/{name}.py") from None
    if not callable(getattr(module, "build_model", None)):
        raise ValueError(f"src/models/{name}.py has no build_model(num_classes, width, "
                         "zero_init_residual, dropout, **options) function")
    return module


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
