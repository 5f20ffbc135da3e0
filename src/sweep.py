"""Hyperparameter search on the val split, over DVC experiments (Optuna; TPE by default).

    python -m src.sweep SPACE.yaml [--trials N] [--jobs J] [--sampler tpe|random|grid]
                                   [--name NAME] [--storage URL] [--push REMOTE]
                                   [--stale-after SECONDS] [--final] [--json]

Each trial is a DVC experiment named <NAME>-t<number>, queued with `-S data.val_size=<val_size>`
and its params and run by `dvc queue start -j J`, so it is in `dvc exp show` with its params and
metrics. The objective is a val top-1 (SPACE.yaml's `objective`): the test split is never looked
at to choose. The study (by default sweeps/<NAME>.db, gitignored; `--storage` any Optuna RDB URL,
which drivers on several machines share) remembers the trials: a sweep that is stopped, even by
kill -9, resumes when started again, runs no finished trial twice and picks up the experiments that
finished meanwhile; a trial whose machine is lost is run again elsewhere after --stale-after.
`--push REMOTE` pushes each finished trial (`dvc exp push`). `--final` then trains the best params
once on the whole training split (`data.val_size=0`) as <NAME>-final and reports its test numbers:
the one test score of the sweep. docs/experiments.md, "Tuning"; docs/scale.md, "A sweep over many machines".
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from tqdm import tqdm

from src import experiments
from src.errors import UserError, run
from src.params import load_params
from src.tuning import final, trials
from src.tuning import study as studies
from src.tuning.space import load_space

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,60}")  # a git ref component, as DVC names experiments
DEFAULT_TRIALS = 20


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    space = load_space(args.space)  # every check of SPACE.yaml and params.yaml, before anything runs
    params = load_params()
    models = params.model.names
    name = args.name or re.sub(r"[^A-Za-z0-9_-]", "-", args.space.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    if not NAME.fullmatch(name):
        raise UserError(f"--name {name!r} cannot name DVC experiments: use letters, digits, - and _ "
                        "(starting with a letter or digit)")
    if args.sampler == "grid" and space.grid is None:
        raise UserError("--sampler grid needs a list for every key of the space ({values: [...]} or "
                        "{choices: [...]}), not a range")
    total = args.trials or DEFAULT_TRIALS
    if args.sampler == "grid":
        total = min(total, _grid_size(space.grid))
    if args.push:
        experiments.check_sharing(args.push)
    url = args.storage or studies.default_storage(name)
    studies.lock(name)
    stale = trials.StaleTrials(args.stale_after)
    storage = studies.open_storage(url, args.stale_after, stale)
    study = studies.open_study(name, storage, url, space, args.sampler, params.seed)
    known = trials.listing()
    _check_names(name, study, known)
    out = sys.stderr if args.json else sys.stdout
    finished = trials.Budget.of(study.get_trials(deepcopy=False)).done
    with tqdm(total=max(total, finished), initial=finished, desc=f"sweep {name}", unit="trial",
              file=sys.stderr, dynamic_ncols=True) as bar:
        stale.report = lambda line: bar.write(line, file=out)
        driver = trials.Driver(study, storage, space, name, models, args.jobs, report=stale.report,
                               on_finished=bar.update, push=args.push)
        driver.resume(known)
        driver.run(total)
    last = None
    if args.final:
        report = lambda line: print(line, file=out)  # noqa: E731
        if args.push:
            final.pull_trials(study, args.push, report)
        best = final.best_trial(study.get_trials(deepcopy=False))
        if best is None:
            raise UserError(f"no trial of sweep {name} finished, so --final has nothing to train: "
                            f"`dvc queue logs {trials.trial_name(name, 0)}` shows why the first failed")
        last = final.run_final(name, best, models, args.jobs, report)
        if args.push:
            experiments.push(args.push, [last["experiment"]])
            report(f"final: pushed {last['experiment']} to {args.push}")
    result = final.summary(study, models, last)
    print(final.text(result, space.objective), file=out)
    if args.json:
        print(json.dumps(result, indent=2))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("space", help="SPACE.yaml: objective, val_size and the space of -S keys")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"trials in the study, those of earlier runs included (default {DEFAULT_TRIALS}; "
                             "grid: the grid's size)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once: `dvc queue start -j J` (default 1)")
    parser.add_argument("--sampler", choices=studies.SAMPLERS, default="tpe", help="Optuna sampler (default tpe)")
    parser.add_argument("--name", help="the sweep's name: its experiments are NAME-t0, NAME-t1, ... and "
                                       "NAME-final (default: SPACE.yaml's file name)")
    parser.add_argument("--storage", metavar="URL",
                        help="the study's database, any Optuna RDB URL (postgresql://user:password@host/db, "
                             "mysql://..., sqlite:///path): drivers started on several clones with the same "
                             "SPACE.yaml, --name and URL share the trials (default sqlite:///sweeps/NAME.db)")
    parser.add_argument("--push", metavar="REMOTE",
                        help="git remote to `dvc exp push` each finished trial to (outputs to the default DVC "
                             "remote); with --final, the trials are pulled from it first and the final pushed")
    parser.add_argument("--stale-after", type=int, default=studies.DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                        help="a trial whose driver sent no heartbeat for this long (machine lost, driver killed) "
                             f"is failed and its params run again once (default {studies.DEFAULT_STALE_AFTER_S})")
    parser.add_argument("--final", action="store_true",
                        help="then train the best params on the whole training split and score the test split")
    parser.add_argument("--json", action="store_true", help="print the trials, best (and final) as JSON on stdout")
    args = parser.parse_args(argv)
    for flag in ("trials", "jobs", "stale_after"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    return args


def _grid_size(grid: dict[str, list]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


def _check_names(name: str, study, known: dict) -> None:
    """Refuse, before queueing anything, when HEAD has experiments of this name that the study did
    not make (a deleted study, or another sweep of the same name): DVC names must be unique."""
    ours = {t.user_attrs.get(trials.EXPERIMENT) for t in study.get_trials(deepcopy=False)}
    pattern = re.compile(rf"{re.escape(name)}-t\d+")
    theirs = sorted(n for n in known if pattern.fullmatch(n) and n not in ours)
    if theirs:
        raise UserError(f"HEAD already has experiments named {', '.join(theirs[:3])} that sweep {name}'s study "
                        f"did not make: give this sweep another --name, or remove "
                        f"them with `dvc exp remove {' '.join(theirs[:3])}`")


def _main() -> None:
    try:
        main()
    except KeyboardInterrupt:
        print("\nInterrupted: the trials already queued run on in DVC's queue (`dvc queue status`); the "
              "same command resumes the sweep, and `dvc queue kill` stops them", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run(_main)
