"""The trials of a sweep, each a named DVC experiment: asked of Optuna, queued, run by DVC's queue
workers, told back to Optuna with the objective read from the experiment's metrics.

One trial more than there are workers stays queued, so that a worker that finishes one starts the
next at once instead of waiting for the driver (Optuna's TPE counts queued trials as running).
The driver waits on cheap signals (git refs of finished experiments, the queue's result files)
and reads `dvc exp show --json` only when one changes, so that it takes no CPU from the trials.

Drivers on several clones (machines) may share one study: each asks its own trials of it (Optuna
hands each trial to one asker), records in each which clone and process runs it, and keeps a
heartbeat for the trials it runs. The budget (`--trials`) is the study's, not one driver's: a
driver asks a new trial only while the study has fewer, and a trial asked by two drivers at the
same moment beyond it is set aside (pruned, marked surplus) before anything runs. A driver with
nothing left to ask waits for the other drivers' trials, so that it can run again the params of a
trial whose machine was lost (its heartbeat stopped).
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from src import experiments
from src.errors import UserError
from src.experiments import Experiment
from src.tuning.space import VAL_SIZE_KEY, Space

EXPERIMENT = "experiment"  # the user attribute of a trial that names its DVC experiment
WORKER = "worker"  # the user attribute of a trial that names who runs it: {host, clone, pid}
SURPLUS = "surplus"  # the user attribute of a trial asked beyond the budget and never run
FAILURE = "failure-"  # study user attributes failure-<trial number>: why that trial failed
FAILURES = "failures"  # the same, as one dict, in studies of earlier versions
RESULTS = Path(".dvc/tmp/exps/celery/result")  # DVC's queue writes one file here per finished task
RESUMED = {"success": "it finished while no driver ran", "failed": "it failed while no driver ran",
           "running": "still running", "queued": "still queued", "never queued": "queued now (it never reached "
           "DVC's queue)"}
POLL_S, REFRESH_S = 1.0, 30.0  # seconds between cheap checks; at most this long between dvc exp shows
IDLE_S = 5.0  # seconds between looks at the study while this driver runs nothing
PATIENCE_S = 300.0  # how long `dvc exp show` may fail with DVC's passing errors before the sweep stops
MAX_RETRY = 1  # a lost trial's params run again once; a retry that is lost too is a failed trial


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


def this_worker() -> dict:
    """Who runs a trial: the machine, the clone on it, and the driver's process."""
    return {"host": socket.gethostname(), "clone": str(Path.cwd().resolve()), "pid": os.getpid()}


def runs_here(trial: FrozenTrial) -> bool:
    """Whether this clone runs `trial` (a trial of a study from before workers were recorded: yes)."""
    worker, here = trial.user_attrs.get(WORKER), this_worker()
    return worker is None or (worker.get("host"), worker.get("clone")) == (here["host"], here["clone"])


def where(trial: FrozenTrial) -> str:
    worker = trial.user_attrs.get(WORKER) or {}
    return f"{worker.get('host', '?')}:{worker.get('clone', '?')} (pid {worker.get('pid', '?')})"


def failures(study: optuna.Study) -> dict[str, str]:
    """{trial number: why it failed}: one study attribute per trial, so that drivers on several
    machines never overwrite each other's."""
    attrs = study.user_attrs
    return {**attrs.get(FAILURES, {}),
            **{key.removeprefix(FAILURE): value for key, value in attrs.items() if key.startswith(FAILURE)}}


def retry_history(trial: FrozenTrial) -> list[int]:
    """The lost trials whose params `trial` runs again, first the original (Optuna's
    RetryHeartbeatStaleTrialCallback.retry_history, read without its experimental warning)."""
    return list(trial.system_attrs.get("retry_history", []))


def record_failure(study: optuna.Study, number: int, reason: str) -> None:
    study.set_user_attr(f"{FAILURE}{number}", reason)


@dataclass(frozen=True)
class Budget:
    """The study's trials that count against `--trials`: all but the lost ones run again (each
    replaced by its retry) and the surplus ones."""
    counted: tuple[FrozenTrial, ...]

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> Budget:
        replaced = {n for t in trials for n in retry_history(t)}
        return cls(tuple(t for t in trials if t.number not in replaced and not t.user_attrs.get(SURPLUS)))

    @property
    def done(self) -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in self.counted)

    @property
    def waiting(self) -> int:
        """Params waiting for a driver: a lost trial's, to run again."""
        return sum(t.state == TrialState.WAITING for t in self.counted)

    @property
    def unfinished(self) -> int:
        return len(self.counted) - self.done

    def can_ask(self, total: int) -> bool:
        return bool(self.waiting) or len(self.counted) < total

    def is_surplus(self, number: int, total: int) -> bool:
        """Whether trial `number` is beyond the budget: the `total` lowest-numbered counted trials are in it."""
        numbers = sorted(t.number for t in self.counted)
        return number in numbers and numbers.index(number) >= total


