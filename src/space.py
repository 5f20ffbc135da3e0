"""Publish the trained models as a Gradio Space: one self-contained folder.

    python -m src.space OUT

OUT gets app.py and the src/ modules it imports (found by following its imports, nothing else of
the repository), the trained models/<name>.pt with their metrics/, the eight test-split example
images when data/prepared is here, a requirements.txt pinned for CPU inference and a README.md
with the Space's front matter and a model card (each model's test scores with their intervals,
the params it was trained with, the prepared data's two hashes (DVC's, from dvc.lock, and the
project's, from the model files) and the git commit of the run, the CIFAR-100 licence note, the
limits of 32x32 models). Push OUT to a Space repository as docs/serving.md shows.

Refuses, in one line, when no model is trained, or when dvc.lock does not tie metrics/ to these
model files (the evaluate stage scored other files, or its metrics changed since).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from src import classifier, model_file
from src.errors import UserError, run
from src.imports import PACKAGES, imported_files, imported_names
from src.provenance import dvc_dir_md5, file_md5

ROOT = Path(__file__).resolve().parents[1]
APP = "app.py"
# Import names whose distribution is named otherwise in requirements.txt.
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}
# A Space runs on CPU unless paid for: PyTorch's CPU wheels are a tenth of the CUDA ones' size.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_WHEELS = ("torch", "torchvision")
EXAMPLES = 8  # as app.py: the first test image of each of eight classes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m src.space", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, metavar="OUT", help="the folder to write (must not exist, or be empty)")
    args = parser.parse_args()
    models = checked_models(ROOT)
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} is not empty: choose a new folder (the Space is written whole)")
    write_space(ROOT, models, args.out)
    print(f"{args.out}: a Space with {', '.join(models)}; push it as docs/serving.md shows")


# --------------------------------------------------------------------------- what is published

def checked_models(root: Path) -> list[str]:
    """The trained models, after checking that dvc.lock ties metrics/ to exactly these files."""
    names = classifier.trained_models(root)
    if not names:
        raise UserError("no trained model in models/: train them with `dvc repro` (or fetch them with "
                        "`dvc pull`), then run `python -m src.space OUT` again")
    evaluate = evaluate_lock(root)
    scored = {entry["path"]: entry.get("md5") for entry in evaluate.get("deps", [])}
    for name in names:
        path = f"models/{name}.pt"
        if path not in scored:
            raise UserError(f"dvc.lock's evaluate stage did not score {path}: run `dvc repro evaluate`")
        if scored[path] != file_md5(root / path):
            raise UserError(f"metrics/ do not match {path}: evaluate scored a file with md5 {scored[path]}, this "
                            f"one has {file_md5(root / path)}. Run `dvc repro evaluate` (or `dvc checkout` "
                            "for the scored files)")
        if classifier.test_metrics(name, root) is None:
            raise UserError(f"metrics/{name}.json is missing: run `dvc repro evaluate`")
    recorded = next((entry.get("md5") for entry in evaluate.get("outs", []) if entry.get("path") == "metrics"), None)
    if recorded != dvc_dir_md5(root / "metrics"):
        raise UserError("metrics/ changed since the evaluate stage wrote them (dvc.lock records "
                        f"{recorded}, they hash to {dvc_dir_md5(root / 'metrics')}): run `dvc repro evaluate` or "
                        "`git checkout metrics`")
    return names


def evaluate_lock(root: Path) -> dict:
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text())
    except (OSError, yaml.YAMLError):
        lock = None
    evaluate = (lock or {}).get("stages", {}).get("evaluate") if isinstance(lock, dict) else None
    if not isinstance(evaluate, dict):
        raise UserError("dvc.lock records no evaluate stage, so nothing ties metrics/ to the model files: "
                        "run `dvc repro` (or `dvc pull` in a clone whose dvc.lock is committed)")
    return evaluate


# --------------------------------------------------------------------------- writing the folder

def write_space(root: Path, models: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = imported_files(root / APP, root)  # app.py and the project modules it imports
    for name in models:  # an architecture in code: src/models/<module>.py, imported by name when loaded
        module = model_file.read(model_file.path_of(name, root))["architecture"].get("module")
        if module:
            files |= imported_files(root / "src" / "models" / f"{module}.py", root)
    files = sorted(files)
    for path in files:
        copy(path, out / path.relative_to(root))
    for name in models:
        copy(model_file.path_of(name, root), model_file.path_of(name, out))
        copy(root / "metrics" / f"{name}.json", out / "metrics" / f"{name}.json")
    if (root / "metrics" / "summary.json").is_file():  # the app's default: the best test top-1
        copy(root / "metrics" / "summary.json", out / "metrics" / "summary.json")
    write_examples(root, out)
    (out / "requirements.txt").write_text(requirements(root, files))
    (out / "README.md").write_text(readme(root, models))


def copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)


def third_party(paths: list[Path]) -> set[str]:
    """The top-level names of the libraries the files import (neither the standard library nor the project's)."""
    names = {name.split(".")[0] for path in paths for name in imported_names(path)}
    return {name for name in names if name not in sys.stdlib_module_names and name not in (*PACKAGES, "__future__")}


def pins(root: Path) -> dict[str, str]:
    """{distribution (lower case): its `name==version` line} from the repository's requirements.txt."""
    lines = (line.split("#")[0].strip() for line in (root / "requirements.txt").read_text().splitlines())
    return {line.split("==")[0].lower().replace("_", "-"): line for line in lines if "==" in line}


def requirements(root: Path, paths: list[Path]) -> str:
    pinned = pins(root)
    lines = []
    for name in sorted(third_party(paths), key=str.lower):
        dist = DISTRIBUTIONS.get(name, name).lower().replace("_", "-")
        if dist not in pinned:
            raise UserError(f"the Space's code imports {name}, which requirements.txt does not pin: add "
                            f"{dist}==<version> there")
        lines.append(pinned[dist] + ("+cpu" if dist in CPU_WHEELS else ""))
    return ("# CPU inference: the app and the modules it imports; the repository's pins"
            f" (CPU builds of {', '.join(CPU_WHEELS)}).\n--extra-index-url {CPU_INDEX}\n" + "\n".join(lines) + "\n")


def write_examples(root: Path, out: Path) -> None:
    """data/prepared/test.npz with only the app's example images (the first of each of eight
    classes): app.py then offers the examples it offers in the repository."""
    try:
        with np.load(root / "data" / "prepared" / "test.npz") as split:
            images, labels = split["images"], split["fine_labels"]
    except (OSError, ValueError, KeyError):
        return
    chosen = sorted(np.unique(labels, return_index=True)[1])[:EXAMPLES]
    (out / "data" / "prepared").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "data" / "prepared" / "test.npz", images=images[chosen], fine_labels=labels[chosen])


