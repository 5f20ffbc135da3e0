"""The Python half of tests/gpu_check.sh (not collected by pytest): its environment record,
its `dvc repro` part, and the one JSON summary of all parts.

    python tests/gpu_check.py environment --json FILE
    python tests/gpu_check.py repro --work DIR --json FILE [--width 64 --epochs 4 ...]
    python tests/gpu_check.py summary --work DIR --out OUT --limit 540 --seconds N [--dry-run] [--print]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("setup", "tests", "resnet18", "resnet50", "distributed", "repro")
STATUSES = ("ok", "failed", "timeout", "skipped")
# The H100 goals of README "The GPU path" (train img/s at batch 512, epoch / step).
GOALS = {"resnet18": 25_000, "resnet50": 8_000}
EPOCH_OVER_STEP_GOAL = 0.9
# ResNet-18 on the full defaults (tests/gpu_accuracy.sh): 100 epochs of 50,000 images, a held-out
# pass over the 10,000 test images after each, and what the call spends outside the epochs
# (wheels, download and augment stages, compilation, evaluate): measured by the accuracy run.
ACCURACY_EPOCHS, TRAIN_IMAGES, TEST_IMAGES, ACCURACY_OVERHEAD_S = 100, 50_000, 10_000, 90


def environment(args) -> None:
    import torch
    import torchvision
    cuda = torch.cuda.is_available()
    record = {"python": platform.python_version(), "executable": sys.executable,
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "cuda": torch.version.cuda, "gpus": torch.cuda.device_count() if cuda else 0,
              "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
              "cpu_cores": len(os.sched_getaffinity(0))}
    for name in ("dvc", "dvclive", "albumentations", "pydantic", "numpy", "pytest"):
        try:
            record[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            record[name] = None
    Path(args.json).write_text(json.dumps(record))
    print(json.dumps(record, indent=1))


# --------------------------------------------------------------------------- part: dvc repro

def repro(args) -> int:
    """`dvc repro` of the whole pipeline in a git copy of the working tree, on a generated archive,
    with the CUDA defaults left on auto plus EMA and mixup; figures to args.json."""
    sys.path.insert(0, str(ROOT / "tests"))
    import yaml
    import cifar_archive as ca

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    project = work / "project"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, project / rel)
    start = time.perf_counter()
    archive = work / "cifar-100-python.tar.gz"
    md5 = ca.write_archive(archive, **ca.make_cifar_images(seed=0))
    print(f"generated {archive} (md5 {md5}) in {time.perf_counter() - start:.1f} s", flush=True)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(epochs=args.epochs, batch_size=args.batch_size)
    params["data"].update(url=str(archive), md5=md5, train_limit=args.train_limit, test_limit=args.test_limit)
    params["model"]["width"] = args.width
    for name, block in params["model"].items():
        if isinstance(block, dict) and block.get("mixup_alpha") == 0.0:
            block["mixup_alpha"] = 0.2  # mixup on for every model (ResNet-50's recipe has it)
    params["train"].update(ema_decay=0.999, warmup_epochs=1)
    params["runtime"]["device"] = args.device  # the rest stays auto: compile, gpu_augment, bf16 on CUDA
    if args.device == "cpu":
        params["runtime"]["workers"] = 0  # tiny: worker start-up would dominate
    models = [name for name, block in params["model"].items() if isinstance(block, dict)]
    if args.models:  # a pipeline of these models only, as README "Add a model" removes one
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        for name in set(models) - set(args.models):
            del params["model"][name], pipeline["stages"][f"train-{name}"]
            params["reference"].pop(name, None)
        pipeline["stages"]["evaluate"]["deps"] = [
            dep for dep in pipeline["stages"]["evaluate"]["deps"]
            if not dep.startswith("models/") or dep[len("models/"):-len(".pt")] in args.models]
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        models = list(args.models)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the stages import src/ from the copy
    git = ["git", "-c", "user.name=gpu-check", "-c", "user.email=gpu-check@localhost", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "gpu check"]):
        subprocess.run(git + command, cwd=project, check=True, env=env)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env)
    seconds = time.perf_counter() - start

    figures: dict = {"repro_s": round(seconds, 1), "exit_status": result.returncode,
                     "config": {k: getattr(args, k) for k in ("width", "epochs", "train_limit", "test_limit",
                                                              "batch_size", "device")}
                     | {"models": models}
                     | {"ema_decay": 0.999, "mixup_alpha": 0.2}}
    rises = []
    for name in models:
        curve = project / f"plots/train/{name}/plots/metrics/heldout/acc.tsv"
        heldout = ([float(line.split("\t")[1]) for line in curve.read_text().splitlines()[1:]]
                   if curve.exists() else [])
        metrics_file = project / f"metrics/{name}.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        model = {"heldout_top1_by_epoch": heldout, "test_top1": metrics.get("top1"), "test_top5": metrics.get("top5")}
        model_file = project / f"models/{name}.pt"
        if model_file.exists():
            import torch
            state = torch.load(model_file, weights_only=True, map_location="cpu")
            history = state["history"]
            model["train_img_s"] = round(sum(r["images_per_s"] * r["seconds"] for r in history)
                                         / sum(r["seconds"] for r in history), 1)
            model["runtime"] = state["params"]["runtime"]
        # Rises: the last epoch above the first; with one epoch (the dry run) nothing to compare.
        model["heldout_rises"] = (heldout[-1] > heldout[0]) if len(heldout) > 1 else None
        rises.append(model["heldout_rises"])
        figures[name] = model
    figures["heldout_rises"] = None if None in rises else all(rises)
    Path(args.json).write_text(json.dumps(figures))
    print(json.dumps(figures, indent=1))
    if result.returncode != 0:
        return result.returncode
    return 0 if figures["heldout_rises"] is not False else 3


# --------------------------------------------------------------------------- summary

def last_json(text: str) -> dict | None:
    """The last JSON object printed in a log (progress bars share its lines through \\r)."""
    for segment in reversed(re.split(r"[\r\n]", text)):
        start = segment.find("{\"")
        if start >= 0:
            try:
                return json.loads(segment[start:])
            except json.JSONDecodeError:
                continue
    return None


def pytest_figures(text: str) -> dict:
    counts = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line)
        if found and (" in " in line):
            counts = {("error" if kind.startswith("error") else kind): int(n) for n, kind in found}
            break
    return {"counts": counts,
            "failed": [line.split(" ", 1)[1][:300] for line in text.splitlines()
                       if line.startswith(("FAILED ", "ERROR "))]}


def benchmark_figures(name: str, text: str) -> dict:
    bench = last_json(text) or {}
    keys = ("train_step_img_s", "bare_step_img_s", "epoch_img_s", "eval_img_s", "bare_eval_img_s",
            "loader_img_s_per_worker", "loader_autoaugment_img_s_per_worker", "checkpoint_blocks_ms",
            "peak_gpu_mb")
    figures = {key: bench[key] for key in keys if key in bench}
    if "ratios" in bench:
        figures["train_step/bare_step"] = bench["ratios"]["train_step/bare_step"]
        figures["epoch/train_step"] = bench["ratios"]["epoch/train_step"]
        figures["eval/bare_eval"] = bench["ratios"]["eval/bare_eval"]
    if "config" in bench:
        figures["runtime"] = bench["config"]["device"]  # e.g. "NVIDIA H200, bf16, channels_last, compile=True, ..."
    return figures


def accuracy_prediction(resnet18: dict) -> dict | None:
    """Minutes tests/gpu_accuracy.sh needs, from the measured ResNet-18 epoch and eval speeds."""
    if not resnet18.get("epoch_img_s") or not resnet18.get("eval_img_s"):
        return None
    train_s = ACCURACY_EPOCHS * TRAIN_IMAGES / resnet18["epoch_img_s"]
    heldout_s = ACCURACY_EPOCHS * TEST_IMAGES / resnet18["eval_img_s"]
    total = train_s + heldout_s + ACCURACY_OVERHEAD_S
    return {"train_s": round(train_s), "heldout_s": round(heldout_s), "overhead_s": ACCURACY_OVERHEAD_S,
            "minutes": round(total / 60, 1), "fits_a_10_minute_call": total < 570}


def summary(args) -> int:
    work, out = Path(args.work), Path(args.out)
    records = {}
    tsv = work / "parts.tsv"
    for line in (tsv.read_text().splitlines() if tsv.exists() else []):
        name, status, seconds, limit, note = line.split("\t")
        records[name] = {"status": status, "seconds": int(seconds), "limit_s": int(limit), "note": note}
    parts = {}
    for name in PARTS:
        record = records.get(name, {"status": "pending", "seconds": 0, "limit_s": 0, "note": "not run yet"})
        log = out / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if name == "setup":
            env_file = work / "environment.json"
            figures = json.loads(env_file.read_text()) if env_file.exists() else {}
        elif name == "tests":
            figures = pytest_figures(text)
        elif name in GOALS:
            figures = benchmark_figures(name, text)
        elif name == "distributed":
            figures = last_json(text) or {}
        else:
            repro_file = work / "repro.json"
            figures = json.loads(repro_file.read_text()) if repro_file.exists() else {}
        parts[name] = {**record, "log": log.name if log.exists() else None, "figures": figures}

    goals = {}
    for name, goal in GOALS.items():
        figures = parts[name]["figures"]
        measured = not args.dry_run and "train_step_img_s" in figures
        goals[f"{name}_train_step_img_s>={goal}"] = figures["train_step_img_s"] >= goal if measured else None
        goals[f"{name}_epoch/train_step>={EPOCH_OVER_STEP_GOAL}"] = (
            figures["epoch/train_step"] >= EPOCH_OVER_STEP_GOAL if measured else None)
    data = {"dry_run": args.dry_run, "seconds": args.seconds, "limit_s": args.limit,
            "passed": all(p["status"] in ("ok", "skipped") for p in parts.values()),
            "parts": parts, "goals": goals,
            "accuracy_run": accuracy_prediction(parts["resnet18"]["figures"])}
    (out / "summary.json").write_text(json.dumps(data, indent=1))
    if args.print:
        for name, part in parts.items():
            print(f"{name:12} {part['status']:8} {part['seconds']:4d} s  {part['note']}")
        for name in GOALS:
            figures = parts[name]["figures"]
            print(f"{name}: train step {figures.get('train_step_img_s')} img/s "
                  f"({figures.get('train_step/bare_step')} of bare), epoch/step {figures.get('epoch/train_step')}, "
                  f"eval {figures.get('eval_img_s')} img/s")
        print(f"goals: {json.dumps(goals)}")
        print(f"accuracy run: {json.dumps(data['accuracy_run'])}")
        print(f"summary: {out / 'summary.json'}; {'passed' if data['passed'] else 'NOT passed'} in {args.seconds} s")
    return 0 if data["passed"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("environment")
    env.add_argument("--json", required=True)
    rep = commands.add_parser("repro")
    rep.add_argument("--work", required=True)
    rep.add_argument("--json", required=True)
    rep.add_argument("--width", type=int, default=64)
    rep.add_argument("--epochs", type=int, default=4)
    rep.add_argument("--train-limit", type=int, default=10_240)
    rep.add_argument("--test-limit", type=int, default=2_000)
    rep.add_argument("--batch-size", type=int, default=512)
    rep.add_argument("--device", default="cuda")
    rep.add_argument("--models", nargs="*", help="keep only these models' train stages (default: all)")
    summ = commands.add_parser("summary")
    summ.add_argument("--work", required=True)
    summ.add_argument("--out", required=True)
    summ.add_argument("--limit", type=int, required=True)
    summ.add_argument("--seconds", type=int, required=True)
    summ.add_argument("--dry-run", action="store_true")
    summ.add_argument("--print", action="store_true")
    args = parser.parse_args()
    if args.command == "environment":
        environment(args)
        return 0
    return repro(args) if args.command == "repro" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
