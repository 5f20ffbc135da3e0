"""Commands as a user runs them: the venv's python and dvc first on PATH, output captured."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN_DIR = Path(sys.executable).parent  # the venv's python and dvc


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


def run_cmd(args: list[str | os.PathLike], cwd: str | os.PathLike, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command with the venv's python and dvc first on PATH; capture text output."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=command_env(env), capture_output=True,
                          text=True, timeout=timeout)


def start_cmd(args: list[str | os.PathLike], cwd: str | os.PathLike, env: dict | None = None) -> subprocess.Popen:
    """Start a command as run_cmd would, with stdout and stderr merged into one text pipe."""
    return subprocess.Popen([str(a) for a in args], cwd=cwd, env=command_env(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, after asserting it succeeded (with the tail of its output as the message)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def kill_on_line(project, args: list[str], pattern: str, timeout: float = 180) -> str:
    """Run a command in `project`, SIGKILL it as soon as it prints a line matching `pattern`;
    return its output."""
    process = start_cmd(args, cwd=project.root, env=project.env)
    seen, deadline = [], time.monotonic() + timeout
    for line in iter(process.stdout.readline, ""):
        seen.append(line)
        if re.search(pattern, line) or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    return "".join(seen)