class StaleTrials:
    """Optuna's callback for a trial whose heartbeat went stale (its machine lost, its driver
    killed): its params are asked again, once, and the study records why it failed."""

    def __init__(self, stale_after_s: int):
        self.stale_after_s = stale_after_s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        self.report: Callable[[str], None] = print

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            again = len(retry_history(trial)) < MAX_RETRY
            self.retry(study, trial)
        now = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}"
        reason = (f"no heartbeat from {where(trial)} for over {self.stale_after_s} s (machine lost or driver "
                  f"killed): failed at {now} by {this_worker()['host']}, "
                  + ("its params run again as a new trial" if again else "it was already a retry: not run again"))
        record_failure(study, trial.number, reason)
        self.report(f"trial {trial.number} ({trial.user_attrs.get(EXPERIMENT)}): {reason}")


class Heartbeat:
    """A thread that records a heartbeat, every `interval_s`, for the trials this driver runs."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval_s: float, trial_ids: Callable[[], list[int]]):
        self.storage, self.interval_s, self.trial_ids = storage, interval_s, trial_ids
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="sweep heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception:  # a passing database error: the next beat, within the grace period, may pass
            pass

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval_s):
            for trial_id in self.trial_ids():
                self.beat(trial_id)


class Driver:
    """Keeps `jobs` trials running and one queued until the study's `total` trials have finished."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, space: Space, sweep: str,
                 models: list[str], jobs: int, report: Callable[[str], None], on_finished: Callable[[], None],
                 push: str | None = None):
        self.study, self.storage, self.space, self.sweep = study, storage, space, sweep
        self.models, self.jobs, self.push, self.report, self.on_finished = models, jobs, push, report, on_finished
        self.pending: dict[int, str] = {}  # trial number -> experiment name
        self.trial_ids: dict[int, int] = {}  # trial number -> the storage's trial id (for heartbeats)
        self.unpushed: list[str] = []
        self.known: dict[str, Experiment] = {}
        self.heartbeat = Heartbeat(storage, storage.get_heartbeat_interval() or 60,
                                   lambda: [self.trial_ids[n] for n in list(self.pending) if n in self.trial_ids])

    def budget(self) -> Budget:
        return Budget.of(self.study.get_trials(deepcopy=False))

    def resume(self, known: dict[str, Experiment]) -> None:
        """This clone's trials left running by a driver that stopped: their experiments are
        waited for, or queued when DVC never got them (the driver died between asking and
        queueing). Trials of other clones are theirs (or, once stale, anyone's to run again)."""
        self.known = known
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not runs_here(trial):
                continue
            self._own(trial)
            name = trial.user_attrs.get(EXPERIMENT) or trial_name(self.sweep, trial.number)
            if name not in self.known:
                experiments.queue(name, trial_params(self.space, trial))
            self.pending[trial.number] = name
            state = self.known[name].state if name in self.known else "never queued"
            self.report(f"trial {trial.number} ({name}): resumed: {RESUMED.get(state, state)}")

    def _own(self, trial: FrozenTrial | optuna.Trial) -> None:
        """A heartbeat at once and this process as the trial's runner."""
        self.trial_ids[trial.number] = trial._trial_id
        self.heartbeat.beat(trial._trial_id)
        self.storage.set_trial_user_attr(trial._trial_id, WORKER, this_worker())

    def run(self, total: int) -> None:
        with self.heartbeat:
            self._run(total)
            self._push_again()

    def _run(self, total: int) -> None:
        started = bool(self.pending)
        if started:
            experiments.start_workers(self.jobs)
        while True:
            self.fail_stale()
            budget = self.budget()
            if not self.pending and not budget.can_ask(total) and not budget.unfinished:
                return
            queued = False
            while len(self.pending) < self.jobs + 1 and budget.can_ask(total):
                queued |= self.ask_and_queue(total)
                budget = self.budget()
                if queued and not started:  # the first trial trains while the next ones are queued
                    experiments.start_workers(self.jobs)
                    started = True
            if not self.pending:  # others' trials run: wait for them, in case one is lost
                time.sleep(IDLE_S)
                continue
            if queued:
                self.refresh()
            else:
                self.wait()
            self.collect()

    def fail_stale(self) -> None:
        """Fail the study's trials whose heartbeat is older than the grace period (Optuna's
        machinery; StaleTrials asks their params again)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def ask_and_queue(self, total: int) -> bool:
        """Ask the study for a trial (a lost trial's params first) and queue its experiment;
        False when it was asked beyond the budget (another driver asked at the same moment)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")  # ask and tell keep their own
            trial = self.study.ask(fixed_distributions=self.space.dimensions)
        self._own(trial)
        name = trial_name(self.sweep, trial.number)
        trial.set_user_attr(EXPERIMENT, name)
        if self.budget().is_surplus(trial.number, total):
            trial.set_user_attr(SURPLUS, True)
            self.study.tell(trial, state=TrialState.PRUNED)
            del self.trial_ids[trial.number]
            return False
        history = retry_history(self.storage.get_trial(trial._trial_id))
        retried = history[0] if history else None
        try:
            experiments.queue(name, trial_params(self.space, trial))
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        self.pending[trial.number] = name
        if retried is not None:
            self.report(f"trial {trial.number} ({name}): runs again the params of lost trial {retried}")
        return True

    def refresh(self) -> None:
        self.known = listing()

    def wait(self) -> None:
        """Until one of this clone's trials ends; meanwhile, every heartbeat interval, a look for
        other machines' lost trials."""
        self.known = wait_for_change(self.fail_stale, self.heartbeat.interval_s)

    def collect(self) -> None:
        """Tell Optuna about every pending trial whose experiment finished; restart DVC's workers
        if they stopped while trials are still queued."""
        states = {t.number: t.state for t in self.study.get_trials(deepcopy=False)}
        for number, name in list(self.pending.items()):
            experiment = self.known.get(name)
            if states.get(number) != TrialState.RUNNING:
                # Another driver failed it: this one sent no heartbeat for the grace period.
                self._drop(number)
                self.report(f"trial {number} ({name}): another driver failed it as lost (no heartbeat from here "
                            "for longer than --stale-after) and runs its params again; this clone's experiment "
                            f"{name} is left as it is")
            elif experiment is None:
                self._fail(number, name, "it is no longer in DVC's queue (removed with `dvc queue remove`?)")
            elif experiment.state == "failed":
                self._fail(number, name, f"`dvc queue logs {name}` shows why")
            elif experiment.state == "success":
                value = objective(self.space, experiment, self.models)
                if isinstance(value, str):
                    self._fail(number, name, value)
                else:
                    self.study.tell(number, value)
                    self._drop(number)
                    params = self.study.get_trials(deepcopy=False)[number].params
                    self.report(f"trial {number} ({name}): val top-1 {value:.2f}% ({shown(params)})")
                    self._push(name)
                    self.on_finished()
        states = [self.known[name].state for name in self.pending.values() if name in self.known]
        if "queued" in states and states.count("running") < self.jobs:
            experiments.start_workers(self.jobs)

    def _drop(self, number: int) -> None:
        del self.pending[number]
        self.trial_ids.pop(number, None)

    def _fail(self, number: int, name: str, reason: str) -> None:
        record_failure(self.study, number, reason)
        self.study.tell(number, state=TrialState.FAIL)
        self._drop(number)
        self.report(f"trial {number} ({name}): failed: {reason}")
        self.on_finished()

    def _push(self, name: str) -> None:
        """`dvc exp push` of a finished trial, when the sweep shares its experiments."""
        if self.push is None:
            return
        try:
            experiments.push(self.push, [name])
        except UserError as error:
            self.unpushed.append(name)
            self.report(f"{name}: not pushed yet ({error}); tried again at the end")

    def _push_again(self) -> None:
        if self.push is None or not self.unpushed:
            return
        names, self.unpushed = self.unpushed, []
        try:
            experiments.push(self.push, names)
        except UserError as error:
            raise UserError(f"{error}: the trials' experiments are in this clone; push them by hand with "
                            f"`dvc exp push {self.push} {' '.join(names)}`") from None


def shown(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def wait_for_change(tick: Callable[[], None] | None = None, tick_s: float = REFRESH_S) -> dict[str, Experiment]:
    """Until a task of DVC's queue ends (or REFRESH_S passes), calling `tick` every `tick_s`
    meanwhile: then HEAD's experiments by name."""
    now = time.monotonic()
    before, deadline, next_tick = _fingerprint(), now + REFRESH_S, now + tick_s
    while _fingerprint() == before and time.monotonic() < deadline:
        time.sleep(POLL_S)
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + tick_s
    return listing()


def listing() -> dict[str, Experiment]:
    """HEAD's experiments by name, waiting out DVC's passing failures while its workers run."""
    return experiments.by_name(experiments.exp_show(patience_s=PATIENCE_S))


def _fingerprint() -> tuple:
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                          capture_output=True, text=True).stdout
    results = sorted(os.listdir(RESULTS)) if RESULTS.is_dir() else []
    return refs, tuple(results)
