"""What a sweep over two machines costs over running the same trials by hand on them: the wall
time of two `python -m src.sweep --storage postgresql://... --push origin` drivers, one per clone,
over that of `dvc exp run` + `dvc exp push` of the same trials, half on each clone, in one run.

    python scripts/benchmark_sweep_machines.py [--trials 4]

The machines are two clones of one project that share a bare git repository, a local DVC remote
and a throwaway PostgreSQL server (the test suite's: Debian's postgresql package), as in
docs/scale.md, "A sweep over many machines"; here they share this machine's cores, the same in
every round. Tiny trials (scripts/benchmark_sweep.py's) so that what the drivers add (the shared
study, heartbeats, `dvc exp show`, DVC's queue) weighs as much as it ever will. Rounds: by hand,
the drivers (a grid over the same learning rates), by hand again; DVC's run-cache is emptied in
both clones before each. Run it alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from benchmark_sweep import LRS, forget_runs, report, tiny_sweep_project  # noqa: E402

from fixtures.postgres import running_postgres  # noqa: E402
from helpers.commands import ok, run_cmd  # noqa: E402
from helpers.project import Project  # noqa: E402
from helpers.sweep import VAL_SIZE  # noqa: E402


def machines(tmp: Path) -> list[Project]:
    """Two clones of the tiny project through a bare git repository and a DVC remote, each with
    the prepared data pulled into a cache of its own."""
    base = tiny_sweep_project(tmp)
    ok(base.dvc("remote", "add", "-d", "shared", str(tmp / "dvc-remote")))
    ok(base.git("commit", "-q", "-am", "a shared DVC remote"))
    ok(base.dvc("push"))
    ok(run_cmd(["git", "init", "-q", "--bare", tmp / "origin.git"], cwd=tmp))
    ok(base.git("push", "-q", str(tmp / "origin.git"), "HEAD:refs/heads/main"))
    clones = []
    for name in ("a", "b"):
        ok(run_cmd(["git", "clone", "-q", "--branch", "main", tmp / "origin.git", tmp / name], cwd=tmp))
        (tmp / f"{name}-dvc-site-cache").mkdir()
        clone = Project(tmp / name, env={"DVC_SITE_CACHE_DIR": str(tmp / f"{name}-dvc-site-cache")})
        ok(clone.dvc("pull", "--with-deps", "augment"))
        clones.append(clone)
    return clones


def on_both(clones: list[Project], work) -> float:
    """Wall seconds until `work(clone, k)` has ended on both clones, started together."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(clones)) as pool:
        for future in [pool.submit(work, clone, k) for k, clone in enumerate(clones)]:
            future.result()
    return time.perf_counter() - start


def by_hand(clones: list[Project], lrs: list[float], round_name: str) -> float:
    def work(clone: Project, k: int) -> None:
        for j, lr in enumerate(lrs[k::len(clones)]):
            name = f"{round_name}-{k}-{j}"
            ok(clone.dvc("exp", "run", "-n", name, "-S", f"data.val_size={VAL_SIZE}", "-S", f"lr={lr}"))
            ok(clone.dvc("exp", "push", "origin", name))
    return on_both(clones, work)


def by_drivers(clones: list[Project], lrs: list[float], storage: str) -> float:
    def work(clone: Project, k: int) -> None:
        (clone.root / "bench.yaml").write_text(
            f"objective: resnet18\nval_size: {VAL_SIZE}\nspace:\n  lr: {{values: {lrs}}}\n")
        ok(clone.run(sys.executable, "-m", "src.sweep", "bench.yaml", "--sampler", "grid", "--storage", storage,
                     "--push", "origin", "--trials", str(len(lrs)), timeout=3600))
    return on_both(clones, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials in all, half on each machine")
    args = parser.parse_args()
    lrs = LRS[:args.trials]
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as server:
        clones = machines(Path(tmp))
        times = {}
        for name, run in (("by hand (1)", lambda: by_hand(clones, lrs, "hand1")),
                          ("src.sweep", lambda: by_drivers(clones, lrs, server.new_database("bench"))),
                          ("by hand (2)", lambda: by_hand(clones, lrs, "hand2"))):
            for clone in clones:
                forget_runs(clone)
            times[name] = run()
            print(f"  {name:12s} {times[name]:7.1f} s", flush=True)
    report(times, args.trials, f"{args.trials} tiny trials on two machines (clones sharing PostgreSQL, git and "
                               "DVC remotes)")


if __name__ == "__main__":
    main()
