"""DVC's experiment queue, waited on as a user would: its result files, then `dvc queue status`."""
from __future__ import annotations

import time

from helpers.commands import ok
from helpers.project import Project
from src.tuning.trials import RESULTS as QUEUE_RESULTS


def wait_until_queue_idle(project: Project, timeout: float, poll_s: float = 5) -> str:
    """Ask `dvc queue status` every `poll_s` seconds (each call costs seconds of CPU, taken from the
    tasks on the same cores) until nothing is queued or running; return that status."""
    deadline = time.monotonic() + timeout
    while True:
        status = project.dvc("queue", "status")
        # It fails now and then while a worker writes a task's files ("Expecting value"): ask again.
        if status.returncode == 0 and not any(word in status.stdout for word in ("Queued", "Running")):
            return status.stdout
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(poll_s)


def run_queue(project: Project, jobs: int, expected: int, timeout: float, tasks: int | None = None) -> str:
    """`dvc queue start -j jobs` for the `tasks` queued (default: `expected`), wait until nothing
    is queued or running; assert `expected` tasks succeeded in all (`dvc queue status` lists the
    earlier ones too) and return the last `dvc queue status`."""
    def ended() -> int:  # the files DVC's queue writes as each task ends, as the sweep driver reads them
        results = project.root / QUEUE_RESULTS
        return len(list(results.iterdir())) if results.is_dir() else 0

    target = ended() + (expected if tasks is None else tasks)
    ok(project.dvc("queue", "start", "-j", str(jobs)))
    deadline = time.monotonic() + timeout
    while ended() < target and time.monotonic() < deadline:  # no process started: first these files
        time.sleep(1)
    status = wait_until_queue_idle(project, max(deadline - time.monotonic(), 0))  # then DVC's own word
    assert status.count("Success") == expected, status
    return status
