"""ResNet-18 over a whole schedule: the project, through `dvc exp run`, with each crop padding,
against an independent plain PyTorch loop of the same recipe, over three seeds.

    python scripts/fidelity.py --archive /datasets/cifar-100-python.tar.gz    # run what is missing
    python scripts/fidelity.py --table                                         # the table so far

The budget: ResNet-18 at width 16, batch 128, lr 0.1, one epoch of per-step linear warmup then
cosine to 0 per step, 15 epochs on all 50,000 training images, scored on the full test split.
The runs, seed by seed (0, 1, 2):
  project-black, project-mean  `dvc exp run -S augment.crop_fill=...` in a scratch git copy of
                               this checkout that keeps ResNet-18 alone (metrics/resnet18.json)
  loop-<fill>                  scripts/convergence.py's plain loop (torchvision's CIFAR100 reader
                               and ResNet blocks, transforms v2, written apart from src/), padding
                               with --loop-fill (default: params.yaml's augment.crop_fill)
The project arms run the code of the commit the scratch copy was made from (its `commit`), so
delete the scratch folder to measure a newer one. About 20-25 minutes a run on two CPU cores: run
it alone. Each result is appended to --results
(one JSON line) as it ends, and a second start skips the runs already there, so the study can
be stopped and resumed. The table: each arm's mean, sample sd and seeds, and each project arm
minus the loop with a 95% Welch interval.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "tests")]  # convergence.py; the suite's helpers

import convergence  # noqa: E402  (scripts/: the plain loop and the archive helpers)

from helpers.project import copy_tracked_files, remove_models  # noqa: E402

MODEL = "resnet18"
BUDGET = {"epochs": 15, "lr": 0.1, "batch_size": 128, "model.width": 16, "train.warmup_epochs": 1,
          "data.train_limit": None, "data.test_limit": None, "data.val_size": 0}
PROJECT_FILLS = ("black", "mean")
SEEDS = (0, 1, 2)


def project_repo(folder: Path, archive: Path, md5: str) -> Path:
    """A git copy of this checkout whose pipeline trains ResNet-18 alone on the budget."""
    if (folder / ".git").exists():
        return folder
    copy_tracked_files(folder)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    pipeline = yaml.safe_load((folder / "dvc.yaml").read_text())
    remove_models(params, pipeline, [MODEL])
    for key, value in {**BUDGET, "data.url": str(archive), "data.md5": md5}.items():
        convergence.set_param(params, key, value)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git = ["git", "-c", "user.name=fidelity", "-c", "user.email=fidelity@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "ResNet-18 alone, the fidelity budget"]):
        subprocess.run([*git, *args], cwd=folder, check=True)
    (folder / ".git" / "source-commit").write_text(head_commit())  # what the project runs are of
    return folder


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def source_commit(repo: Path) -> str:
    """The commit of this checkout the scratch copy was made from (the project arms' code)."""
    recorded = repo / ".git" / "source-commit"
    return recorded.read_text().strip() if recorded.exists() else "unknown"


def run_project(repo: Path, fill: str, seed: int) -> dict:
    """`dvc exp run` of the pipeline up to evaluate with this padding and seed; its test scores."""
    name = f"fidelity-{fill}-s{seed}"
    bin_dir = Path(sys.executable).parent  # this interpreter's python and dvc run the stages
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    dvc = bin_dir / "dvc"
    done = subprocess.run([str(dvc), "exp", "run", "-n", name, "-S", f"seed={seed}",
                           "-S", f"augment.crop_fill={fill}", "evaluate"], cwd=repo, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fidelity: `dvc exp run -n {name}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    metrics = json.loads((repo / "metrics" / f"{MODEL}.json").read_text())
    return {"top1": metrics["top1"], "top5": metrics["top5"], "experiment": name}


def run_loop(cifar_root: Path, fill: str, seed: int) -> dict:
    recipe = convergence.PlainRecipe(MODEL, convergence.TRAIN_IMAGES, BUDGET["epochs"], BUDGET["lr"], "crop",
                                     warmup_epochs=BUDGET["train.warmup_epochs"], width=BUDGET["model.width"],
                                     pad_fill=fill)
    return convergence.plain_run(cifar_root, recipe, seed)


def machine() -> str:
    """'2 cores, AMD EPYC, AVX-512': what a run's time depends on, for the measurements log."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.machine())
    vector = "AVX-512" if "avx512f" in cpuinfo else "AVX2" if "avx2" in cpuinfo else ""
    return ", ".join(filter(None, [f"{len(os.sched_getaffinity(0))} cores", model, vector]))


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95% interval (Welch's t; needs two values on each side)."""
    from scipy import stats
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff, se = statistics.fmean(a) - statistics.fmean(b), (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    half = stats.t.ppf(0.975, df) * se
    return diff, diff - half, diff + half


def table(rows: list[dict]) -> str:
    arms: dict[str, list[dict]] = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
    lines = ["| arm | n | top-1 mean | sd | top-1 by seed | top-5 mean | minutes a run |",
             "|---|---|---|---|---|---|---|"]
    for arm, runs in sorted(arms.items()):
        runs.sort(key=lambda r: r["seed"])
        top1 = [r["top1"] for r in runs]
        sd = f"{statistics.stdev(top1):.2f}" if len(top1) > 1 else "-"
        seeds = ", ".join(f"{r['top1']:.2f} (s{r['seed']})" for r in runs)
        minutes = statistics.fmean(r["seconds"] for r in runs) / 60
        lines.append(f"| {arm} | {len(runs)} | {statistics.fmean(top1):.2f} | {sd} | {seeds} "
                     f"| {statistics.fmean(r['top5'] for r in runs):.2f} | {minutes:.1f} |")
    lines.append("")
    loops = [arm for arm in arms if arm.startswith("loop-")]
    for loop in loops:
        for arm in (a for a in sorted(arms) if a.startswith("project-")):
            a, b = [r["top1"] for r in arms[arm]], [r["top1"] for r in arms[loop]]
            if len(a) > 1 and len(b) > 1:
                diff, low, high = welch(a, b)
                lines.append(f"{arm} - {loop}: {diff:+.2f} top-1 points (95% interval {low:+.2f} to {high:+.2f})")
            elif a and b:
                lines.append(f"{arm} - {loop}: {statistics.fmean(a) - statistics.fmean(b):+.2f} top-1 points "
                             "(one seed a side: no interval yet)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="the genuine cifar-100-python.tar.gz (default: ../shared parts)")
    parser.add_argument("--archive-md5", default=None,
                        help="md5 of --archive (default: params.yaml's data.md5, the official archive's)")
    parser.add_argument("--results", default="fidelity-results.jsonl", help="one JSON line per finished run")
    parser.add_argument("--scratch", default=None, help="work folder (default: beside --results)")
    parser.add_argument("--loop-fill", choices=("black", "mean", "reflect"), default=None,
                        help="the plain loop's padding (default: params.yaml's augment.crop_fill)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--table", action="store_true", help="print the table of the results so far and exit")
    args = parser.parse_args()

    results = Path(args.results).resolve()
    if args.table:
        print(table(read_results(results)))
        return
    loop_fill = args.loop_fill or convergence.R18_CROP_FILL  # params.yaml's augment.crop_fill
    scratch = Path(args.scratch) if args.scratch else results.with_suffix(".work")
    scratch.mkdir(parents=True, exist_ok=True)
    archive = convergence.genuine_archive(args.archive, scratch)
    md5 = args.archive_md5 or (convergence.DEFAULTS["data"]["md5"] if args.archive else convergence.GENUINE_MD5)
    commit = head_commit()  # the loop's code (scripts/convergence.py) is this checkout's
    plan = [(arm, seed) for seed in args.seeds for arm in (*(f"project-{f}" for f in PROJECT_FILLS),
                                                           f"loop-{loop_fill}")]
    done = {(r["arm"], r["seed"]) for r in read_results(results)}
    todo = [step for step in plan if step not in done]
    print(f"fidelity: {len(plan) - len(todo)} of {len(plan)} runs in {results}; {len(todo)} to go "
          f"(about 20-25 minutes each on two CPU cores)", flush=True)
    repo = cifar_root = None
    for arm, seed in todo:
        start = time.perf_counter()
        print(f"{datetime.datetime.now():%H:%M} {arm} seed {seed} ...", flush=True)
        if arm.startswith("project-"):
            repo = repo or project_repo(scratch / "project", archive, md5)
            scores = run_project(repo, arm.removeprefix("project-"), seed)
        else:
            cifar_root = cifar_root or convergence.torchvision_root(archive, scratch)
            scores = run_loop(cifar_root, arm.removeprefix("loop-"), seed)
        row = {"arm": arm, "seed": seed, **scores, "seconds": round(time.perf_counter() - start, 1),
               "commit": source_commit(repo) if arm.startswith("project-") else commit,
               "date": f"{datetime.date.today()}", "machine": machine()}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{arm} seed {seed}: top-1 {row['top1']:.2f}, top-5 {row['top5']:.2f} "
              f"({row['seconds'] / 60:.1f} min)", flush=True)
    print(table(read_results(results)))


if __name__ == "__main__":
    main()
