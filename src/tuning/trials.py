"""The trials of a sweep, each a named DVC experiment: asked of Optuna, queued, run by DVC's queue
workers, told back to Optuna with the objective read from the experiment's metrics.

One trial more than there are workers stays queued, so that a worker that finishes one starts the
next at once instead of waiting for the driver (Optuna's TPE counts queued trials as running).
The driver waits on cheap signals (git refs of finished experiments, the queue's result files)
and reads `dvc exp show --json` only when one changes, so that it takes no CPU from the trials.
"""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from src import experiments
from src.experiments import Experiment
from src.tuning.space import VAL_SIZE_KEY, Space

EXPERIMENT = "experiment"  # the user attribute of a trial that names its DVC experiment
FAILURES = "failures"  # the study's user attribute: {trial number: why it failed}
RESULTS = Path(".dvc/tmp/exps/celery/result")  # DVC's queue writes one file here per finished task
RESUMED = {"success": "it finished while no driver ran", "failed": "it failed while no driver ran",
           "running": "still running", "queued": "still queued", "never queued": "queued now (it never reached "
           "DVC's queue)"}
POLL_S, REFRESH_S = 1.0, 30.0  # seconds between cheap checks; at most this long between dvc exp shows
PATIENCE_S = 300.0  # how long `dvc exp show` may fail with DVC's passing errors before the sweep stops


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-t{number}"


def trial_params(space: Space, trial: FrozenTrial | optuna.Trial) -> dict:
    """The -S overrides of a trial: its searched params and the val split."""
    return {VAL_SIZE_KEY: space.val_size, **trial.params}


def objective(space: Space, experiment: Experiment, models: list[str]) -> float | str:
    """The trial's value (val top-1, %), or why there is none."""
    values = []
    for model in space.models(models):
        val = val_top1(experiment, model)
        if val is None:
            return f"its metrics/{model}.json has no val.top1 (was data.val_size set?)"
        values.append(val)
    return sum(values) / len(values)


def val_top1(experiment: Experiment, model: str) -> float | None:
    """`val.top1` of `model` in the experiment's metrics, or None."""
    value = (experiment.metrics.get(f"metrics/{model}.json") or {}).get("val", {}).get("top1")
    return float(value) if isinstance(value, (int, float)) else None


class Driver:
    """Keeps `jobs` trials running and one queued until `total` trials have finished."""

    def __init__(self, study: optuna.Study, space: Space, sweep: str, models: list[str], jobs: int,
                 report: Callable[[str], None], on_finished: Callable[[], None]):
        self.study, self.space, self.sweep, self.models, self.jobs = study, space, sweep, models, jobs
        self.report, self.on_finished = report, on_finished
        self.pending: dict[int, str] = {}  # trial number -> experiment name
        self.known: dict[str, Experiment] = {}

    def finished(self) -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in self.study.get_trials(deepcopy=False))

    def resume(self, known: dict[str, Experiment]) -> None:
        """Trials left running by a driver that stopped: their experiments are waited for, or
        queued when DVC never got them (the driver died between asking and queueing)."""
        self.known = known
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            name = trial.user_attrs.get(EXPERIMENT) or trial_name(self.sweep, trial.number)
            if name not in self.known:
                experiments.queue(name, trial_params(self.space, trial))
            self.pending[trial.number] = name
            state = self.known[name].state if name in self.known else "never queued"
            self.report(f"trial {trial.number} ({name}): resumed: {RESUMED.get(state, state)}")

    def run(self, total: int) -> None:
        started = bool(self.pending)
        if started:
            experiments.start_workers(self.jobs)
        while self.pending or self.finished() < total:
            queued = False
            while self.finished() + len(self.pending) < total and len(self.pending) < self.jobs + 1:
                self.ask_and_queue()
                queued = True
                if not started:  # the first trial trains while the next ones are queued
                    experiments.start_workers(self.jobs)
                    started = True
            if queued or not self.pending:
                self.refresh()
            else:
                self.wait()
            self.collect()

    def ask_and_queue(self) -> None:
        trial = self.study.ask(fixed_distributions=self.space.dimensions)
        name = trial_name(self.sweep, trial.number)
        trial.set_user_attr(EXPERIMENT, name)
        try:
            experiments.queue(name, trial_params(self.space, trial))
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        self.pending[trial.number] = name

    def refresh(self) -> None:
        self.known = listing()

    def wait(self) -> None:
        self.known = wait_for_change()

    def collect(self) -> None:
        """Tell Optuna about every pending trial whose experiment finished; restart DVC's workers
        if they stopped while trials are still queued."""
        for number, name in list(self.pending.items()):
            experiment = self.known.get(name)
            if experiment is None:
                self._fail(number, name, "it is no longer in DVC's queue (removed with `dvc queue remove`?)")
            elif experiment.state == "failed":
                self._fail(number, name, f"`dvc queue logs {name}` shows why")
            elif experiment.state == "success":
                value = objective(self.space, experiment, self.models)
                if isinstance(value, str):
                    self._fail(number, name, value)
                else:
                    self.study.tell(number, value)
                    del self.pending[number]
                    params = self.study.get_trials(deepcopy=False)[number].params
                    self.report(f"trial {number} ({name}): val top-1 {value:.2f}% ({shown(params)})")
                    self.on_finished()
        states = [self.known[name].state for name in self.pending.values() if name in self.known]
        if "queued" in states and states.count("running") < self.jobs:
            experiments.start_workers(self.jobs)

    def _fail(self, number: int, name: str, reason: str) -> None:
        self.study.set_user_attr(FAILURES, {**self.study.user_attrs.get(FAILURES, {}), str(number): reason})
        self.study.tell(number, state=TrialState.FAIL)
        del self.pending[number]
        self.report(f"trial {number} ({name}): failed: {reason}")
        self.on_finished()


def shown(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def wait_for_change() -> dict[str, Experiment]:
    """Until a task of DVC's queue ends (or REFRESH_S passes): then HEAD's experiments by name."""
    before, deadline = _fingerprint(), time.monotonic() + REFRESH_S
    while _fingerprint() == before and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return listing()


def listing() -> dict[str, Experiment]:
    """HEAD's experiments by name, waiting out DVC's passing failures while its workers run."""
    return experiments.by_name(experiments.exp_show(patience_s=PATIENCE_S))


def _fingerprint() -> tuple:
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                          capture_output=True, text=True).stdout
    results = sorted(os.listdir(RESULTS)) if RESULTS.is_dir() else []
    return refs, tuple(results)
