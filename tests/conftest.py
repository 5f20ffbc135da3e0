"""The suite's configuration: thread shares, fixture modules, tiers and the order of files.

Nothing here mocks DVC, torch or the stages: tests run the real stage scripts and the real `dvc`
in temporary copies of the working tree (tests/helpers/, tests/fixtures/).
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

# Each test process, and every command it starts (stages, dvc and its queue workers, torchrun's
# ranks), does its math on its share of the cores, as src.sweep gives DVC's queue workers theirs:
# pytest-xdist runs one process per core, and torch's default of one OpenMP thread per core in each
# of them oversubscribes the cores. Set before numpy and torch are imported: both read it then. A
# run in one process (-n 0) keeps torch's default.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a test process of pytest-xdist (not its controller)
    from src.experiments import worker_env
    os.environ.update(worker_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest  # noqa: E402

from fixtures.timings import TIMINGS  # noqa: E402

pytest_plugins = ["fixtures.data", "fixtures.servers", "fixtures.postgres", "fixtures.projects",
                  "fixtures.evaluated"]

# A test that uses one of these runs stages, dvc, a server or training (or drives a browser), so it
# carries the marks without a mark of its own; a module whose tests start such work some other way
# says so with `pytestmark`.
MARKS_BY_FIXTURE = {
    **{name: ("slow",) for name in ("http_server", "downloaded", "prepared", "trained", "evaluated",
                                    "trained_tiny", "project_copy", "stage_copy", "genuine_archive",
                                    "postgres")},
    "browser": ("slow", "browser"),  # test_app.py's and test_plots_page.py's chromium
}
# Seconds per test file, as measured (tests/durations.json; refresh it with
# scripts/suite_durations.py): pytest-xdist hands out whole files (--dist loadfile,
# --no-loadscope-reorder in pytest.ini) in collection order, so the longest go first, or a long
# file handed out last runs on alone after the rest.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marks = {mark for name in getattr(item, "fixturenames", ()) for mark in MARKS_BY_FIXTURE.get(name, ())}
        for mark in sorted(marks):
            item.add_marker(mark)
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -seconds.get(item.path.name, 0))  # stable: the rest keep their order


# SUITE_CPU_PROFILE=FILE: each test's wall seconds and CPU seconds (this process plus the commands
# it waited for), one JSON line per test, appended by every xdist worker: where the suite's time goes
# on a machine whose two cores the workers share, which wall times alone do not say.
_PROFILE = os.environ.get("SUITE_CPU_PROFILE")


def _cpu_seconds() -> float:
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _PROFILE:
        yield
        return
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    with open(_PROFILE, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "wall": round(time.perf_counter() - wall, 1),
                            "cpu": round(_cpu_seconds() - cpu, 1),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}) + "\n")


def pytest_terminal_summary(terminalreporter):
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f} s")
