"""Classify image files with a trained model: the top-K CIFAR-100 classes of each.

    python -m src.classify PATH... [--model NAME] [--top K] [--json]

PATHs are image files or folders (searched recursively for files with an image suffix).
NAME is one of the `model.<name>` blocks of params.yaml (resnet18, resnet34, resnet50, and any
model added as docs/models.md shows). The model defaults to the trained one with the best test
top-1 in metrics/summary.json (without metrics: the first trained model found); which one is used is printed on stderr.
Any image Pillow opens is brought to 32x32 RGB as src/images.py describes. A file that
cannot be classified gets one line on stderr (and an "error" object with --json); the
others are still classified, and the exit status is 1 when any failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from src import classifier, images, model_file
from src.errors import UserError, run


def main() -> None:
    args = parse_args()
    name = args.model
    if name is None:
        name, why = classifier.default_model()
        print(f"using {name} ({model_file.path_of(name)}): {why}", file=sys.stderr)
    model = classifier.load_classifier(model_file.path_of(name), classifier.inference_runtime(args.device))
    results = []
    for path, error in inputs(args.paths):  # printed as they come: a big folder shows progress
        results.append(result := classify_one(model, path, error, args.top))
        if "error" in result:
            print(f"ERROR: {result['path']}: {result['error']}", file=sys.stderr, flush=True)
        elif not args.json:
            print(human(result), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    failed = sum("error" in result for result in results)
    if failed:
        raise UserError(f"{failed} of {len(results)} inputs could not be classified (see above)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.classify", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="image files and folders")
    parser.add_argument("--model", choices=classifier.model_names(),  # params.yaml's model.<name> blocks
                        help="default: best test top-1 in metrics/summary.json")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    args = parser.parse_args()
    if not 1 <= args.top <= 100:
        parser.error(f"--top must be between 1 and 100, not {args.top}")
    return args


def inputs(paths: list[Path]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each file to classify, (path, problem) for an argument that yields none."""
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in images.IMAGE_SUFFIXES)
            if not files:
                yield path, "folder holds no image files (searched recursively for .png, .jpg, .webp, ...)"
            yield from ((file, None) for file in files)
        elif path.exists():
            yield path, None  # named explicitly: tried whatever its suffix
        else:
            yield path, "no such file or folder"


def classify_one(model: classifier.Classifier, path: Path, error: str | None, k: int) -> dict:
    if error is None:
        try:
            top = model.top(images.load_image(path), k)
        except images.ImageError as problem:
            error = str(problem)
    if error is not None:
        return {"path": str(path), "error": error}
    return {"path": str(path), "predictions": [{"class": c, "probability": p} for c, p in top]}


def human(result: dict) -> str:
    rows = [f"    {row['class']:<16} {100 * row['probability']:6.2f}%" for row in result["predictions"]]
    return "\n".join([result["path"], *rows])


if __name__ == "__main__":
    run(main)
