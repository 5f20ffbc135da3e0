"""The Optuna study behind a sweep, in any database Optuna's RDB storage speaks: by default a
SQLite file under sweeps/ (gitignored), one per --name; with `--storage URL` a PostgreSQL or
MySQL database that the sweep's processes on several machines share.

The study is the sweep's memory: each trial's params, the name of the DVC experiment that runs it
and the process that runs it (user attributes). A driver that is killed and started again reads it
back: finished trials are kept, and a trial it was still running is looked up in DVC by that name.
Each driver records a heartbeat for the trials it runs (Optuna's heartbeat); a trial whose
heartbeat is older than the grace period is failed by whichever driver sees it first and its
params are asked again, once (Optuna's RetryHeartbeatStaleTrialCallback).
"""
from __future__ import annotations

import fcntl
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from src.errors import UserError
from src.tuning.space import Space
from src.tuning.trials import this_worker

STUDIES = Path("sweeps")  # gitignored: the studies are local bookkeeping; experiments hold the results
SAMPLERS = ("tpe", "random", "grid")
DEFAULT_STALE_AFTER_S = 300  # a trial without a heartbeat for this long is run again elsewhere
SCHEMA_ATTEMPTS = 5  # tries to open a storage whose tables another driver is creating at that moment
HEARTBEATS_PER_GRACE = 5  # heartbeats sent within one grace period: a slow one or two do not fail a trial
DRIVERS = {"postgresql": "psycopg[binary] (requirements.txt)", "mysql": "PyMySQL (pip install PyMySQL)"}
_held = []  # the open lock files: closing one would release its lock


def default_storage(name: str) -> str:
    return f"sqlite:///{STUDIES / name}.db"


def is_default(url: str, name: str) -> bool:
    return url == default_storage(name)


def lock(name: str) -> None:
    """An exclusive lock on the sweep `name` in this clone for this process's life (the OS drops it
    at exit, kill -9 included), so that two drivers of one clone never share one DVC queue."""
    STUDIES.mkdir(exist_ok=True)
    handle = (STUDIES / f"{name}.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"sweep {name} is already running in another process of this clone: wait for it, or give "
                        "this one another --name (to add workers, start it on another clone or machine)") from None
    _held.append(handle)


def masked(url: str) -> str:
    """The storage URL as it may be printed: its password replaced by ***."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the --storage URL"  # not a URL: any part of it might be a secret


def _scrub(text: str, url: str) -> str:
    password = None
    try:
        password = sqlalchemy.engine.make_url(url).password
    except Exception:
        pass
    text = text.replace(url, masked(url))
    return text.replace(str(password), "***") if password else text


def open_storage(url: str, stale_after_s: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url`, reached once now: a malformed or unreachable URL fails here,
    in one line, before anything runs, and without its password."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise UserError("--storage is not a database URL: give one Optuna's RDB storage takes, e.g. "
                        "postgresql://user:password@host/database, mysql://user@host/database or "
                        "sqlite:///path/to/study.db") from None
    if parsed.drivername.startswith("sqlite"):
        folder = Path(parsed.database or ".").parent
        if parsed.database and not folder.is_dir():
            raise UserError(f"--storage {masked(url)}: the folder {folder} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _rdb_storage(url, parsed, stale_after_s, on_stale)
        except ModuleNotFoundError as error:
            driver = DRIVERS.get(parsed.get_backend_name(), f"the Python driver {error.name}")
            raise UserError(f"--storage {masked(url)}: no driver for {parsed.get_backend_name()} "
                            f"in this environment: install {driver}") from None
        except sqlalchemy.exc.NoSuchModuleError:
            raise UserError(f"--storage {masked(url)}: SQLAlchemy knows no database called "
                            f"{parsed.drivername!r}: use postgresql://, mysql:// or sqlite:///") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()
            reason = _scrub(reason[0] if reason else type(error).__name__, url)
            raise UserError(f"cannot open the study's storage {masked(url)} ({reason}): check the host, port, "
                            "user, password and database, and that this machine can reach it") from None


def _rdb_storage(url: str, parsed, stale_after_s: int, on_stale) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; drivers that start at the same moment on a fresh database race to
    create its tables, and the losers find them made when they try again."""
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(parsed), grace_period=stale_after_s,
                heartbeat_interval=max(1, stale_after_s // HEARTBEATS_PER_GRACE),
                heartbeat_stale_trial_callback=on_stale)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _engine_kwargs(parsed) -> dict:
    """A short connect timeout, so that an unreachable server fails in seconds, not minutes."""
    if parsed.get_backend_name() in ("postgresql", "mysql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def head_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError("this is not a git repository with a commit: run the sweep from the project's root "
                        "(DVC experiments are based on a commit)")
    return result.stdout.strip()


def open_study(name: str, storage: optuna.storages.RDBStorage, url: str, space: Space, sampler: str,
               seed: int) -> optuna.Study:
    """The study `name`, created or resumed; refuses to resume one of another space, sampler or
    commit (its trials would not be comparable, or not in `dvc exp show`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    recorded = {"space": space.as_dict(), "sampler": sampler, "commit": head_commit()}
    # What the study was started with: the first driver records it. Drivers that start together
    # may all record it; read back, only the values written last pass.
    for key, value in recorded.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    for key, value in recorded.items():
        if study.user_attrs.get(key) != value:
            raise UserError(_mismatch(name, url, key, study.user_attrs.get(key), value))
    # Seeded by the trials so far, so that a resumed sweep does not draw the first trials' params
    # again, and, in a shared study, by the clone, so that drivers started together draw apart.
    study.sampler = _sampler(sampler, space, seed + len(study.trials) + _clone_salt(url, name))
    return study


def _clone_salt(url: str, name: str) -> int:
    """0 for the default, local study; a number of this machine and clone for a shared one."""
    if is_default(url, name):
        return 0
    worker = this_worker()
    return zlib.crc32(f"{worker['host']}:{worker['clone']}".encode())


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


def _mismatch(name: str, url: str, key: str, recorded, now) -> str:
    if is_default(url, name):
        fix = f"start another sweep with --name, or delete {STUDIES / name}.db to start this one afresh"
    else:
        fix = (f"start another sweep with --name, or delete the study with `optuna delete-study --study-name {name} "
               f"--storage URL` to start it afresh")
    if key == "commit":
        return (f"sweep {name} began at commit {str(recorded)[:7]} and HEAD is now {now[:7]}: its trials are "
                f"experiments of that commit; `git checkout {str(recorded)[:7]}` to resume it, or {fix}")
    if key == "sampler":
        return f"sweep {name} was started with --sampler {recorded}, not {now}: {fix}"
    return f"sweep {name} was started with another SPACE.yaml (objective, val_size or space differ): {fix}"
