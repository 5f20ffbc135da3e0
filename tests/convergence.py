"""How fast the project learns on the genuine CIFAR-100, against a plain PyTorch loop of the same recipe.

    python tests/convergence.py                       # both budgets: ~15 min on 2 CPU cores
    python tests/convergence.py --budget 10k --seeds 0 1 2 --set model.dropout=0.2

Not collected by pytest. Needs the genuine archive: ../shared/cifar100/*.part* (joined and
md5-checked here) or --archive PATH. For each budget and seed, in one run:
  project  the real stage scripts (download, augment, train --model resnet18) in a scratch copy
           of the repository, with the budget's params (plus --set overrides); the trained
           models/resnet18.pt is then scored on the full test split by the evaluate code
  plain    `plain_run` below: a minimal PyTorch loop of the same recipe, written independently of
           src/ (torchvision's CIFAR100 reader and transforms v2, torchvision's BasicBlock, a
           LambdaLR schedule), on the same images, budget and seed
and prints top-1/top-5 of both and the difference (project - plain), per seed and as means.
Budgets: ResNet-18 at width 16, batch 128, lr 0.1, 1 warmup epoch, 2 epochs, on the first
10,000 training images ("10k") or all 50,000 ("50k"); always the full 10,000-image test split.
Goal (issue 11): project top-1 >= plain top-1 - 0.5 points at both budgets (mean over seeds).
"""
from __future__ import annotations

import argparse
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
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
SHARED_PARTS = sorted((ROOT.parent / "shared" / "cifar100").glob("cifar-100-python.tar.gz.part*"))
GENUINE_MD5 = "9c600102c9dd81479547f7fbb69f9571"  # the repack in ../shared/cifar100 (see its README)

# The recipe both sides train with. Units: images, epochs, learning rate at batch_size.
BUDGETS = {"10k": 10_000, "50k": 50_000}  # training images (the first N of the split)
EPOCHS = 2
BATCH_SIZE = 128
LR = 0.1                 # peak, after a linear warmup from 0
WARMUP_EPOCHS = 1
WIDTH = 16               # channels of ResNet-18's first stage (64: the standard model)
MOMENTUM = 0.9           # Nesterov
WEIGHT_DECAY = 5e-4      # conv and linear weights only
LABEL_SMOOTHING = 0.1
CROP_PADDING = 4         # pixels
CUTOUT_SIZE, CUTOUT_P = 16, 0.5


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


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the project's side

