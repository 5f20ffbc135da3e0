"""How fast the project learns on the genuine CIFAR-100, against a plain PyTorch loop of the same recipe.

    python scripts/convergence.py                          # every budget (below)
    python scripts/convergence.py --budget 10k --seeds 0 1 2 --set model.dropout=0.2
    python scripts/convergence.py --budget r50-10k --skip-plain --set model.resnet50.autoaugment=0

Not collected by pytest. Needs the genuine archive: ../shared/cifar100/*.part* (joined and
md5-checked here) or --archive PATH. For each budget and seed, in one run:
  project  the real stage scripts (download, augment, train --model <the budget's model>) in a
           scratch copy of the repository, with the budget's params (plus --set overrides) over
           params.yaml; the trained models/<model>.pt is then scored on the full test split by
           the evaluate code (with and without flip test-time augmentation)
  plain    `plain_run` below: a minimal PyTorch loop of the budget's plain recipe, written apart
           from src/ (torchvision's CIFAR100 reader and transforms v2, torchvision's BasicBlock or
           Bottleneck, a LambdaLR warmup + cosine schedule), on the same images, budget and seed
and prints top-1/top-5 of both and the difference (project - plain), per seed and as means.

Budgets (batch 128, 1 epoch of per-step linear warmup from 0 then cosine to 0, Nesterov SGD,
weight decay 5e-4 on conv/linear weights, label smoothing 0.1; always the full 10,000-image
test split):
  10k      ResNet-18 width 16, 2 epochs, lr 0.1, the first 10,000 training images, seeds 0 1 2;
           both sides: pad-4 random crop (padded as params.yaml's augment.crop_fill), flip, Cutout 16 (p 0.5)
  50k      the same on all 50,000 training images, the first seed only
  mobilenet-10k, cnn-10k  the 10k budget (seeds 0 1 2) for torchvision's MobileNetV2 (width_mult
           0.5, CIFAR stem) and the custom CNN (width 32), at about ResNet-18 width 16's compute; the
           project's side only
  r50-10k  ResNet-50 (Bottleneck, [3, 4, 6, 3]) width 16, 4 epochs, the first 10,000 training
           images, seeds 0 1 2. Project: `lr` 0.1 (the shared rate at batch 128) times
           params.yaml's model.resnet50.lr_scale, model.resnet50.epochs_scale 1, and otherwise
           params.yaml's ResNet-50 recipe. Plain: the ResNet-50 reference's recipe, lr 0.05 (0.8 at batch 2048,
           scaled to 128), RandomResizedCrop(scale 0.8-1, ratio 0.9-1.1), flip, AutoAugment
           (CIFAR-10 policy) with p 0.7, Cutout 16 (p 0.5), MixUp 0.2 per batch
The plain loop's Cutout is DeVries & Taylor's original at every budget (a centre anywhere in the
image, the hole clipped at the border).
Goal: project mean top-1 >= plain mean top-1 - 0.5 points at every budget (mean over seeds).
Time on 2 AVX-512 CPU cores (both sides): 10k ~2 min a seed, 50k ~7 min, r50-10k ~12 min a seed:
about 50 minutes in all (about 2 hours on 2 AVX2 cores); the project only, mobilenet-10k ~4 min a
seed, cnn-10k under 2 min. At 2 epochs a seed moves a side by a point or two: more seeds
(--seeds 0 1 2 3 4 5) give a steadier mean at 10k.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
SHARED_PARTS = sorted((ROOT.parent / "shared" / "cifar100").glob("cifar-100-python.tar.gz.part*"))
GENUINE_MD5 = "9c600102c9dd81479547f7fbb69f9571"  # the repack in ../shared/cifar100 (see its README)

# The recipes. Units: images, epochs, learning rate at BATCH_SIZE images per step.
CLASSES = 100
TRAIN_IMAGES = 50_000    # the whole training split
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())  # the project's params.yaml, as checked out
BATCH_SIZE = 128         # images per optimizer step, every budget, both sides
WARMUP_EPOCHS = 1        # epochs of per-step linear warmup from 0, then cosine to 0
WIDTH = 16               # channels of the first stage (64: the standard ResNet); later x2, x4, x8
                         # (and x4 again at a Bottleneck's output)
MOMENTUM = 0.9           # SGD, Nesterov
WEIGHT_DECAY = 5e-4      # L2 on conv and linear weights only
LABEL_SMOOTHING = 0.1    # cross-entropy
CUTOUT_SIZE = 16         # pixels, side of the Cutout hole (DeVries & Taylor's `length`)
CUTOUT_P = 0.5           # probability of a hole, per image
EVAL_BATCH = 1000        # test images per forward pass
GOAL_MARGIN = 0.5        # top-1 points: project mean >= plain mean - GOAL_MARGIN

# ResNet-18 budgets "10k" and "50k": the project's recipe, mirrored by the plain loop
R18_EPOCHS = 2
R18_LR = 0.1             # peak, both sides
R18_CROP_PADDING = 4     # pixels of padding before the random 32x32 crop
# What it pads with, both sides: params.yaml's augment.crop_fill (black, mean or reflect).
R18_CROP_FILL = DEFAULTS["augment"]["crop_fill"]

# The other architectures' budgets "mobilenet-10k" and "cnn-10k": the 10k budget's params
MOBILENET_WIDTH = 0.5    # width_mult: 28 M multiply-adds per image with the CIFAR stem
CNN_WIDTH = 32           # the custom CNN's first block (then x2, x4): 39 M multiply-adds per image

# ResNet-50 budget "r50-10k": the plain side is the ResNet-50 reference's recipe
R50_EPOCHS = 4
R50_PROJECT_LR = 0.1     # the shared `lr` at batch 128; params.yaml's model.resnet50.lr_scale multiplies it
R50_PLAIN_LR = 0.8 * BATCH_SIZE / 2048  # the reference: 0.8 at batch 2048, linearly scaled: 0.05 at 128
R50_CROP_SCALE = (0.8, 1.0)  # area fraction range of RandomResizedCrop (to 32x32)
R50_CROP_RATIO = (0.9, 1.1)  # aspect ratio range of RandomResizedCrop
R50_AUTOAUGMENT_P = 0.7  # probability of AutoAugment's CIFAR-10 policy, per image
R50_MIXUP_ALPHA = 0.2    # Beta(alpha, alpha) MixUp of whole images, per batch (soft targets)


@dataclass(frozen=True)
class PlainRecipe:
    """What `plain_run` trains: the model, the images, the schedule and the augmentation."""
    model: str                 # a key of PLAIN_MODELS
    images: int                # the first N training images
    epochs: int
    lr: float                  # peak, at BATCH_SIZE
    augment: str               # "crop": pad + random crop, flip, Cutout | "r50-reference": see plain_augment
    mixup_alpha: float = 0.0   # per-batch MixUp; 0: off (hard labels)
    pad_fill: str = "black"    # the pad-4 crop's padding: black (0), mean (the mean colour) or reflect
    warmup_epochs: float = WARMUP_EPOCHS
    width: int = WIDTH

    def describe(self) -> str:
        augment = (f"pad-{R18_CROP_PADDING} crop ({self.pad_fill}), flip, Cutout {CUTOUT_SIZE} p {CUTOUT_P}"
                   if self.augment == "crop"
                   else f"RandomResizedCrop(scale {R50_CROP_SCALE}, ratio {R50_CROP_RATIO}), flip, "
                        f"AutoAugment CIFAR-10 p {R50_AUTOAUGMENT_P}, Cutout {CUTOUT_SIZE} p {CUTOUT_P}")
        mix = f", MixUp {self.mixup_alpha}" if self.mixup_alpha else ""
        return (f"lr {self.lr:g}, {self.epochs} epochs, warmup {self.warmup_epochs:g} epoch; "
                f"{augment}{mix}; label smoothing {LABEL_SMOOTHING}")


@dataclass(frozen=True)
class Budget:
    """One comparison: a model, the project's params for it, and the plain loop's recipe."""
    name: str
    model: str                 # the project's --model (models/<model>.pt)
    title: str                 # the architecture, in words
    images: int                # the first N training images, both sides
    all_seeds: bool            # every --seeds (else the first only)
    project: dict              # params.yaml key paths -> values, besides seed and data.url/md5
    plain: PlainRecipe | None  # None: the project's side only

    def seeds(self, seeds: list[int]) -> list[int]:
        return seeds if self.all_seeds else seeds[:1]


def r18_project(images: int) -> dict:
    return {"lr": R18_LR, "epochs": R18_EPOCHS, "batch_size": BATCH_SIZE,
            "data.train_limit": None if images == TRAIN_IMAGES else images, "data.val_size": 0,
            "model.width": WIDTH, "train.warmup_epochs": WARMUP_EPOCHS}


BUDGETS = {budget.name: budget for budget in (
    Budget("10k", "resnet18", "ResNet-18", 10_000, True, r18_project(10_000),
           PlainRecipe("resnet18", 10_000, R18_EPOCHS, R18_LR, "crop", pad_fill=R18_CROP_FILL)),
    Budget("50k", "resnet18", "ResNet-18", TRAIN_IMAGES, False, r18_project(TRAIN_IMAGES),
           PlainRecipe("resnet18", TRAIN_IMAGES, R18_EPOCHS, R18_LR, "crop", pad_fill=R18_CROP_FILL)),
    # Other architectures at the 10k budget, at about ResNet-18 width 16's 35 M multiply-adds per
    # image; the project's side only (no plain loop of theirs).
    Budget("mobilenet-10k", "mobilenet_v2", "MobileNetV2 x0.5 (torchvision, CIFAR stem)", 10_000, True,
           {**r18_project(10_000), "model.mobilenet_v2": {"zoo": "torchvision", "name": "mobilenet_v2",
                                                          "options": {"width_mult": MOBILENET_WIDTH}}}, None),
    Budget("cnn-10k", "custom_cnn", "custom CNN (src/models/custom_cnn.py, width 32)", 10_000, True,
           {**r18_project(10_000), "model.width": CNN_WIDTH,
            "model.custom_cnn": {"module": "custom_cnn", "options": {"blocks": 3}}}, None),
    Budget("r50-10k", "resnet50", "ResNet-50", 10_000, True,
           {"lr": R50_PROJECT_LR, "epochs": R50_EPOCHS, "batch_size": BATCH_SIZE,
            "data.train_limit": 10_000, "data.val_size": 0, "model.width": WIDTH,
            "model.resnet50.epochs_scale": 1, "train.warmup_epochs": WARMUP_EPOCHS},
           PlainRecipe("resnet50", 10_000, R50_EPOCHS, R50_PLAIN_LR, "r50-reference", mixup_alpha=R50_MIXUP_ALPHA)),
)}


# --------------------------------------------------------------------------- the genuine archive

def genuine_archive(path: str | None, scratch: Path) -> Path:
    """The archive to use: --archive, or the shared parts joined once into the scratch folder."""
    if path:
        return Path(path)
    if not SHARED_PARTS:
        sys.exit("convergence: no genuine archive: ../shared/cifar100/*.part* not found; pass --archive PATH")
    joined = scratch / "cifar-100-python.tar.gz"
    if not joined.exists() or md5(joined) != GENUINE_MD5:
        with joined.open("wb") as out:
            for part in SHARED_PARTS:
                out.write(part.read_bytes())
    if md5(joined) != GENUINE_MD5:
        sys.exit(f"convergence: {joined} does not have the md5 {GENUINE_MD5} of the shared repack")
    return joined


def torchvision_root(archive: Path, scratch: Path) -> Path:
    """The archive extracted once under scratch/torchvision, as torchvision's CIFAR100 reads it."""
    root = scratch / "torchvision"
    if not (root / "cifar-100-python").exists():
        partial = scratch / "torchvision.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive) as tar:  # md5-checked by genuine_archive (or the caller's own copy)
            tar.extractall(partial, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


# --------------------------------------------------------------------------- the project's side

class ProjectCopy:
    """A scratch copy of the repository's code in which the real stage scripts run."""

    def __init__(self, folder: Path, archive: Path, archive_md5: str):
        self.folder, self.archive, self.archive_md5 = folder, archive, archive_md5
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in ("src", "stages"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        self.downloaded = False

    def stage(self, *args: str) -> None:
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-m", *args], cwd=self.folder, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"convergence: `python -m {' '.join(args)}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def params(self, seed: int, settings: dict, overrides: dict) -> dict:
        """params.yaml with the seed, the genuine archive, a budget's settings and the --set overrides."""
        params = json.loads(json.dumps(DEFAULTS))
        for key, value in {"seed": seed, "data.url": str(self.archive), "data.md5": self.archive_md5,
                           **settings, **overrides}.items():
            set_param(params, key, value)
        return params

    def train(self, model: str, seed: int, settings: dict, overrides: dict) -> Path:
        """Train `model` through the stage scripts; returns models/<model>.pt."""
        params = self.params(seed, settings, overrides)
        (self.folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if not self.downloaded:
            self.stage("stages.download")
            self.downloaded = True
        self.stage("stages.augment")
        self.stage("stages.train", "--model", model)
        return self.folder / "models" / f"{model}.pt"

    def score(self, model_file: Path) -> dict:
        """top-1/top-5 (%) of a model file on the prepared test split, through the evaluate code
        (with and without horizontal-flip test-time augmentation)."""
        sys.path.insert(0, str(self.folder))
        try:
            from src.data import splits
            from src.params import RuntimeParams
            from src.predict import predict_logits
            from src.runtime import resolve
            try:  # the project's own reader and accuracy
                from src.accuracy import percent, topk_correct
                from src.model_file import read as load_model_file
                from src.predict import build_trained
                topk_accuracy = lambda logits, labels, k: percent(topk_correct(logits, labels, k))  # noqa: E731
            except ImportError:  # an older checkout, before src/accuracy.py
                from src.evaluate.metrics import topk_accuracy
                from src.evaluate.model import build_trained
                from src.train.checkpoint import load_model_file
            runtime = resolve(RuntimeParams(device="cpu"))
            test = splits.load(self.folder / "data/prepared/test.npz")
            model, normalize = build_trained(load_model_file(model_file), runtime)
            scores = {}
            for tta in (False, True):
                logits = predict_logits(model, test["images"], normalize, runtime, EVAL_BATCH, hflip_tta=tta)
                suffix = "_tta" if tta else ""
                scores[f"top1{suffix}"] = topk_accuracy(logits, test["fine_labels"], 1)
                scores[f"top5{suffix}"] = topk_accuracy(logits, test["fine_labels"], 5)
            return scores
        finally:
            sys.path.remove(str(self.folder))


def set_param(params: dict, key: str, value) -> None:
    """Set a dotted key path. Every parent must exist and be a mapping; the last part may be new
    (e.g. model.resnet50.augment.crop under an existing model.resnet50.augment mapping)."""
    *parents, last = key.split(".")
    node = params
    for depth, part in enumerate(parents, 1):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            sys.exit(f"convergence: --set {key}: params.yaml has no such key "
                     f"({'.'.join(parents[:depth])} is missing or not a mapping)")
    node[last] = value


def get_param(params: dict, key: str, default=None):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# --------------------------------------------------------------------------- the plain loop

class Cutout:
    """DeVries & Taylor's Cutout (github.com/uoguelph-mlrg/Cutout, util/cutout.py), one hole, with
    probability p: a centre y, x drawn uniformly over the whole image, the length x length square
    around it clipped at the border (y1 = clip(y - length // 2, 0, h), y2 = clip(y + length // 2, 0, h),
    the same for x), so a hole near an edge is smaller. Set to 0: the mean, after Normalize.
    torch's generator instead of numpy's (seeded by torch.manual_seed and the DataLoader's workers)."""

    def __init__(self, length: int, p: float):
        self.length, self.p = length, p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        h, w = image.shape[-2:]
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)  # np.clip(., 0, h)
        x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
        image = image.clone()
        image[..., y1:y2, x1:x2] = 0
        return image


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain_resnet(block: type[BasicBlock | Bottleneck], layers: list[int], width: int,
                 classes: int = CLASSES) -> nn.Module:
    """CIFAR ResNet (3x3 stride-1 stem, no max-pool) from torchvision's block, torchvision's init:
    Kaiming-normal convs (fan_out), BatchNorm weight 1 and bias 0, no zero-init residual.
    Stage channels width, 2, 4, 8 x width (x block.expansion at each block's output)."""
    stages, inplanes = [], width
    for index, blocks in enumerate(layers):
        planes, stride = width * 2 ** index, 1 if index == 0 else 2
        out = planes * block.expansion
        down = None
        if stride != 1 or inplanes != out:
            down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        stages += [block(inplanes, planes, stride, down), *(block(out, planes) for _ in range(blocks - 1))]
        inplanes = out
    model = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                          nn.ReLU(inplace=True), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(inplanes, classes))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return model


PLAIN_MODELS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


def plain_resnet18(width: int, classes: int = CLASSES) -> nn.Module:
    return plain_resnet(*PLAIN_MODELS["resnet18"], width, classes)


def plain_resnet50(width: int, classes: int = CLASSES) -> nn.Module:
    return plain_resnet(*PLAIN_MODELS["resnet50"], width, classes)


def plain_augment(recipe: PlainRecipe, mean: list[float], std: list[float]) -> v2.Compose:
    """The per-image training transform, from a uint8 CHW tensor to a normalised float one."""
    if recipe.augment == "crop":
        fill = {"black": {}, "reflect": {"padding_mode": "reflect"},
                "mean": {"fill": tuple(round(m * 255) for m in mean)}}[recipe.pad_fill]
        geometry = [v2.RandomCrop(32, padding=R18_CROP_PADDING, **fill), v2.RandomHorizontalFlip()]
    elif recipe.augment == "r50-reference":
        geometry = [v2.RandomResizedCrop(32, scale=R50_CROP_SCALE, ratio=R50_CROP_RATIO),
                    v2.RandomHorizontalFlip(),
                    v2.RandomApply([v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)], p=R50_AUTOAUGMENT_P)]
    else:
        raise ValueError(f"unknown plain augmentation {recipe.augment!r}")
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
                       Cutout(CUTOUT_SIZE, CUTOUT_P)])


def warmup_cosine(total: int, warmup: int):
    """LambdaLR factor per step: linear warmup from 0, then cosine to 0."""
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return schedule


def plain_run(cifar_root: Path, recipe: PlainRecipe, seed: int, test_limit: int | None = None) -> dict:
    """Train the recipe's model with a plain loop and score it on the test split (the first
    test_limit images: a smoke-check shortcut; None: all 10,000). Returns top-1/top-5 in %."""
    torch.manual_seed(seed)
    train = torchvision.datasets.CIFAR100(cifar_root, train=True)
    test = torchvision.datasets.CIFAR100(cifar_root, train=False)
    x = torch.from_numpy(train.data[:recipe.images]).permute(0, 3, 1, 2)  # uint8 NCHW
    y = torch.tensor(train.targets[:recipe.images])
    mean = (x.double() / 255).mean((0, 2, 3)).tolist()
    std = (x.double() / 255).std((0, 2, 3)).tolist()
    loader = torch.utils.data.DataLoader(TensorImages(x, y, plain_augment(recipe, mean, std)),
                                         batch_size=BATCH_SIZE, shuffle=True, num_workers=1,
                                         persistent_workers=True)
    mix = v2.MixUp(alpha=recipe.mixup_alpha, num_classes=CLASSES) if recipe.mixup_alpha else None
    model = plain_resnet(*PLAIN_MODELS[recipe.model], recipe.width)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=recipe.lr, momentum=MOMENTUM, nesterov=True)
    total = recipe.epochs * len(loader)
    warmup = round(recipe.warmup_epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    for _ in range(recipe.epochs):
        model.train()
        for inputs, targets in loader:
            if mix is not None:
                inputs, targets = mix(inputs, targets)  # targets: soft, (batch, CLASSES)
            loss = F.cross_entropy(model(inputs), targets, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

    model.eval()
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    test_x = torch.from_numpy(test.data[:test_limit]).permute(0, 3, 1, 2)
    test_y = torch.tensor(test.targets[:test_limit])
    with torch.no_grad():
        logits = torch.cat([model(normalize(test_x[i:i + EVAL_BATCH]))
                            for i in range(0, len(test_x), EVAL_BATCH)])
    top5 = logits.topk(5, 1).indices
    return {"top1": (top5[:, 0] == test_y).double().mean().item() * 100,
            "top5": (top5 == test_y[:, None]).any(1).double().mean().item() * 100}


# --------------------------------------------------------------------------- the run

def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"convergence: --set {pair!r}: expected key=value, as for `dvc exp run -S`")
        overrides[key] = yaml.safe_load(value)
    return overrides


def mean_of(rows: list[dict], key: str) -> float:
    return statistics.fmean(row[key] for row in rows)


def describe(budget: Budget, seeds: list[int], project: ProjectCopy, overrides: dict) -> str:
    """The header of a budget: its model and both sides' recipes (the project's as it will run)."""
    params = project.params(seeds[0], budget.project, overrides)
    recipe = f"model.{budget.model}"
    lr, lr_scale = params["lr"], get_param(params, f"{recipe}.lr_scale", 1.0)
    epochs, epochs_scale = params["epochs"], get_param(params, f"{recipe}.epochs_scale", 1.0)
    limit = get_param(params, "data.train_limit")
    return (f"== {budget.name}: {budget.title} width {get_param(params, 'model.width')}, "
            f"first {budget.images:,} training images, batch {params['batch_size']}, seeds {seeds}\n"
            f"   project: stages.train --model {budget.model}, lr {lr:g} x {recipe}.lr_scale {lr_scale:g} "
            f"= {lr * lr_scale:g}, {epochs} x epochs_scale {epochs_scale:g} epochs, warmup "
            f"{get_param(params, 'train.warmup_epochs')} epoch, train_limit {limit}; the rest of "
            f"params.yaml's {recipe} recipe ({json.dumps(get_param(params, recipe))})\n"
            f"   plain:   {budget.plain.describe() if budget.plain else 'none (the project only)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", nargs="+", choices=[*BUDGETS, "all"], default=["all"],
                        help=f"one or more of {', '.join(BUDGETS)}, or all (default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the 10k and r50-10k budgets (default 0 1 2); the 50k budget uses the first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a project param for the project's side, as `dvc exp run -S` (repeatable); "
                             "a new last key is allowed under an existing mapping")
    parser.add_argument("--skip-plain", action="store_true", help="only the project's side")
    parser.add_argument("--archive", help="the genuine cifar-100-python.tar.gz (default: ../shared parts)")
    parser.add_argument("--archive-md5", default=None,
                        help="md5 of --archive (default: params.yaml's data.md5, the official archive's)")
    parser.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "cifar-convergence"))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    names = list(BUDGETS) if "all" in args.budget else list(dict.fromkeys(args.budget))
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    archive = genuine_archive(args.archive, scratch)
    if args.archive_md5 is None:
        args.archive_md5 = (yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["md5"] if args.archive
                            else GENUINE_MD5)
    cifar_root = torchvision_root(archive, scratch)
    project = ProjectCopy(scratch / "project", archive, args.archive_md5)
    overrides = parse_overrides(args.overrides)
    seeds = args.seeds or [0, 1, 2]

    print(f"budgets {names}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs; "
          f"project overrides: {overrides or 'none'}", flush=True)
    results = {}
    for name in names:
        budget = BUDGETS[name]
        budget_seeds = budget.seeds(seeds)
        header = describe(budget, budget_seeds, project, overrides)
        print(header, flush=True)
        rows = []
        for seed in budget_seeds:
            start = time.perf_counter()
            model_file = project.train(budget.model, seed, budget.project, overrides)
            row = {"seed": seed, **{f"project_{k}": v for k, v in project.score(model_file).items()}}
            row["project_s"] = time.perf_counter() - start
            if not args.skip_plain and budget.plain is not None:
                start = time.perf_counter()
                row.update({f"plain_{k}": v for k, v in plain_run(cifar_root, budget.plain, seed).items()})
                row["plain_s"] = time.perf_counter() - start
                row["top1_diff"] = row["project_top1"] - row["plain_top1"]
            rows.append(row)
            print(f"{name} {budget.model} seed {seed}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "seed"), flush=True)
        means = {key: mean_of(rows, key) for key in rows[0] if key != "seed"}
        if "top1_diff" in means:
            means["goal_met"] = means["top1_diff"] >= -GOAL_MARGIN
        results[name] = {"model": budget.model, "recipe": header, "project_settings": budget.project,
                         "plain_recipe": budget.plain and dataclasses.asdict(budget.plain),
                         "seeds": rows, "mean": means}
        print(f"{name} {budget.model} mean over seeds {budget_seeds}: "
              + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in means.items()),
              flush=True)
    print(f"\n| budget | model | seeds | project top-1 | project top-5 | plain top-1 | plain top-5 "
          f"| difference (top-1) | goal (>= -{GOAL_MARGIN}) | project + flip TTA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        m = result["mean"]
        plain = (f"{m['plain_top1']:.2f} | {m['plain_top5']:.2f} | {m['top1_diff']:+.2f} "
                 f"| {'met' if m['goal_met'] else 'missed'}"
                 if "plain_top1" in m else "- | - | - | -")
        print(f"| {name} | {BUDGETS[name].title} | {len(result['seeds'])} | {m['project_top1']:.2f} "
              f"| {m['project_top5']:.2f} | {plain} | {m['project_top1_tta']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
