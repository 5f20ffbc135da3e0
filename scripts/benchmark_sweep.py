"""What `python -m src.sweep` costs over queueing the same trials by hand: the wall time of the
driver over that of `dvc exp run --queue` x N + `dvc queue start -j J` + waiting, in one run.

    python scripts/benchmark_sweep.py [--trials 4] [--jobs 1]

Tiny trials (the one-model pipeline of tests/test_sweep.py: ResNet-18 at width 8, 1,800 training
images, 3 epochs, about half a minute each on two CPU cores), so that the driver's own work
(Optuna, its SQLite study, `dvc exp show`) weighs as much as it ever will. The same learning rates
run three times: by hand, by the driver (a grid over them), by hand again; DVC's run-cache is
emptied before each round so that every round trains every trial. The by-hand rounds wait for
their experiments' git refs, checked every second (the cheapest wait there is). Run it alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # src/, and the suite's helpers

from helpers import archive as ca  # noqa: E402
from helpers.commands import ok  # noqa: E402
from helpers.project import copy_working_tree, keep_models  # noqa: E402
from helpers.sweep import LEARNS, VAL_SIZE  # noqa: E402

LRS = [0.03, 0.05, 0.08, 0.13, 0.2, 0.3, 0.45, 0.7]


def by_hand(project, lrs: list[float], jobs: int, round_name: str) -> float:
    start = time.perf_counter()
    names = [f"{round_name}-{k}" for k in range(len(lrs))]
    for name, lr in zip(names, lrs):
        ok(project.dvc("exp", "run", "--queue", "-n", name, "-S", f"data.val_size={VAL_SIZE}", "-S", f"lr={lr}"))
    ok(project.dvc("queue", "start", "-j", str(jobs)))
    while True:
        refs = ok(project.git("for-each-ref", "--format=%(refname)", "refs/exps")).stdout.split()
        if {ref.rsplit("/", 1)[-1] for ref in refs} >= set(names):
            return time.perf_counter() - start
        time.sleep(1)


def by_driver(project, lrs: list[float], jobs: int) -> float:
    space = project.root / "bench.yaml"
    space.write_text(f"objective: resnet18\nval_size: {VAL_SIZE}\nspace:\n  lr: {{values: {lrs}}}\n")
    start = time.perf_counter()
    ok(project.run(sys.executable, "-m", "src.sweep", space.name, "--sampler", "grid", "--jobs", str(jobs),
                   timeout=3600))
    return time.perf_counter() - start


def tiny_sweep_project(folder: Path):
    """A committed one-model project (the sweep tests' tiny pipeline) on a generated archive, its
    data prepared: what every round of the sweep benchmarks starts from."""
    archive = folder / "cifar-100-python.tar.gz"
    md5 = ca.write_archive(archive, **ca.make_cifar_images(seed=0))
    project = copy_working_tree(folder / "project", git=True)
    project.set_params({**LEARNS, "data.url": str(archive), "data.md5": md5})
    keep_models(project, ["resnet18"])
    ok(project.dvc("repro", "augment"))
    project.git("add", "-A")
    ok(project.git("commit", "-q", "-m", "baseline"))
    return project


def forget_runs(project) -> None:
    """Empty DVC's run-cache, so that the next round trains what the last one did."""
    shutil.rmtree(project.root / ".dvc" / "cache" / "runs", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    lrs = LRS[:args.trials]
    with tempfile.TemporaryDirectory() as tmp:
        project = tiny_sweep_project(Path(tmp))
        times = {}
        forget_runs(project)
        times["by hand (1)"] = by_hand(project, lrs, args.jobs, "hand1")
        forget_runs(project)
        times["src.sweep"] = by_driver(project, lrs, args.jobs)
        forget_runs(project)
        times["by hand (2)"] = by_hand(project, lrs, args.jobs, "hand2")
        ok(project.dvc("queue", "stop"))
    report(times, args.trials, f"{args.trials} tiny trials, -j {args.jobs}")


def report(times: dict[str, float], trials: int, what: str) -> None:
    """Each round's wall time, and the driver's over the mean of the two by-hand rounds."""
    hand = (times["by hand (1)"] + times["by hand (2)"]) / 2
    print(f"{what}, wall time:")
    for name, seconds in times.items():
        print(f"  {name:12s} {seconds:7.1f} s ({seconds / trials:.1f} s per trial)")
    print(f"driver / by hand (mean of the two by-hand rounds): {times['src.sweep'] / hand:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
