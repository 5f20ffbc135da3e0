"""Architectures of torchvision and timm by name, made to take 32x32 CIFAR images.

    {"zoo": "torchvision" | "timm", "name": "<architecture>", "options": {...}, "input_size": None | N}

`options` are keyword arguments of the zoo's constructor (`torchvision.models.get_model`,
`timm.create_model`), e.g. {width_mult: 0.5} or {drop_rate: 0.2}. Two ways to take CIFAR images:

- input_size None: the CIFAR stem. Every stride-2 convolution or pooling that runs at 32x32 or
  16x16 becomes stride 1 (a pooling layer is removed), so the network downsamples 4x less, as the
  CIFAR ResNets do: torchvision's resnet18 loses conv1's stride and its max-pool (4x4 maps before
  the classifier, not 1x1). `stem_changes` names the layers; weight shapes do not change, so
  ImageNet weights still load.
- input_size N: the architecture as the zoo builds it; each batch is resized to NxN on the device,
  inside the model (bilinear), so training, evaluation, `src.classify` and the app resize alike.

The zoos are imported when a model names one: a ResNet or module model never loads timm.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

ZOOS = ("torchvision", "timm")
SIDE = 32  # CIFAR images are 32x32


def names(zoo: str) -> list[str]:
    """The zoo's image-classification architectures."""
    if zoo == "torchvision":
        import torchvision
        return torchvision.models.list_models(module=torchvision.models)
    import timm
    return timm.list_models()


def check_name(zoo: str, name: str) -> None:
    """A ValueError naming close matches when `name` is not one of the zoo's architectures."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo {zoo!r} is not one this project builds from: use {' or '.join(ZOOS)}")
    known = names(zoo)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"see {_list_command(zoo)}"
        raise ValueError(f"{zoo} has no architecture {name!r}: {hint}")


def _list_command(zoo: str) -> str:
    if zoo == "torchvision":
        return "`python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))'`"
    return "`python -c 'import timm; print(timm.list_models())'`"


def build(architecture: dict, num_classes: int = 100) -> nn.Module:
    """The zoo's architecture with `num_classes` outputs, made for 32x32 inputs (random weights;
    the train stage loads ImageNet weights after, src/models/pretrained.py)."""
    model = construct(architecture["zoo"], architecture["name"], num_classes, architecture.get("options", {}))
    size = architecture.get("input_size")
    if size is None:
        cifar_stem(model, architecture["name"])
    else:
        model.register_forward_pre_hook(ResizeInput(size))
        _check_forward(model, architecture["name"], f"at input_size {size}")
    return model


def construct(zoo: str, name: str, num_classes: int, options: dict) -> nn.Module:
    check_name(zoo, name)
    try:
        if zoo == "torchvision":
            import torchvision
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    except (TypeError, ValueError, AssertionError) as error:  # an option it does not take, or a bad value
        raise ValueError(f"{zoo}'s {name} does not take options {options}: {error}") from None


class ResizeInput:
    """A forward pre-hook: the batch resized to size x size (bilinear), on whatever device it is on.
    Bilinear interpolation is linear, so resizing the normalised batch equals normalising the
    resized one."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return args
        return (F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False),
                *args[1:])


def cifar_stem(model: nn.Module, name: str) -> list[str]:
    """Make `model` downsample 4x less (module docstring); returns the layers it changed."""
    sides = _input_sides(model, name)
    changed = []
    for path, module in list(model.named_modules()):
        stride = _stride(module)
        if stride == 1 or sides.get(path) not in (SIDE, SIDE // 2):
            continue
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            _replace(model, path, nn.Identity())
            changed.append(f"{path} removed")
        elif _keeps_size_at_stride_1(module):
            module.stride = (1, 1)
            changed.append(f"{path} stride 1")
        else:
            raise ValueError(f"{name} has no CIFAR stem here: its layer {path} ({type(module).__name__}, kernel "
                             f"{module.kernel_size}, stride {module.stride}) does not keep the image size at "
                             "stride 1. Set input_size in its block instead (e.g. 64, 128 or 224): the images "
                             "are then resized for the architecture as the zoo builds it")
    _check_forward(model, name, "with the CIFAR stem")
    model.stem_changes = changed  # what the train stage reports
    return changed


def _input_sides(model: nn.Module, name: str) -> dict[str, int]:
    """{module path: the side of the square input it gets} for every strided layer, at 32x32."""
    sides, hooks = {}, []
    for path, module in model.named_modules():
        if _stride(module) > 1:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, path=path: sides.setdefault(path, args[0].shape[-1]) and None))
    try:
        _check_forward(model, name, "as the zoo builds it")
    finally:
        for hook in hooks:
            hook.remove()
    return sides


def _stride(module: nn.Module) -> int:
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return 1
    stride = module.stride
    return max(stride) if isinstance(stride, tuple) else int(stride or 1)


def _keeps_size_at_stride_1(conv: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or conv.dilation != (1, 1):
        return False
    if type(conv).__name__ == "Conv2dSame":  # timm's: pads for its stride at every call
        return True
    padding = conv.padding
    return padding == "same" or padding == tuple((k - 1) // 2 for k in conv.kernel_size) and \
        all(k % 2 == 1 for k in conv.kernel_size)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def _check_forward(model: nn.Module, name: str, how: str) -> None:
    """One 32x32 image through the model in eval mode: a ValueError if it cannot take it."""
    training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, SIDE, SIDE))
    except (RuntimeError, ValueError, AssertionError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{name} cannot take 32x32 images {how} ({first[:160]}): set input_size in its block "
                         "to a size it takes (e.g. 224 for a vision transformer)") from None
    finally:
        model.train(training)
