"""Shared fixtures: a generated CIFAR-100 archive, a loopback HTTP server, project copies.

Nothing here mocks DVC, torch or the stages: tests run the real stage scripts
and the real `dvc` in temporary copies of the working tree.
"""
from __future__ import annotations

import functools
import json
import re
import http.server
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Each test process, and every command it starts (stages, dvc and its queue workers, torchrun's
# ranks), does its math on its share of the cores, as src.sweep gives DVC's queue workers theirs:
# pytest-xdist runs one process per core, and torch's default of one OpenMP thread per core in each
# of them oversubscribes the cores. A third process (one thread each) made the suite slower: the
# tests it had finished after 13 minutes had taken two processes 9 (2026-12-03). Set before numpy
# and torch are imported: both read it then. A run in one process (-n 0) keeps torch's default.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a test process of pytest-xdist (not its controller)
    from src.experiments import worker_env
    os.environ.update(worker_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import numpy as np
import pytest
from filelock import FileLock
import torch
import yaml

import cifar_archive as ca
from project_copy import copy_tracked_files, remove_models
from src.params import load_params
from src.tuning.trials import RESULTS as QUEUE_RESULTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GENUINE_PARTS = sorted((SHARED / "cifar100").glob("cifar-100-python.tar.gz.part*"))
GENUINE_MD5 = "9c600102c9dd81479547f7fbb69f9571"
BIN_DIR = Path(sys.executable).parent  # the venv's python and dvc
ARCHIVE_NAME = "cifar-100-python.tar.gz"
# The models, as every stage and command takes them: the model.<name> blocks of params.yaml.
_PARAMS = load_params(ROOT / "params.yaml")
MODELS = tuple(_PARAMS.model.names)
ARCHITECTURES = {name: _PARAMS.recipe(name).architecture() for name in MODELS}  # what build_model takes

_timings: dict[str, float] = {}


def build_model(name: str, **options):
    """The model `name` of params.yaml as the train stage builds it (src.models.build)."""
    from src.models.build import build_model as build
    return build(ARCHITECTURES[name], **options)


# --------------------------------------------------------------------------- commands

def run_cmd(args: list[str | os.PathLike], cwd: str | os.PathLike, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command with the venv's python and dvc first on PATH; capture text output."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=command_env(env), capture_output=True,
                          text=True, timeout=timeout)


def start_cmd(args: list[str | os.PathLike], cwd: str | os.PathLike, env: dict | None = None) -> subprocess.Popen:
    """Start a command as run_cmd would, with stdout and stderr merged into one text pipe."""
    return subprocess.Popen([str(a) for a in args], cwd=cwd, env=command_env(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def command_env(env: dict | None = None) -> dict:
    full_env = {
        **os.environ,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    full_env.pop("PYTHONPATH", None)  # the stages import src/ from the copy, not from here
    return full_env


def assert_equal_arrays(actual: np.ndarray, expected: np.ndarray, what: str = "arrays") -> None:
    """Same shape, dtype kind and values; fast on 150 MB (np.testing's version takes seconds)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    equal = actual == expected
    if not equal.all():
        wrong = np.argwhere(~equal)
        raise AssertionError(f"{what}: {len(wrong)} elements differ, first at index "
                             f"{tuple(wrong[0])}: {actual[tuple(wrong[0])]} != {expected[tuple(wrong[0])]}")


# --------------------------------------------------------------------------- archive

@dataclass
class Archive:
    path: Path
    md5: str
    entries: dict  # {'train', 'test', 'meta'}: the entries pickled into the members
    seconds: float  # time it took to generate and write

    def expected(self, split: str) -> dict:
        return ca.expected_arrays(self.entries[split])


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory) -> Archive:
    """A full-size (50,000 + 10,000) archive in the official format, built once per session.

    Its path and md5, plus the entries pickled into it (to compare outputs with).
    """
    start = time.perf_counter()
    entries = ca.make_cifar_images(seed=0)
    path = tmp_path_factory.mktemp("cifar") / ARCHIVE_NAME
    md5 = ca.write_archive(path, **entries)
    seconds = time.perf_counter() - start
    _timings["cifar_archive (generate + write full-size archive)"] = seconds
    return Archive(path, md5, entries, seconds)


# The longest files go first, longest first: pytest-xdist hands out whole files (--dist loadfile,
# --no-loadscope-reorder in pytest.ini) in collection order, so a long file handed out last runs on
# alone after the rest. Measured with SUITE_CPU_PROFILE on the 2-core CI run (seconds of wall time per
# file, 2026-12-03, cb4c7bf, two processes): e2e 582 (it built the trained tiny project), distributed
# 459, sweep 403, compare 293, add_model 196, queue 194, faults 131, app 129, evaluate 128,
# recipe_options 101, classify 93, dvc_train 92, plots_page 77, remote 74, batch_augment 66, every
# other file under 64. The rest keep their order.
LONG_FILES = ("test_pipeline_e2e.py", "test_distributed.py", "test_sweep.py", "test_compare.py", "test_add_model.py",
              "test_queue.py", "test_faults.py", "test_app.py", "test_evaluate.py", "test_recipe_options.py",
              "test_classify.py", "test_dvc_train.py", "test_plots_page.py", "test_remote.py", "test_batch_augment.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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
    for name, seconds in _timings.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f} s")


# --------------------------------------------------------------------------- HTTP server

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files (404 when missing); /truncated/<name> promises the whole file, sends half."""

    protocol_version = "HTTP/1.0"  # one request per connection: closing it ends the body

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        prefix = "/truncated/"
        if not self.path.startswith(prefix):
            return super().do_GET()
        file = Path(self.directory) / self.path[len(prefix):]
        if not file.is_file():
            return self.send_error(404, "File not found")
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@dataclass
class HttpServer:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def truncated_url(self, name: str) -> str:
        """A response whose Content-Length is the file's size but which sends only half."""
        return f"http://127.0.0.1:{self.port}/truncated/{name}"

    def publish(self, path: Path, name: str | None = None) -> str:
        """Serve `path` (hard-linked, or copied) under `name`; return its URL."""
        target = self.root / (name or path.name)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        return self.url(target.name)


@pytest.fixture(scope="session")
def http_server(tmp_path_factory) -> HttpServer:
    """A static file server on 127.0.0.1 (free port) over a temporary folder."""
    root = tmp_path_factory.mktemp("http_root")
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- project copies

@dataclass
class Project:
    """A copy of the working tree in a temporary folder, to run stages and dvc in."""
    root: Path
    env: dict = field(default_factory=dict)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Set dotted keys in params.yaml, e.g. set_params({"data.url": url, "seed": 1})."""
        params = self.params()
        for key, value in {**(values or {}), **kwargs}.items():
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(self, *args: str | os.PathLike, timeout: float = 600) -> subprocess.CompletedProcess:
        return run_cmd(list(args), cwd=self.root, env=self.env, timeout=timeout)

    def stage(self, name: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`python -m stages.<name>`, as dvc.yaml runs it, without dvc."""
        return self.run(sys.executable, "-m", f"stages.{name}", timeout=timeout)

    def dvc(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run(BIN_DIR / "dvc", *args, timeout=timeout)

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("git", "-c", "user.name=pytest", "-c", "user.email=pytest@localhost",
                        "-c", "commit.gpgsign=false", *args)

    def files_under(self, folder: str) -> list[Path]:
        """Every file and folder below `folder` (empty when it is absent)."""
        path = self.root / folder
        return sorted(path.rglob("*")) if path.exists() else []

    def link_raw_from(self, other: "Project") -> None:
        """Share another copy's data/raw (hard links: stages only read it)."""
        raw = self.root / "data" / "raw"
        raw.mkdir(parents=True)
        for file in (other.root / "data" / "raw").iterdir():
            os.link(file, raw / file.name)


def copy_working_tree(dest: Path, git: bool = True) -> Project:
    """Copy tracked and untracked-but-not-ignored files of the repo to `dest`; git-init it."""
    copy_tracked_files(dest)
    site_cache = dest.parent / f"{dest.name}-dvc-site-cache"
    site_cache.mkdir(exist_ok=True)
    project = Project(dest, env={"DVC_SITE_CACHE_DIR": str(site_cache)})
    if git:
        project.git("init", "-q")
        project.git("add", "-A")
        result = project.git("commit", "-q", "-m", "copy of the working tree")
        assert result.returncode == 0, result.stderr
    return project


@pytest.fixture
def project_copy(tmp_path) -> Project:
    """A temporary git repository holding a copy of the working tree (dvc repro can run in it)."""
    return copy_working_tree(tmp_path / "project", git=True)


@pytest.fixture
def stage_copy(tmp_path) -> Project:
    """A copy of the working tree without git: enough to run a stage script directly."""
    return copy_working_tree(tmp_path / "project", git=False)


@pytest.fixture(scope="session")
def downloaded(tmp_path_factory, cifar_archive, http_server):
    """A project copy where the download stage fetched the generated archive over HTTP.

    Returns (project, url, CompletedProcess). Other copies share its data/raw.
    """
    project = copy_working_tree(tmp_path_factory.mktemp("downloaded") / "project", git=False)
    url = http_server.publish(cifar_archive.path)
    project.set_params({"data.url": url, "data.md5": cifar_archive.md5})
    start = time.perf_counter()
    result = project.stage("download")
    _timings["download stage on the full-size archive over HTTP"] = time.perf_counter() - start
    return project, url, result


def concatenate_genuine(dest: Path) -> Path:
    """The genuine archive (from /work/shared/cifar100 parts) as one file at `dest`."""
    with dest.open("wb") as out:
        for part in GENUINE_PARTS:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return dest


@pytest.fixture(scope="session")
def genuine_archive(tmp_path_factory) -> Path:
    """The genuine CIFAR-100 archive, or a skip when its parts are not in ../shared/cifar100."""
    if not GENUINE_PARTS:
        pytest.skip(f"the genuine CIFAR-100 archive is not available ({SHARED / 'cifar100'} "
                    "has no cifar-100-python.tar.gz.part* files)")
    path = concatenate_genuine(tmp_path_factory.mktemp("genuine") / ARCHIVE_NAME)
    md5 = ca.md5sum(path)
    assert md5 == GENUINE_MD5, f"{SHARED / 'cifar100'} parts concatenate to md5 {md5}"
    return path


# --------------------------------------------------------------------------- whole pipelines

TINY = {  # the whole pipeline through DVC in about half a minute on two CPU cores
    "data.train_limit": 400, "data.test_limit": 200, "model.width": 2, "epochs": 1,
    "batch_size": 100, "lr": 0.1, "runtime.workers": 0,
}


def tiny_repo(path: Path, archive: "Archive", server: "HttpServer") -> Project:
    """A git copy of the working tree with TINY params and the generated archive on loopback."""
    project = copy_working_tree(path, git=True)
    project.set_params({**TINY, "data.url": server.publish(archive.path), "data.md5": archive.md5})
    return project


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, worker_id, cifar_archive, http_server) -> Project:
    """A committed tiny project after a whole `dvc repro` (2 epochs: curves of more than one point),
    made once per test session, by the first test process that asks (the others wait for it under
    a file lock): files that start from a trained pipeline copy it (`copy_project`) rather than each
    paying the seven stages again. Nothing changes it in place. Its data.url is the builder's
    server; the copies never download again (only params changes would re-run that stage).

    That first repro runs with a fresh HOME and TMPDIR (`outside/`), and its output is kept in
    `first-repro.log`, beside the project: what the first repro of a new clone does."""
    # pytest-xdist's processes share the parent of their own temporary folders (pytest-N).
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    folder = shared / "trained-tiny"
    done = folder / "done"  # the project's environment, written once it is built
    with FileLock(f"{folder}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            project = tiny_repo(folder / "project", cifar_archive, http_server)
            project.set_params({"epochs": 2})
            outside = {"HOME": folder / "outside" / "home", "TMPDIR": folder / "outside" / "tmp"}
            for path in outside.values():
                path.mkdir(parents=True)
            first = ok(run_cmd([BIN_DIR / "dvc", "repro"], project.root,
                               env={**project.env, **{key: str(path) for key, path in outside.items()}}))
            (folder / "first-repro.log").write_text(first.stdout + first.stderr)
            ok(project.git("add", "-A"))
            ok(project.git("commit", "-q", "-m", "trained: the tiny pipeline"))
            done.write_text(json.dumps(project.env))
    return Project(folder / "project", env=json.loads(done.read_text()))


def copy_project(project: Project, dest: Path) -> Project:
    """A copy of `project` at `dest`: git history, DVC cache and outputs, with a site cache of its
    own (DVC's per-repository state, such as its index, is keyed by the path) and none of .dvc/tmp."""
    shutil.copytree(project.root, dest, symlinks=True, ignore=lambda folder, names:
                    ["tmp"] if Path(folder) == project.root / ".dvc" else [])
    site_cache = dest.parent / f"{dest.name}-dvc-site-cache"
    site_cache.mkdir(exist_ok=True)
    return Project(dest, env={**project.env, "DVC_SITE_CACHE_DIR": str(site_cache)})


def keep_models(project: Project, names: list[str]) -> None:
    """Remove every other model from a project copy, as README "Add a model" adds one (its
    params block and reference, its train stage, its evaluate dep): a pipeline of `names` only."""
    params, pipeline = project.params(), yaml.safe_load((project.root / "dvc.yaml").read_text())
    remove_models(params, pipeline, names)
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def drop_report(project: Project) -> None:
    """Remove the report stage from a project copy: for tests that read metrics only (each run of
    the pipeline is then a process start, seconds of imports, shorter)."""
    pipeline = yaml.safe_load((project.root / "dvc.yaml").read_text())
    del pipeline["stages"]["report"]
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, after asserting it succeeded (with the tail of its output as the message)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


TRAIN_STAGES = {f"train-{name}" for name in MODELS}


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


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


# --------------------------------------------------------------------------- training

SMALL = {  # a few seconds per training run on two CPU cores
    "data.train_limit": 1000, "data.test_limit": 300, "model.width": 4, "epochs": 3,
    "batch_size": 64, "lr": 0.2, "train.warmup_epochs": 1, "runtime.workers": 1,
}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, downloaded):
    """A project copy with small params whose augment stage has run."""
    project = copy_working_tree(tmp_path_factory.mktemp("train") / "project", git=False)
    project.link_raw_from(downloaded[0])
    project.set_params({**SMALL, "data.url": downloaded[1], "data.md5": downloaded[0].params()["data"]["md5"]})
    result = project.stage("augment")
    assert result.returncode == 0, result.stderr
    return project


def clone(prepared, path):
    """Another copy sharing the prepared data (hard links: stages only read it)."""
    project = copy_working_tree(path, git=False)
    (project.root / "params.yaml").write_text((prepared.root / "params.yaml").read_text())
    for folder in ("data/raw", "data/prepared"):
        (project.root / folder).mkdir(parents=True)
        for file in (prepared.root / folder).iterdir():
            os.link(file, project.root / folder / file.name)
    return project


def train(project, model="resnet18", timeout=300):
    return project.run(sys.executable, "-m", "stages.train", "--model", model, timeout=timeout)


def weights(project, model="resnet18"):
    return torch.load(project.root / f"models/{model}.pt", weights_only=True)


@pytest.fixture(scope="session")
def trained(prepared):
    result = train(prepared)
    assert result.returncode == 0, result.stderr
    return prepared, result
