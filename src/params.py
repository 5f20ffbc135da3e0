"""The typed schema of params.yaml: every stage validates what it reads here first.

A mistake in params.yaml (or in `dvc exp run -S key=value`) must fail in a second
with one line naming the key, the value and what is allowed, before any data is
touched. Pydantic in strict mode gives that: no silent "1.5 epochs" -> 1.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from src.errors import UserError

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # in stage names (train-<name>) and file names
MODULE_NAME = re.compile(r"[a-z_][a-z0-9_]*")  # an architecture module: src/models/<module>.py
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_TRAIN_SIZE = 50_000
CIFAR100_TEST_SIZE = 10_000


class Section(BaseModel):
    # strict: a YAML string is not a number and a float is not an int;
    # forbid: a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


PositiveFloat = Field(gt=0)


class DataParams(Section):
    url: str = CIFAR100_URL
    md5: str = CIFAR100_MD5
    train_limit: int | None = Field(default=None, ge=1, le=CIFAR100_TRAIN_SIZE)
    test_limit: int | None = Field(default=None, ge=1, le=CIFAR100_TEST_SIZE)
    val_size: int = Field(default=0, ge=0)

    @field_validator("url")
    @classmethod
    def _supported_scheme(cls, url: str) -> str:
        scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
        if scheme and scheme.group(1).lower() not in ("http", "https", "file"):
            raise ValueError("must be an http://, https:// or file:// URL or a local path")
        if not url.strip():
            raise ValueError("must not be empty")
        return url

    @field_validator("md5")
    @classmethod
    def _hex_digest(cls, md5: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
            raise ValueError("must be 32 hexadecimal digits (the archive's md5)")
        return md5.lower()

    @model_validator(mode="after")
    def _val_smaller_than_train(self) -> DataParams:
        train_size = self.train_limit or CIFAR100_TRAIN_SIZE
        if self.val_size >= train_size:
            raise ValueError(
                f"data.val_size = {self.val_size} must be smaller than the training set "
                f"({train_size} images)"
            )
        return self


class ModelAugment(Section):
    """The augmentation keys a model may override (`model.<name>.augment`); see src/augment/."""
    crop: Literal["pad", "resized"] = "pad"
    crop_padding: int = Field(default=4, ge=0, le=16)
    # What the pad-4 crop pads with: black (0, torchvision's RandomCrop default), the training split's
    # mean colour (0 after normalisation, as Cutout's hole), or the image reflected at its border.
    crop_fill: Literal["black", "mean", "reflect"] = "mean"
    resized_scale: tuple[float, float] = (0.35, 1.0)
    resized_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip_p: float = Field(default=0.5, ge=0, le=1)
    cutout_size: int = Field(default=16, ge=0, le=32)
    cutout_p: float = Field(default=0.5, ge=0, le=1)
    cutout_inside: bool = False

    @field_validator("resized_scale", "resized_ratio", mode="before")
    @classmethod
    def _list_to_tuple(cls, value):
        # YAML has no tuples; accept a two-element list.
        return tuple(value) if isinstance(value, list) else value

    @field_validator("resized_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return value

    @field_validator("resized_ratio")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError("must be [low, high] aspect ratios (width / height) with 0 < low <= high")
        return value


class AugmentParams(ModelAugment):
    """The shared augmentation: the keys every model uses unless it overrides them, and the
    augment stage's own (offline copies and the preview, which shape data/prepared and plots/)."""
    offline_copies: int = Field(default=0, ge=0, le=10)
    preview_images: int = Field(default=64, ge=1, le=256)


