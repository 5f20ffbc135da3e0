"""The end of a sweep: the best trial, its params trained once on the whole training split and
scored on the test split (`--final`), and the table and JSON that report them."""
from __future__ import annotations

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from src import experiments
from src.errors import UserError
from src.tuning.space import VAL_SIZE_KEY
from src.tuning.trials import EXPERIMENT, SURPLUS, WORKER, failures, listing, shown, wait_for_change

TEST_KEYS = ("top1", "top1_low", "top1_high", "top5")


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The finished trial of the highest val top-1; the earliest of equals."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def pull_trials(study, remote: str, report) -> None:
    """`dvc exp pull REMOTE` of the finished trials' experiments, so that this clone's `dvc exp show`
    lists them all, whichever machine ran them. The best is chosen from the study's values either way."""
    names = [t.user_attrs[EXPERIMENT] for t in study.get_trials(deepcopy=False)
             if t.state == TrialState.COMPLETE and t.user_attrs.get(EXPERIMENT)]
    if not names:
        return
    try:
        experiments.pull(remote, names)
        report(f"final: pulled {len(names)} trials' experiments from {remote}")
    except UserError as error:
        report(f"final: could not pull every trial from {remote} ({error}); `dvc exp show` lists those this "
               "clone has")


def final_params(best: FrozenTrial) -> dict:
    """The best trial's params, on the whole training split: nothing held out."""
    return {VAL_SIZE_KEY: 0, **best.params}


def run_final(sweep: str, best: FrozenTrial, models: list[str], jobs: int, report) -> dict:
    """Train `best`'s params as the experiment <sweep>-final (or pick up the one a previous
    --final queued) and return its test numbers: {experiment, params, test: {model: {...}}}."""
    name, params = f"{sweep}-final", final_params(best)
    known = listing()
    if name in known and any(known[name].params.get(k) != v for k, v in params.items()):
        raise UserError(f"experiment {name} exists with other params than the best trial's: remove it with "
                        f"`dvc exp remove {name}` and run --final again")
    if name not in known:
        report(f"final: {name} trains {shown(params)} on the whole training split, then scores the test split")
        experiments.queue(name, params)
        experiments.start_workers(jobs)
    while (experiment := known.get(name)) is None or experiment.state not in experiments.FINISHED:
        if experiment is not None and experiment.state == "queued":
            experiments.start_workers(jobs)
        known = wait_for_change()
    if experiment.state == "failed":
        raise UserError(f"the final experiment {name} failed: `dvc queue logs {name}` shows why; remove it "
                        f"with `dvc exp remove {name}` and run --final again")
    test = {}
    for model in models:
        values = experiment.metrics.get(f"metrics/{model}.json") or {}
        test[model] = {key: values.get(key) for key in TEST_KEYS}
    return {"experiment": name, "params": params, "test": test}


def trial_rows(trials: list[FrozenTrial], reasons: dict) -> list[dict]:
    """{experiment, params, value, state} of each trial, best first, unfinished and failed last."""
    rows = [{"experiment": t.user_attrs.get(EXPERIMENT), "params": t.params, "value": t.value,
             "state": {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed"}.get(t.state, "running"),
             "worker": t.user_attrs.get(WORKER),
             **({"failure": reasons[str(t.number)]} if str(t.number) in reasons else {})}
            for t in trials if not t.user_attrs.get(SURPLUS)]
    return sorted(rows, key=lambda r: (r["value"] is None, -(r["value"] or 0)))


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(study, models: list[str], final: dict | None) -> dict:
    """What `--json` prints."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials)
    out = {"trials": trial_rows(trials, failures(study)),
           "best": None if best is None else {"experiment": best.user_attrs.get(EXPERIMENT),
                                              "params": best.params, "value": best.value}}
    if final is not None:
        out["final"] = final
    return out


def text(result: dict, objective: str) -> str:
    """The trials as a table sorted by the objective, the best params and the final test numbers."""
    rows = [{"experiment": r["experiment"], **{k: _cell(v) for k, v in r["params"].items()},
             f"val top-1 ({objective})": "-" if r["value"] is None else f"{r['value']:.2f}",
             "state": r["state"]} for r in result["trials"]]
    lines = [pd.DataFrame(rows).to_string(index=False)]
    best = result["best"]
    if best is None:
        lines.append("no trial finished: `dvc queue logs <experiment>` shows why each failed")
    else:
        lines.append(f"best: {best['experiment']}, val top-1 {best['value']:.2f}%: {shown(best['params'])}")
    final = result.get("final")
    if final is not None:
        scores = "; ".join(f"{model} {v['top1']:.2f}% ({v['top1_low']:.2f}-{v['top1_high']:.2f}), "
                           f"top-5 {v['top5']:.2f}%"
                           for model, v in final["test"].items() if v.get("top1") is not None)
        lines.append(f"final: {final['experiment']} (val_size 0), test top-1 {scores}")
    return "\n".join(lines)

