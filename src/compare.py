"""Experiments over seeds: mean +- std of each model's top-1 and top-5 per params set.

    python -m src.compare                      # a table per group of experiments
    python -m src.compare --json [PATH]        # the same as JSON, on stdout or into PATH
    python -m src.compare --figure seeds.png   # each seed's point and the means

Reads the experiments of the current commit as `dvc exp show --json` lists them (DVC's
documented machine output, which also says which are queued, running or failed and which
metrics files could not be read). Finished experiments are grouped by every param of
params.yaml except `seed`, so a seed study (`dvc exp run --queue -S seed=0,1,2,3,4`) is
one group and a sweep over seeds and learning rates is one group per learning rate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from src.errors import UserError, run
from src.experiments import Experiment, exp_show, listed
from src.params import load_params

METRICS = ("top1", "top5")
NOT_FINISHED = ("queued", "running", "failed")
STUDY = "queue a seed study with `dvc exp run --queue -S seed=0,1,2,3,4`, then run it with `dvc queue start -j 2`"


def experiments(shown: list[dict], models: list[str]) -> tuple[pd.DataFrame, int]:
    """(one row per finished experiment and model: experiment, timestamp, seed, group (every
    param but seed, as sorted JSON), model, top1, top5; the number not finished yet or failed).

    A finished experiment that lacks a model or whose metrics cannot be read is an error, not
    a skip: a mean over the runs that happened to work would be a biased one.
    """
    rows, unfinished = [], 0
    for exp in listed(shown):
        if exp.state in NOT_FINISHED:
            unfinished += 1
            continue
        if exp.error is not None:
            raise UserError(f"DVC cannot read experiment {exp.name} ({exp.error}): "
                            f"remove it with `dvc exp remove {exp.name}` or run it again")
        params = dict(exp.params)
        seed = params.pop("seed", None)
        group = json.dumps(params, sort_keys=True)
        for model in models:
            values = model_metrics(exp, model, models)
            rows.append({"experiment": exp.name, "timestamp": exp.timestamp,
                         "seed": seed, "group": group, "model": model, **values})
    return pd.DataFrame(rows), unfinished


def model_metrics(exp: Experiment, model: str, models: list[str]) -> dict:
    """top1 and top5 of `model` in one experiment's metrics, or a UserError saying what is wrong."""
    path = f"metrics/{model}.json"
    fix = f"run it again (`dvc exp run` with its params) or remove it with `dvc exp remove {exp.name}`"
    error = exp.metric_errors.get(path) or {}
    # Not declared in its dvc.yaml, or declared and absent from its commit: either way no numbers.
    if (path not in exp.metrics and not error) or error.get("type") == "FileNotFoundError":
        raise UserError(f"experiment {exp.name} has no {path} (it lacks {model}; every experiment must "
                        f"evaluate all of {', '.join(models)}): {fix}")
    if error:
        raise UserError(f"experiment {exp.name}: {path} is not valid JSON "
                        f"({error.get('type', 'unreadable')}): {fix}")
    data = exp.metrics[path]
    missing = [key for key in METRICS if not isinstance(data.get(key), (int, float))]
    if missing:
        raise UserError(f"experiment {exp.name}: {path} has no {' or '.join(missing)}: {fix}")
    return {key: float(data[key]) for key in METRICS}


def summarise(runs: pd.DataFrame) -> list[dict]:
    """Per group of params: the seeds, the params that set it apart, and per model n, mean,
    std (sample, ddof=1; None for one run), min and max of each metric."""
    # One run per seed and group: an experiment repeated with the same params counts once (the newest).
    runs = runs.sort_values("timestamp", kind="stable").drop_duplicates(["group", "seed", "model"], keep="last")
    models = list(dict.fromkeys(runs["model"]))  # in params.yaml's order
    groups = sorted(runs["group"].unique())
    params_of = [json.loads(g) for g in groups]
    keys = sorted(set().union(*params_of))
    differing = [k for k in keys if len({json.dumps(p.get(k)) for p in params_of}) > 1]
    out = []
    for group, params in zip(groups, params_of):
        members = runs[runs["group"] == group]
        stats = members.groupby("model")[list(METRICS)].agg(["count", "mean", "std", "min", "max"])
        out.append({
            "params": params,
            "differs_by": {k: params.get(k) for k in differing},
            "seeds": sorted(set(members["seed"].tolist()), key=lambda s: (s is None, s or 0)),
            "experiments": sorted(members["experiment"].unique().tolist()),
            "models": {model: {"n": int(stats.loc[model, (METRICS[0], "count")]),
                               **{metric: {stat: _number(stats.loc[model, (metric, stat)])
                                           for stat in ("mean", "std", "min", "max")} for metric in METRICS}}
                       for model in models},
        })
    return out