# --------------------------------------------------------------------------- the README

def readme(root: Path, models: list[str]) -> str:
    gradio = pins(root)["gradio"].split("==")[1]
    front = {"title": "CIFAR-100 ResNets", "emoji": "🖼️", "colorFrom": "blue", "colorTo": "gray",
             "sdk": "gradio", "sdk_version": gradio, "python_version": "3.11", "app_file": APP, "pinned": False}
    evaluate = evaluate_lock(root)
    data = next((entry.get("md5") for entry in evaluate.get("deps", []) if entry.get("path") == "data/prepared"),
                "not recorded")
    sections = ["---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---", "",
                "# CIFAR-100 ResNets", "",
                "Upload an image: each model gives its five most likely CIFAR-100 classes. The models were "
                "trained from scratch on CIFAR-100 by a DVC pipeline; the numbers below come from its "
                "`metrics/`, tied to these model files by its `dvc.lock`.", "",
                "## Models", "",
                "| model | test top-1 (95% interval) | test top-5 (95% interval) | trained with |",
                "|---|---|---|---|"]
    trained_on = set()  # the project's data hash, as each model file records it
    for name in models:
        metrics = classifier.test_metrics(name, root)
        state = model_file.read(model_file.path_of(name, root))
        trained_on.add(state.get("prepared_data_hash") or "not recorded")
        sections.append(f"| {name} | {classifier.score_text(metrics)} | {classifier.score_text(metrics, 'top5')} | "
                        f"{classifier.trained_with_text(state.get('params') or {})} |")
    sections += ["", "Intervals: percentile bootstrap over the test images (10,000 resamples).", "",
                 "## Provenance", "",
                 f"- prepared data, DVC's hash (the `md5` of `data/prepared` in `dvc.lock`, as the evaluate stage "
                 f"read it): `{data}`",
                 "- prepared data, the project's hash (the `prepared_data_hash` that the model files and the "
                 f"report record): `{'`, `'.join(sorted(trained_on))}`",
                 f"- git commit of the run: `{git_commit(root)}`",
                 *[f"- `models/{name}.pt`: md5 `{file_md5(model_file.path_of(name, root))}`" for name in models],
                 "", LIMITS, "", LICENCE, ""]
    return "\n".join(sections)


def git_commit(root: Path) -> str:
    """HEAD, marked when tracked files differ from it (the run may not be the commit)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown (not a git repository)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


LIMITS = """## Limits

- Every image is brought to 32x32 pixels (the central square, resized), as CIFAR's images are:
  small objects, text and fine texture are lost, and a photo's framing decides what is left.
- The answer is always one of CIFAR-100's 100 classes; nothing says "none of these". An image of
  something else still gets five confident-looking classes.
- CIFAR's photos are low-resolution web images from around 2008: other cameras, styles and
  subjects are classified less well than the test scores say.
- For demonstration and research only, not for decisions about people."""

LICENCE = """## Data

CIFAR-100 (Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009) is
distributed by its authors at https://www.cs.toronto.edu/~kriz/cifar.html without a formal licence;
cite the report when you use it. Its images were collected from the web (the 80 Million Tiny
Images set, since withdrawn by its authors); their copyright stays with their owners. The example
images of this Space are from its test split."""


if __name__ == "__main__":
    run(main)