class ModelRecipe(Section):
    """One `model.<name>` block: its architecture, then its recipe (scales of the shared keys,
    batch mixing, AutoAugment and augmentation overrides)."""
    block: Literal["basic", "bottleneck"] | None = None  # a CIFAR ResNet of torchvision's blocks
    layers: list[Annotated[int, Field(ge=1, le=64)]] | None = Field(default=None, min_length=4, max_length=4)
    module: str | None = None  # or an architecture in code: src/models/<module>.py
    zoo: Literal["torchvision", "timm"] | None = None  # or a zoo's architecture by `name`
    name: str | None = None
    options: dict = Field(default_factory=dict)  # keyword arguments of the module's build_model / the zoo's constructor
    input_size: int | None = Field(default=None, ge=16, le=1024)  # zoo: resize to NxN; null: the CIFAR stem
    pretrained: Literal["imagenet"] | None = None  # zoo: start from its ImageNet weights (weights/<model>.pt)
    freeze_epochs: int = Field(default=0, ge=0)  # pretrained: epochs that train the new head only
    epochs_scale: float = Field(default=1.0, gt=0)
    lr_scale: float = Field(default=1.0, gt=0)
    mixup_alpha: float = Field(default=0.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    cutmix_prob: float = Field(default=0.5, ge=0, le=1)
    autoaugment: float = Field(default=0.0, ge=0, le=1)
    augment: dict = Field(default_factory=dict)  # ModelAugment keys over the shared `augment.*`

    @field_validator("autoaugment", mode="before")
    @classmethod
    def _probability_not_flag(cls, value):
        if isinstance(value, bool):  # it was a flag before: say what it is now
            raise ValueError("is the probability of applying the AutoAugment policy to an image, "
                             "0 to 1 (0: off; the ResNet-50 reference used 0.7), not true/false")
        return value

    def architecture(self) -> dict:
        """What src/models/build.py builds, as the model file stores it."""
        if self.module is not None:
            return {"module": self.module, "options": dict(self.options)}
        if self.zoo is not None:
            return {"zoo": self.zoo, "name": self.name, "options": dict(self.options), "input_size": self.input_size}
        return {"block": self.block, "layers": list(self.layers)}


SHARED_MODEL_KEYS = ("width", "zero_init_residual", "dropout")


class ModelParams(Section):
    """The keys every model shares, and one `model.<name>` block per model: the set of blocks is
    the list of models (in params.yaml's order) that every stage and command takes."""
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    __pydantic_extra__: dict[str, ModelRecipe] = Field(init=False)
    width: int = Field(default=64, ge=1, le=512)
    zero_init_residual: bool = False
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @property
    def recipes(self) -> dict[str, ModelRecipe]:
        """{name: its block}, in params.yaml's order."""
        return dict(self.__pydantic_extra__ or {})

    @property
    def names(self) -> list[str]:
        return list(self.recipes)

    @model_validator(mode="before")
    @classmethod
    def _blocks_are_mappings(cls, values):
        for name, value in (values.items() if isinstance(values, dict) else ()):
            if name not in SHARED_MODEL_KEYS and not isinstance(value, dict):
                raise ValueError(f"unknown key 'model.{name}' (= {value!r}): `model` holds "
                                 f"{', '.join(SHARED_MODEL_KEYS)} and one block (a mapping) per model, e.g. "
                                 "`resnet18: {block: basic, layers: [2, 2, 2, 2], ...}`: check the spelling")
            if name not in SHARED_MODEL_KEYS and not MODEL_NAME.fullmatch(name):
                raise ValueError(f"model.{name}: a model's name is used in its stage and file names, so "
                                 "it must be lower-case letters, digits, - and _ (e.g. resnet101)")
        return values

    @model_validator(mode="after")
    def _architectures(self) -> ModelParams:
        for name in self.names:
            recipe, where = self.recipes[name], f"model.{name}"
            kinds = [kind for kind, given in (("block/layers", recipe.block is not None or recipe.layers is not None),
                                              ("module", recipe.module is not None),
                                              ("zoo", recipe.zoo is not None)) if given]
            if len(kinds) > 1:
                raise ValueError(f"{where}.{kinds[1]} = {getattr(recipe, kinds[1])!r} beside {where}.{kinds[0]}: "
                                 "a model has one architecture, keep one")
            if recipe.module is not None and not MODULE_NAME.fullmatch(recipe.module):
                raise ValueError(f"{where}.module = {recipe.module!r} must be the name of a file "
                                 "src/models/<module>.py (lower-case letters, digits, _)")
            if recipe.zoo is None:
                zoo_keys = [key for key in ("name", "input_size", "pretrained") if getattr(recipe, key) is not None]
                if recipe.freeze_epochs:
                    zoo_keys.append("freeze_epochs")
                if zoo_keys:
                    raise ValueError(f"{where}.{zoo_keys[0]} is for an architecture of a zoo: add "
                                     f"`zoo: torchvision` (or timm) to the block, or remove {zoo_keys[0]}")
            elif not recipe.name:
                raise ValueError(f"{where}.zoo = {recipe.zoo} needs `name`, the architecture's name in {recipe.zoo} "
                                 "(e.g. mobilenet_v2), as docs/models.md shows")
            elif recipe.freeze_epochs and recipe.pretrained is None:
                raise ValueError(f"{where}.freeze_epochs = {recipe.freeze_epochs} freezes ImageNet weights: "
                                 "add `pretrained: imagenet`, or set freeze_epochs to 0")
            if not kinds:
                known = [n for n in self.names if n != name]
                raise ValueError(
                    f"{where} has no architecture: give it `block: basic | bottleneck` and `layers: "
                    f"[n1, n2, n3, n4]`, `zoo: torchvision | timm` and `name`, or `module: <file in "
                    f"src/models/>`, as docs/models.md shows. If you meant an existing model, check its name "
                    f"({', '.join(known) or 'none'})")
            if kinds == ["block/layers"]:
                if recipe.block is None or recipe.layers is None:
                    raise ValueError(f"{where} needs both `block: basic | bottleneck` and `layers: [n1, n2, n3, n4]`")
                if recipe.options:
                    raise ValueError(f"{where}.options is for a module or zoo architecture; a ResNet block "
                                     "takes none")
        return self

    @model_validator(mode="after")
    def _augment_overrides(self) -> ModelParams:
        for name in self.names:
            for key, value in self.recipes[name].augment.items():
                where = f"model.{name}.augment.{key}"
                if key not in ModelAugment.model_fields:
                    raise ValueError(f"{where} is not a key a model can override: use one of "
                                     f"{', '.join(ModelAugment.model_fields)}")
                try:
                    ModelAugment.model_validate({key: value})
                except ValidationError as error:
                    message = error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{where} = {value!r} is not allowed: {message}") from None
        return self


class TrainParams(Section):
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    decay_norm_and_bias: bool = False
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(default=5, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    grad_clip_norm: float | None = Field(default=None, gt=0)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    ema_warmup: bool = True


class Reference(Section):
    """A published result the report sets a model's against (read by the report only)."""
    top1: float | None = Field(default=None, ge=0, le=100)  # test top-1, percent
    top5: float | None = Field(default=None, ge=0, le=100)  # test top-5, percent
    epochs: int | None = Field(default=None, ge=1)          # the epochs it was trained for
    source: str = ""                                           # where the number comes from


class EvaluateParams(Section):
    hflip_tta: bool = False


AutoFlag = Literal["auto"] | bool


class RuntimeParams(Section):
    device: str = "auto"
    nproc_per_node: Literal["auto"] | int = "auto"
    sync_batchnorm: AutoFlag = "auto"
    compile: AutoFlag = "auto"
    gpu_augment: AutoFlag = "auto"
    workers: Literal["auto"] | int = "auto"
    deterministic: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: AutoFlag = "auto"
    eval_batch_size: int = Field(default=1024, ge=1)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cuda|cuda:\d+|mps|cpu", value):
            raise ValueError("must be auto, cuda, cuda:N (one GPU by index), mps or cpu")
        return value

    # One message for a value that fits neither side of a union (pydantic reports each side).
    @field_validator("compile", "gpu_augment", "channels_last", "sync_batchnorm", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if value != "auto" and not isinstance(value, bool):
            raise ValueError("must be 'auto', true or false")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _non_negative(cls, value):
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError("must be 'auto' or a whole number >= 0")
        return value

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError("must be 'auto' (one per visible GPU, 1 without CUDA) or a whole number >= 1")
        return value

    @model_validator(mode="after")
    def _one_gpu_one_process(self) -> RuntimeParams:
        if self.device.startswith("cuda:") and self.nproc_per_node not in ("auto", 1):
            raise ValueError(
                f"runtime.device = {self.device} picks one GPU, so runtime.nproc_per_node must be 1 or "
                f"auto, not {self.nproc_per_node}. Use runtime.device=cuda (or auto) to train on "
                "several GPUs, and CUDA_VISIBLE_DEVICES to choose which")
        return self


class Params(Section):
    seed: int = Field(default=0, ge=0, lt=2**32)
    lr: float = Field(default=0.4, gt=0)
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=512, ge=1)
    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    runtime: RuntimeParams = RuntimeParams()
    reference: dict[str, Reference] = Field(default_factory=dict)

    def recipe(self, model_name: str) -> ModelRecipe:
        recipes = self.model.recipes
        if model_name not in recipes:
            raise UserError(f"params.yaml has no model.{model_name} block: the models are "
                            f"{', '.join(recipes) or 'none'}. To add one, see docs/models.md")
        return recipes[model_name]

    def model_epochs(self, model_name: str) -> int:
        return max(1, round(self.epochs * self.recipe(model_name).epochs_scale))

    def model_lr(self, model_name: str) -> float:
        return self.lr * self.recipe(model_name).lr_scale

    def model_warmup_epochs(self, model_name: str) -> float:
        """Warmup is part of the run's length: it scales with the model's epochs (the ResNet-50
        reference warmed up for 10 of its 200 epochs; 5 of 100 for the others)."""
        return self.train.warmup_epochs * self.recipe(model_name).epochs_scale

    def model_augment(self, model_name: str) -> ModelAugment:
        """The shared augmentation with the model's overrides."""
        shared = {key: getattr(self.augment, key) for key in ModelAugment.model_fields}
        return ModelAugment.model_validate({**shared, **self.recipe(model_name).augment})


def _describe(error: dict) -> str:
    # An item of a list (model.<name>.layers): the key is the list's; its position follows it.
    at = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
    key = ".".join(str(part) for part in error["loc"] if not isinstance(part, int)) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"params.yaml: unknown key '{key}': remove it or check its spelling (see src/params.py)"
    if error["type"] == "missing":
        return f"params.yaml: key '{key}' is missing"
    value = error.get("input")
    if isinstance(value, dict):  # a check across keys: its message names them
        return f"params.yaml: {message}. Fix params.yaml or pass `dvc exp run -S key=value`"
    return (
        f"params.yaml: {key}{at} = {value!r} is not allowed: {message}. "
        f"Fix params.yaml or pass `dvc exp run -S {key}=...`"
    )


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        # One line for the first problem keeps the message readable; the rest follow.
        lines = [_describe(e) for e in error.errors(include_url=False)]
        raise UserError("\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stage from the repository root") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of keys to values, found {type(raw).__name__}")
    return parse_params(raw)