def _number(value) -> float | None:
    return None if pd.isna(value) else float(value)


def text(groups: list[dict], unfinished: int) -> str:
    count = sum(len(g["experiments"]) for g in groups)
    lines = [f"{count} experiment{'s' * (count != 1)} in {len(groups)} group{'s' * (len(groups) != 1)} "
             "(all params but seed equal within a group); std: sample standard deviation"]
    if unfinished:
        lines.append(f"({unfinished} queued, running or failed: not counted; see `dvc queue status`)")
    for number, group in enumerate(groups, 1):
        apart = ", ".join(f"{k}={v}" for k, v in group["differs_by"].items()) or "every experiment"
        lines += ["", f"group {number} ({apart}): seeds {', '.join(str(s) for s in group['seeds'])}",
                  f"{'model':<10} {'n':>3}  {'top-1 mean +- std (%)':>22} {'min-max':>13}"
                  f"  {'top-5 mean +- std (%)':>22} {'min-max':>13}"]
        for model, values in group["models"].items():
            cells = []
            for metric in METRICS:
                v = values[metric]
                std = "n/a" if v["std"] is None else f"{v['std']:.2f}"
                cells += [f"{v['mean']:.2f} +- {std}".rjust(22), f"{v['min']:.2f}-{v['max']:.2f}".rjust(13)]
            lines.append(f"{model:<10} {values['n']:>3}  {cells[0]} {cells[1]}  {cells[2]} {cells[3]}")
    return "\n".join(lines)


def figure(groups: list[dict], runs: pd.DataFrame, path: str | Path) -> None:
    """Per metric a panel: each seed's result as a dot, each group's mean as a bar with +- std."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4.2), squeeze=False)
    width, models = 0.8 / len(groups), list(groups[0]["models"])
    for ax, metric in zip(axes[0], METRICS):
        for g, group in enumerate(groups):
            label = (", ".join(f"{k}={v}" for k, v in group["differs_by"].items())
                     or f"seeds {', '.join(str(s) for s in group['seeds'])}")
            for m, model in enumerate(models):
                x = m - 0.4 + width * (g + 0.5)
                points = runs[(runs["experiment"].isin(group["experiments"])) & (runs["model"] == model)][metric]
                # Dots just left of the mean's bar, so that neither hides the other.
                ax.scatter([x - width * 0.15] * len(points), points, s=14, color=f"C{g}", alpha=0.6, zorder=3)
                stats = group["models"][model][metric]
                ax.errorbar(x + width * 0.15, stats["mean"], yerr=stats["std"] or 0, fmt="_", markersize=18,
                            capsize=4, color=f"C{g}", label=label if m == 0 else None, zorder=4)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}: each seed (dots), mean +- std (bars)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the numbers as JSON to PATH (stdout without PATH) instead of the table")
    parser.add_argument("--figure", metavar="PATH", help="also draw each seed's point and the means (PNG)")
    args = parser.parse_args(argv)
    # The models are the workspace's params.yaml blocks: every experiment must have evaluated them.
    runs, unfinished = experiments(exp_show(), load_params().model.names)
    if runs.empty:
        waiting = f" ({unfinished} queued, running or failed: see `dvc queue status`)" if unfinished else ""
        raise UserError(f"no finished experiment in this repository's current commit{waiting}: {STUDY}")
    groups = summarise(runs)
    document = json.dumps({"not_finished": unfinished, "groups": groups}, indent=2)
    if args.json == "-":
        print(document)
    elif args.json:
        Path(args.json).write_text(document + "\n")
    if args.json != "-":
        print(text(groups, unfinished))
    if args.figure:
        figure(groups, runs, args.figure)
        print(f"wrote {args.figure}", file=sys.stderr if args.json == "-" else sys.stdout)


if __name__ == "__main__":
    run(main)
