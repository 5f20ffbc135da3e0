"""The Python half of scripts/gpu_check.sh and scripts/gpu_accuracy.sh (not collected by pytest):
the environment record, the `dvc repro` part, the one JSON summary of all parts, and the accuracy
run on the genuine archive. docs/gpu.md explains both scripts.

    python scripts/gpu_check.py environment --json FILE
    python scripts/gpu_check.py repro --work DIR --json FILE [--width 64 --epochs 4 ...]
    python scripts/gpu_check.py accuracy --work DIR --json FILE --archive TAR --budget-s N [--img-s N]
    python scripts/gpu_check.py summary --work DIR --out OUT --limit 540 --seconds N [--dry-run] [--print]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: project copies, generated archives
from helpers.project import copy_tracked_files, model_names, remove_models  # noqa: E402

PARTS = ("setup", "tests", "resnet18", "resnet50", "distributed", "repro")
# The H100 goals of docs/gpu.md, "Check a GPU machine" (train img/s at batch 512, epoch / step).
GOALS = {"resnet18": 25_000, "resnet50": 8_000}
EPOCH_OVER_STEP_GOAL = 0.9
# ResNet-18 on the full defaults (scripts/gpu_accuracy.sh): 100 epochs of 50,000 images, a held-out
# pass over the 10,000 test images after each, and what the run spends outside the epochs
# (wheels, download and augment stages, compilation, evaluate): measured by the accuracy run.
ACCURACY_EPOCHS, TRAIN_IMAGES, TEST_IMAGES, ACCURACY_OVERHEAD_S = 100, 50_000, 10_000, 90
ACCURACY_CALL_S = 570       # what scripts/gpu_accuracy.sh gives the run by default: a 10-minute job slot
EVALUATE_RESERVE_S = 60     # kept back from training for the evaluate stage


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


# --------------------------------------------------------------------------- project copies

def copy_working_tree(work: Path) -> Path:
    """work/project: the tracked and untracked-not-ignored files of this checkout."""
    shutil.rmtree(work, ignore_errors=True)
    copy_tracked_files(work / "project")
    return work / "project"


def keep_models(project: Path, params: dict, names: list[str] | None) -> list[str]:
    """Remove every model but `names` (all when None) from `params` and the copy's dvc.yaml: a
    pipeline of these models only. Returns the models kept."""
    import yaml
    if not names:
        return model_names(params)
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    remove_models(params, pipeline, names)
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return list(names)


def stage_env() -> dict:
    """The environment stages and dvc run in: this interpreter's bin/ (python, dvc) first."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the stages import src/ from the copy
    return env


def heldout_curve(project: Path, name: str) -> list[float]:
    """Held-out top-1 (%) after each epoch, from the train stage's DVCLive curve."""
    curve = project / f"plots/train/{name}/plots/metrics/heldout/acc.tsv"
    return [float(line.split("\t")[1]) for line in curve.read_text().splitlines()[1:]] if curve.exists() else []


# --------------------------------------------------------------------------- part: dvc repro

def repro(args) -> int:
    """`dvc repro` of the whole pipeline in a git copy of the working tree, on a generated archive,
    with the CUDA defaults left on auto plus EMA and mixup; figures to args.json."""
    import yaml

    from helpers import archive as ca

    work = Path(args.work)
    project = copy_working_tree(work)
    start = time.perf_counter()
    archive = work / "cifar-100-python.tar.gz"
    md5 = ca.write_archive(archive, **ca.make_cifar_images(seed=0))
    print(f"generated {archive} (md5 {md5}) in {time.perf_counter() - start:.1f} s", flush=True)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(epochs=args.epochs, batch_size=args.batch_size)
    params["data"].update(url=str(archive), md5=md5, train_limit=args.train_limit, test_limit=args.test_limit)
    params["model"]["width"] = args.width
    for block in (params["model"][name] for name in model_names(params)):
        if block.get("mixup_alpha") == 0.0:
            block["mixup_alpha"] = 0.2  # mixup on for every model (ResNet-50's recipe has it)
    params["train"].update(ema_decay=0.999, warmup_epochs=1)
    params["runtime"]["device"] = args.device  # the rest stays auto: compile, gpu_augment, bf16 on CUDA
    if args.device == "cpu":
        params["runtime"]["workers"] = 0  # tiny: worker start-up would dominate
    models = keep_models(project, params, args.models)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = stage_env()
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
        heldout = heldout_curve(project, name)
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
        # Rises: the last epoch above the first (or at 99%+: nothing left to rise to); with one
        # epoch (the dry run) there is nothing to compare.
        model["heldout_rises"] = (heldout[-1] > heldout[0] or heldout[-1] >= 99) if len(heldout) > 1 else None
        rises.append(model["heldout_rises"])
        figures[name] = model
    figures["heldout_rises"] = None if None in rises else all(rises)
    Path(args.json).write_text(json.dumps(figures))
    print(json.dumps(figures, indent=1))
    if result.returncode != 0:
        return result.returncode
    return 0 if figures["heldout_rises"] is not False else 3


# --------------------------------------------------------------------------- the accuracy run

