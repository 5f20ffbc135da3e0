"""The study a sweep keeps in Optuna's RDB storage: how a trial whose machine is lost is found
(its heartbeat stops) and run again once, how the study's budget counts when several drivers
share it, and how a bad --storage URL fails, with a real SQLite database and Optuna's own
heartbeat machinery. The same with PostgreSQL and two clones: test_sweep_cluster.py.
"""
from __future__ import annotations

import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from src.errors import UserError
from src.tuning import study as studies
from src.tuning import trials

STALE_AFTER_S = 2
SPACE = {"lr": FloatDistribution(0.01, 1.0, log=True)}


@pytest.fixture
def shared(tmp_path):
    """A study in a SQLite file with a 2-second grace period, and its stale-trial callback."""
    stale = trials.StaleTrials(STALE_AFTER_S)
    reports = []
    stale.report = reports.append
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'study.db'}", STALE_AFTER_S, stale)
    study = optuna.create_study(study_name="lr", storage=storage, direction="maximize")
    return study, storage, reports


def ask(study, storage, host: str) -> optuna.Trial:
    """What a driver on `host` does when it takes a trial: ask, a first heartbeat, its name."""
    with pytest.warns(UserWarning, match="Heartbeat of storage"):
        trial = study.ask(fixed_distributions=SPACE)
    storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr(trials.WORKER, {"host": host, "clone": "/scratch/project", "pid": 1})
    trial.set_user_attr(trials.EXPERIMENT, trials.trial_name("lr", trial.number))
    return trial


def fail_stale(study) -> None:
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)


def test_a_lost_trial_fails_after_the_grace_period_and_its_params_run_again_once(shared):
    study, storage, reports = shared
    lost = ask(study, storage, "node-a")
    alive = ask(study, storage, "node-b")
    fail_stale(study)
    assert study.trials[lost.number].state == TrialState.RUNNING  # within the grace period: nothing happens

    time.sleep(STALE_AFTER_S + 1)
    storage.record_heartbeat(alive._trial_id)  # node-b's driver beats; node-a's is gone
    fail_stale(study)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING], states
    retry = study.trials[2]
    assert retry.params == study.trials[lost.number].params
    reason = trials.failures(study)[str(lost.number)]
    assert "no heartbeat from node-a:/scratch/project (pid 1) for over 2 s" in reason, reason
    assert "run again as a new trial" in reason and reports == [f"trial 0 (lr-t0): {reason}"]

    budget = trials.Budget.of(study.trials)
    assert [t.number for t in budget.counted] == [1, 2]  # the lost trial is replaced by its retry
    assert budget.waiting == 1 and budget.done == 0 and budget.can_ask(total=2)
    fail_stale(study)  # a second driver looking later fails nothing more, and asks nothing again
    assert len(study.trials) == 3 and len(reports) == 1

    # The next driver to ask takes the waiting params first; if its machine is lost too, the
    # params are not run a third time: a failed trial.
    again = ask(study, storage, "node-b")
    assert again.number == 2 and again.params == lost.params
    time.sleep(STALE_AFTER_S + 1)
    storage.record_heartbeat(alive._trial_id)
    fail_stale(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    assert "already a retry: not run again" in trials.failures(study)["2"]
    budget = trials.Budget.of(study.trials)
    assert [t.number for t in budget.counted] == [1, 2] and budget.done == 1 and not budget.can_ask(total=2)


def test_the_budget_is_the_studys_and_a_trial_asked_beyond_it_is_surplus(shared):
    study, storage, _ = shared
    # Two drivers that each saw one trial left to ask, and asked at the same moment.
    first, second, third = (ask(study, storage, host) for host in ("node-a", "node-a", "node-b"))
    budget = trials.Budget.of(study.trials)
    assert not budget.is_surplus(first.number, total=2) and not budget.is_surplus(second.number, total=2)
    assert budget.is_surplus(third.number, total=2)
    third.set_user_attr(trials.SURPLUS, True)
    study.tell(third, state=TrialState.PRUNED)
    budget = trials.Budget.of(study.trials)
    assert len(budget.counted) == 2 and not budget.can_ask(total=2) and budget.unfinished == 2
    study.tell(first, 70.0)
    study.tell(second, state=TrialState.FAIL)
    assert trials.Budget.of(study.trials).done == 2


def test_a_trial_runs_here_only_on_the_clone_that_asked_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = trials.this_worker()
    mine = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={trials.WORKER: {**here, "pid": 1}})
    other_clone = optuna.trial.create_trial(state=TrialState.RUNNING,
                                            user_attrs={trials.WORKER: {**here, "clone": "/elsewhere"}})
    older = optuna.trial.create_trial(state=TrialState.RUNNING)  # a study from before workers were recorded
    assert [trials.runs_here(t) for t in (mine, other_clone, older)] == [True, False, True]


BAD_STORAGE = {
    "not-a-url": ("postgresql//sweeper:hunter2@db/sweeps", "--storage is not a database URL"),
    "unknown-database": ("oracle+nosuch://sweeper:hunter2@db/sweeps", "knows no database called 'oracle+nosuch'"),
    "missing-folder": ("sqlite:////nonexistent/folder/study.db", "the folder /nonexistent/folder does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_STORAGE))
def test_a_bad_storage_url_fails_in_one_line_without_its_password(case):
    url, message = BAD_STORAGE[case]
    with pytest.raises(UserError) as error:
        studies.open_storage(url, 60, trials.StaleTrials(60))
    text = str(error.value)
    assert message in text and "hunter2" not in text and "\n" not in text, text


def test_an_unreachable_server_fails_in_seconds_without_its_password(closed_port):
    url = f"postgresql://sweeper:hunter2@127.0.0.1:{closed_port}/sweeps"
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        studies.open_storage(url, 60, trials.StaleTrials(60))
    text = str(error.value)
    assert text.startswith(f"cannot open the study's storage postgresql://sweeper:***@127.0.0.1:{closed_port}/sweeps")
    assert "hunter2" not in text and "\n" not in text, text
    assert time.monotonic() - start < 60  # a refused connection is not waited on for minutes
