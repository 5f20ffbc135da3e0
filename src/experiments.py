"""DVC experiments as `src.compare` and `src.sweep` see them: DVC's own commands, run as a user would.

`dvc exp show --json` is DVC's documented machine output: every experiment of HEAD with its
params, its metrics and, for a queued one, the queue's state (queued, running, success, failed).
Experiments are queued with `dvc exp run --queue -n NAME -S key=value` and run by
`dvc queue start -j J`, so what a sweep runs is what `dvc exp show` and `dvc queue logs` list.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from src.errors import UserError

FINISHED = ("success", "failed")
# `dvc exp show` fails now and then while a queue worker creates or removes an experiment's files
# ("directory '.dvc/tmp/exps/tmp.../.dvc' does not exist", "No such file or directory:
# '.dvc/tmp/exps/run/<task>/<task>.run'", "Empty git repo"); asked again later, it answers.
TRANSIENT = (".dvc/tmp/exps", "Empty git repo")


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()] or ["no output"]
    return next((line for line in lines if line.startswith("ERROR")), lines[-1]).removeprefix("ERROR: ")


def exp_show(patience_s: float = 30) -> list[dict]:
    """`dvc exp show --json`: the workspace, HEAD and HEAD's experiments."""
    result = _dvc_patiently(["exp", "show", "--json"], TRANSIENT, patience_s, pause_s=2)
    if result.returncode != 0:
        raise UserError(f"`dvc exp show` failed ({_error_line(result)}): run this command from the root "
                        "of the project's git repository")
    return json.loads(result.stdout)


def _dvc_patiently(args: list[str], passing: tuple[str, ...], patience_s: float,
                   pause_s: float) -> subprocess.CompletedProcess:
    """`dvc ARGS`, asked again every `pause_s` while it fails with one of the `passing` errors,
    for at most `patience_s`: its last result."""
    deadline = time.monotonic() + patience_s
    while True:
        result = _dvc(*args)
        if result.returncode == 0 or not any(sign in result.stderr for sign in passing) \
                or time.monotonic() > deadline:
            return result
        time.sleep(pause_s)


def flatten(params: dict, prefix: str = "") -> dict:
    """{'data': {'test_limit': 1}} -> {'data.test_limit': 1}: the names `dvc exp run -S` takes."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Experiment:
    name: str  # its name, or its commit's first 7 hex digits for a nameless one
    state: str  # queued | running | success | failed (success: also one run outside the queue)
    params: dict = field(default_factory=dict)  # params.yaml, flattened
    metrics: dict = field(default_factory=dict)  # {path: parsed file} of the files DVC could read
    metric_errors: dict = field(default_factory=dict)  # {path: DVC's error ({type, msg})} of those it could not
    timestamp: str = ""  # ISO 8601, as DVC gives it
    error: str | None = None  # why DVC could not read the experiment at all; None when it could


def listed(shown: list[dict]) -> list[Experiment]:
    """Every experiment of HEAD in `dvc exp show --json` output, in DVC's order: the one reading
    of that output (`src.compare` and `src.sweep` both go through it)."""
    found = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            state = exp["revs"][0]
            data = state.get("data") or {}
            files = data.get("metrics") or {}
            error = None
            if state.get("error") or not data:
                error = str((state.get("error") or {}).get("msg"))
            found.append(Experiment(
                exp.get("name") or state.get("name") or state.get("rev", "")[:7],
                (exp.get("executor") or {}).get("state") or "success",
                flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {})),
                {path: entry["data"] for path, entry in files.items()
                 if isinstance(entry, dict) and "data" in entry and not entry.get("error")},
                {path: entry["error"] for path, entry in files.items()
                 if isinstance(entry, dict) and entry.get("error")},
                data.get("timestamp") or "",
                error))
    return found


def by_name(shown: list[dict]) -> dict[str, Experiment]:
    """Every experiment of HEAD in `dvc exp show --json` output, by name."""
    return {exp.name: exp for exp in listed(shown) if exp.name}


def override(key: str, value) -> str:
    """`key=value` for `dvc exp run -S`, which reads the value as YAML: JSON's scalars are YAML's."""
    return f"{key}={json.dumps(value)}"


def queue(name: str, params: dict) -> None:
    """`dvc exp run --queue -n name -S key=value ...`: one experiment, queued."""
    args = ["exp", "run", "--queue", "-n", name]
    for key, value in params.items():
        args += ["-S", override(key, value)]
    result = _dvc(*args)
    if result.returncode != 0:
        raise UserError(f"`dvc exp run --queue -n {name}` failed ({_error_line(result)})")


def worker_env(jobs: int, environ: dict | None = None) -> dict:
    """The environment of `jobs` queue workers, each doing its math on its share of the cores:
    torch's default of one OpenMP thread per core in each worker oversubscribes them (the workers'
    threads contend for the same cores, and all run slower than at their share: docs/measurements.md).
    The workers' stages inherit it, as torchrun's ranks get one thread each; an OMP_NUM_THREADS
    already set is kept."""
    env = dict(os.environ if environ is None else environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def start_workers(jobs: int) -> None:
    """`dvc queue start -j jobs`: DVC starts only the workers not already running, and each stops
    by itself once the queue has been empty for a while."""
    # The workers it starts inherit its stdout and stderr: pipes would keep this call waiting until
    # the last worker exits, so its output goes to a file.
    with tempfile.TemporaryFile("w+") as output:
        code = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], env=worker_env(jobs),
                              stdin=subprocess.DEVNULL, stdout=output, stderr=output).returncode
        output.seek(0)
        result = subprocess.CompletedProcess([], code, "", output.read())
    if result.returncode != 0:
        raise UserError(f"`dvc queue start -j {jobs}` failed ({_error_line(result)})")


# Passing refusals while DVC's queue workers use the repository: asked again later, they answer.
BUSY = ("Unable to acquire lock", "is busy", *TRANSIENT)


def _share(verb: str, remote: str, names: list[str], patience_s: float) -> None:
    result = _dvc_patiently(["exp", verb, remote, *names], BUSY, patience_s, pause_s=5)
    if result.returncode != 0:
        raise UserError(f"`dvc exp {verb} {remote} {' '.join(names)}` failed ({_error_line(result)})")


def push(remote: str, names: list[str], patience_s: float = 300) -> None:
    """`dvc exp push REMOTE NAME...`: the experiments' git refs to the git remote, their outputs to
    the default DVC remote."""
    _share("push", remote, names, patience_s)


def pull(remote: str, names: list[str], patience_s: float = 300) -> None:
    """`dvc exp pull REMOTE NAME...`: the experiments' refs from the git remote, their outputs from
    the default DVC remote."""
    _share("pull", remote, names, patience_s)


def check_sharing(remote: str) -> None:
    """That `remote` is a git remote of this clone and that DVC has a default remote for the
    outputs: what `dvc exp push REMOTE` needs, checked before anything runs."""
    remotes = subprocess.run(["git", "remote"], capture_output=True, text=True).stdout.split()
    if remote not in remotes:
        known = f"it has {', '.join(remotes)}, or name one of those" if remotes else "it has none"
        raise UserError(f"--push {remote}: not a git remote of this clone: add the shared git repository with "
                        f"`git remote add {remote} URL` ({known})")
    result = _dvc("remote", "default")
    if result.returncode != 0 or not result.stdout.strip():
        raise UserError(f"--push {remote}: DVC has no default remote for the experiments' outputs (models, data): "
                        "add the shared one with `dvc remote add -d NAME URL` (and commit .dvc/config)")