# The archives whose files are the genuine CIFAR-100: the official tarball, and a repack of the same
# three member files in another tarball (the parts the accuracy run can also be given).
KNOWN_ARCHIVES = {"eb9058c3a382ffc7106e4002c42a8d85": "the official archive",
                  "9c600102c9dd81479547f7fbb69f9571": "the repack of the genuine files"}


def archive_md5(path: Path) -> str:
    """The md5 of a genuine archive, or exit saying what the file is not."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    md5 = digest.hexdigest()
    if md5 not in KNOWN_ARCHIVES:
        sys.exit(f"ERROR: {path} has md5 {md5}, which is neither the official cifar-100-python.tar.gz "
                 f"(eb9058c3...) nor the known repack (9c600102...): point CIFAR_ARCHIVE at the official file")
    print(f"{path}: {KNOWN_ARCHIVES[md5]} (md5 {md5})", flush=True)
    return md5


def predicted_minutes(img_s: float, eval_img_s: float | None = None) -> dict:
    """How long the accuracy run takes at a train speed of `img_s` (the benchmark's ResNet-18
    epoch img/s; the goal is 25,000); the held-out pass after each epoch at `eval_img_s`
    (default: 3x the train speed, a forward pass without the backward)."""
    train_s = ACCURACY_EPOCHS * TRAIN_IMAGES / img_s
    heldout_s = ACCURACY_EPOCHS * TEST_IMAGES / (eval_img_s or 3 * img_s)
    total = train_s + heldout_s + ACCURACY_OVERHEAD_S
    return {"img_s": img_s, "train_s": round(train_s), "heldout_s": round(heldout_s),
            "overhead_s": ACCURACY_OVERHEAD_S, "minutes": round(total / 60, 1),
            "fits_a_10_minute_call": total < ACCURACY_CALL_S}


def accuracy(args) -> int:
    """ResNet-18 on the full defaults (100 epochs) on the genuine archive, the stages run as
    dvc.yaml runs them; training stops (SIGINT, the stage's own clean exit) when the budget
    would be overrun, leaving its per-epoch held-out curve. Figures to args.json."""
    import yaml
    deadline = time.monotonic() + args.budget_s
    figures: dict = {"predicted": predicted_minutes(args.img_s), "budget_s": args.budget_s, "stage_s": {}}
    print(f"predicted at {args.img_s:,.0f} img/s: {figures['predicted']['minutes']} min "
          f"(budget {args.budget_s / 60:.1f} min)", flush=True)
    project = copy_working_tree(Path(args.work))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(url=str(Path(args.archive).resolve()), md5=archive_md5(Path(args.archive)))
    figures["reference_top1"] = params["reference"]["resnet18"]["top1"]  # the ResNet-18 reference's 78.33
    keep_models(project, params, ["resnet18"])  # the evaluate stage then scores this model alone
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_env()

    def stage(name: str, *extra: str, reserve_s: float = 0) -> int:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", f"stages.{name}", *extra], cwd=project, env=env)
        try:
            rc = process.wait(timeout=max(1.0, deadline - reserve_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name}: stopping it (SIGINT) to stay inside the budget", flush=True)
            process.send_signal(signal.SIGINT)
            try:
                rc = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                rc = process.wait()
            figures["stopped"] = name
        figures["stage_s"][name] = round(time.perf_counter() - start, 1)
        return rc

    ok = stage("download") == 0 and stage("augment") == 0
    # Evaluate needs about a minute after training (start-up, 10,000 images, timing passes).
    ok = ok and stage("train", "--model", "resnet18", reserve_s=EVALUATE_RESERVE_S) == 0
    heldout = heldout_curve(project, "resnet18")
    figures.update(finished=ok, epochs=params["epochs"], epochs_done=len(heldout), heldout_top1_by_epoch=heldout,
                   test_top1_last_epoch=heldout[-1] if heldout else None)
    model_file = project / "models/resnet18.pt"
    if model_file.exists():
        import torch
        history = torch.load(model_file, weights_only=True, map_location="cpu")["history"]
        figures["train_s"] = round(sum(r["seconds"] for r in history), 1)
        figures["train_img_s"] = round(sum(r["images_per_s"] * r["seconds"] for r in history) / figures["train_s"], 1)
    if ok and stage("evaluate") == 0:
        metrics = json.loads((project / "metrics/resnet18.json").read_text())
        figures.update(test_top1=metrics["top1"], test_top5=metrics["top5"], metrics=metrics)
    Path(args.json).write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "heldout_top1_by_epoch"}, indent=1))
    return 0 if "test_top1" in figures else 1


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
    """Minutes scripts/gpu_accuracy.sh needs, from the measured ResNet-18 epoch and eval speeds."""
    if not resnet18.get("epoch_img_s") or not resnet18.get("eval_img_s"):
        return None
    return predicted_minutes(resnet18["epoch_img_s"], resnet18["eval_img_s"])


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
    acc = commands.add_parser("accuracy")
    acc.add_argument("--work", required=True)
    acc.add_argument("--json", required=True)
    acc.add_argument("--archive", required=True,
                     help="the genuine cifar-100-python.tar.gz (the official file or the known repack)")
    acc.add_argument("--img-s", type=float, default=25_000, help="ResNet-18 epoch img/s the benchmark measured")
    acc.add_argument("--budget-s", type=float, required=True, help="seconds from now the run must end within")
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
    return {"repro": repro, "accuracy": accuracy, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