class ProjectCopy:
    """A scratch copy of the repository's code in which the real stage scripts run."""

    def __init__(self, folder: Path, archive: Path, archive_md5: str):
        self.folder, self.archive, self.archive_md5 = folder, archive, archive_md5
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in ("src", "stages"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        self.base = yaml.safe_load((ROOT / "params.yaml").read_text())
        self.downloaded = False

    def stage(self, *args: str) -> None:
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-m", *args], cwd=self.folder, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"convergence: `python -m {' '.join(args)}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def train(self, images: int, seed: int, overrides: dict) -> Path:
        params = json.loads(json.dumps(self.base))
        settings = {"seed": seed, "lr": LR, "epochs": EPOCHS, "batch_size": BATCH_SIZE,
                    "data.url": str(self.archive), "data.md5": self.archive_md5,
                    "data.train_limit": None if images == 50_000 else images, "data.val_size": 0,
                    "model.width": WIDTH, "train.warmup_epochs": WARMUP_EPOCHS, **overrides}
        for key, value in settings.items():
            *parents, last = key.split(".")
            node = params
            for part in parents:
                node = node[part]
            if last not in node:
                sys.exit(f"convergence: --set {key}: params.yaml has no such key")
            node[last] = value
        (self.folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if not self.downloaded:
            self.stage("stages.download")
            self.downloaded = True
        self.stage("stages.augment")
        self.stage("stages.train", "--model", "resnet18")
        return self.folder / "models" / "resnet18.pt"

    def score(self, model_file: Path) -> dict:
        """top-1/top-5 (%) of a model file on the prepared test split, through the evaluate code
        (with and without horizontal-flip test-time augmentation)."""
        sys.path.insert(0, str(self.folder))
        try:
            from src.data import splits
            from src.evaluate.metrics import topk_accuracy
            from src.evaluate.model import build_trained
            from src.params import RuntimeParams
            from src.predict import predict_logits
            from src.runtime import resolve
            from src.train.checkpoint import load_model_file
            runtime = resolve(RuntimeParams(device="cpu"))
            test = splits.load(self.folder / "data/prepared/test.npz")
            model, normalize = build_trained(load_model_file(model_file), runtime)
            scores = {}
            for tta in (False, True):
                logits = predict_logits(model, test["images"], normalize, runtime, 1000, hflip_tta=tta)
                suffix = "_tta" if tta else ""
                scores[f"top1{suffix}"] = topk_accuracy(logits, test["fine_labels"], 1)
                scores[f"top5{suffix}"] = topk_accuracy(logits, test["fine_labels"], 5)
            return scores
        finally:
            sys.path.remove(str(self.folder))


# --------------------------------------------------------------------------- the plain loop

class Cutout:
    """One size x size hole, fully inside the image, zeroed (the mean after Normalize) with probability p."""

    def __init__(self, size: int, p: float):
        self.size, self.p = size, p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        h, w = image.shape[-2:]
        y = int(torch.randint(0, h - self.size + 1, ()))
        x = int(torch.randint(0, w - self.size + 1, ()))
        image = image.clone()
        image[..., y:y + self.size, x:x + self.size] = 0
        return image


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain_resnet18(width: int, classes: int = 100) -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool) from torchvision's BasicBlock, torchvision's init."""
    layers, inplanes = [], width
    for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers += [BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes)]
        inplanes = planes
    model = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                          nn.ReLU(inplace=True), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8 * width, classes))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def plain_run(cifar_root: Path, images: int, seed: int) -> dict:
    torch.manual_seed(seed)
    train = torchvision.datasets.CIFAR100(cifar_root, train=True)
    test = torchvision.datasets.CIFAR100(cifar_root, train=False)
    x = torch.from_numpy(train.data[:images]).permute(0, 3, 1, 2)  # uint8 NCHW
    y = torch.tensor(train.targets[:images])
    mean = (x.double() / 255).mean((0, 2, 3)).tolist()
    std = (x.double() / 255).std((0, 2, 3)).tolist()
    augment = v2.Compose([v2.RandomCrop(32, padding=CROP_PADDING), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
                          Cutout(CUTOUT_SIZE, CUTOUT_P)])
    loader = torch.utils.data.DataLoader(TensorImages(x, y, augment), batch_size=BATCH_SIZE,
                                         shuffle=True, num_workers=1, persistent_workers=True)
    model = plain_resnet18(WIDTH)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM, nesterov=True)
    total, warmup = EPOCHS * len(loader), WARMUP_EPOCHS * len(loader)

    def schedule(step):  # per step: linear warmup from 0, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in range(EPOCHS):
        model.train()
        for inputs, targets in loader:
            loss = F.cross_entropy(model(inputs), targets, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

    model.eval()
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    test_x = torch.from_numpy(test.data).permute(0, 3, 1, 2)
    test_y = torch.tensor(test.targets)
    with torch.no_grad():
        logits = torch.cat([model(normalize(test_x[i:i + 1000])) for i in range(0, len(test_x), 1000)])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=[*BUDGETS, "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the 10k budget (default 0 1 2); the 50k budget uses the first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a project param for the project's side, as `dvc exp run -S` (repeatable)")
    parser.add_argument("--skip-plain", action="store_true", help="only the project's side")
    parser.add_argument("--archive", help="the genuine cifar-100-python.tar.gz (default: ../shared parts)")
    parser.add_argument("--archive-md5", default=GENUINE_MD5)
    parser.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "cifar-convergence"))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    archive = genuine_archive(args.archive, scratch)
    cifar_root = scratch / "torchvision"
    if not (cifar_root / "cifar-100-python").exists():
        with tarfile.open(archive) as tar:  # md5-checked above (or the caller's own copy)
            tar.extractall(cifar_root, filter="data")
    project = ProjectCopy(scratch / "project", archive, args.archive_md5)
    overrides = parse_overrides(args.overrides)
    seeds = args.seeds or [0, 1, 2]
    plan = [(budget, seeds if budget == "10k" else seeds[:1])
            for budget in (BUDGETS if args.budget == "all" else [args.budget])]

    print(f"ResNet-18 width {WIDTH}, {EPOCHS} epochs, batch {BATCH_SIZE}, lr {LR}, warmup {WARMUP_EPOCHS} "
          f"epoch; torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs; project overrides: {overrides or 'none'}", flush=True)
    results = {}
    for budget, budget_seeds in plan:
        rows = []
        for seed in budget_seeds:
            start = time.perf_counter()
            row = {"seed": seed, **{f"project_{k}": v for k, v in
                                    project.score(project.train(BUDGETS[budget], seed, overrides)).items()}}
            row["project_s"] = time.perf_counter() - start
            if not args.skip_plain:
                start = time.perf_counter()
                row.update({f"plain_{k}": v for k, v in plain_run(cifar_root, BUDGETS[budget], seed).items()})
                row["plain_s"] = time.perf_counter() - start
                row["top1_diff"] = row["project_top1"] - row["plain_top1"]
            rows.append(row)
            print(f"{budget} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "seed"),
                  flush=True)
        means = {key: mean_of(rows, key) for key in rows[0] if key != "seed"}
        results[budget] = {"seeds": rows, "mean": means}
        print(f"{budget} mean over seeds {budget_seeds}: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()),
              flush=True)
    print("\n| budget | seeds | project top-1 | project top-5 | plain top-1 | plain top-5 | difference (top-1) |"
          " project + flip TTA |")
    print("|---|---|---|---|---|---|---|---|")
    for budget, result in results.items():
        m = result["mean"]
        plain = (f"{m['plain_top1']:.2f} | {m['plain_top5']:.2f} | {m['top1_diff']:+.2f}"
                 if "plain_top1" in m else "- | - | -")
        print(f"| {budget} | {len(result['seeds'])} | {m['project_top1']:.2f} | {m['project_top5']:.2f} | {plain} "
              f"| {m['project_top1_tta']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
