"""The Optuna study behind a sweep: a SQLite file under sweeps/ (gitignored), one per --name.

The study is the sweep's memory: each trial's params and, in a user attribute, the name of the
DVC experiment that runs it. A driver that is killed and started again reads it back: finished
trials are kept, and a trial that was still running is looked up in DVC by that name.
"""
from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

import optuna

from src.errors import UserError
from src.tuning.space import Space

STUDIES = Path("sweeps")  # gitignored: the studies are local bookkeeping; experiments hold the results
SAMPLERS = ("tpe", "random", "grid")
_held = []  # the open lock files: closing one would release its lock


def lock(name: str) -> None:
    """An exclusive lock on the study `name` for this process's life (the OS drops it at exit,
    kill -9 included), so that two drivers never ask for the same trials."""
    STUDIES.mkdir(exist_ok=True)
    handle = (STUDIES / f"{name}.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"sweep {name} is already running in another process: wait for it, or give this "
                        "one another --name") from None
    _held.append(handle)


def head_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError("this is not a git repository with a commit: run the sweep from the project's root "
                        "(DVC experiments are based on a commit)")
    return result.stdout.strip()


def open_study(name: str, space: Space, sampler: str, seed: int) -> optuna.Study:
    """The study `name`, created or resumed; refuses to resume one of another space, sampler or
    commit (its trials would not be comparable, or not in `dvc exp show`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{STUDIES / name}.db")
    existing = optuna.get_all_study_names(storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    recorded = {"space": space.as_dict(), "sampler": sampler, "commit": head_commit()}
    if name not in existing:
        for key, value in recorded.items():
            study.set_user_attr(key, value)
    for key, value in recorded.items():
        if study.user_attrs.get(key) != value:
            raise UserError(_mismatch(name, key, study.user_attrs.get(key), value))
    # Seeded by the trials so far, so that a resumed sweep does not draw the first trials' params again.
    study.sampler = _sampler(sampler, space, seed + len(study.trials))
    return study


class _AskTellGrid(optuna.samplers.GridSampler):
    """Optuna's grid, asked and told: its after_trial stops the study once the grid is done, which
    only works inside study.optimize(); a sweep asks for no more trials than the grid holds."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def _sampler(name: str, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    if name == "grid":
        return _AskTellGrid(space.grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials still running count as bad guesses, so that trials queued together differ.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _mismatch(name: str, key: str, recorded, now) -> str:
    fix = f"start another sweep with --name, or delete {STUDIES / name}.db to start this one afresh"
    if key == "commit":
        return (f"sweep {name} began at commit {str(recorded)[:7]} and HEAD is now {now[:7]}: its trials are "
                f"experiments of that commit; `git checkout {str(recorded)[:7]}` to resume it, or {fix}")
    if key == "sampler":
        return f"sweep {name} was started with --sampler {recorded}, not {now}: {fix}"
    return f"sweep {name} was started with another SPACE.yaml (objective, val_size or space differ): {fix}"
