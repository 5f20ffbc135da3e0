"""Faults injected into real stage processes: kill -9 at several points, a full disk, an
unwritable output folder. After each, re-running gives the same result as no fault."""
from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers.commands import command_env, kill_on_line, start_cmd
from helpers.project import clone, copy_working_tree, train, weights

KILL_POINTS = {  # a line the stage prints -> where the process is when it is killed
    "during the first epoch, before any checkpoint": r"no checkpoint: starting from scratch",
    # Checkpoints are written in the background: epoch k's is surely on disk once epoch k+1 ends.
    "during epoch 3, after a checkpoint": r"epoch 2/3: train loss",
    "after the last epoch, around the model write": r"epoch 3/3: train loss",
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_trainer_reruns_to_the_same_weights(point, trained, tmp_path):
    reference, _ = trained
    project = clone(reference, tmp_path / "killed")
    kill_on_line(project, [sys.executable, "-u", "-m", "stages.train", "--model", "resnet18"],
                 KILL_POINTS[point])
    result = train(project)
    assert result.returncode == 0, result.stderr
    if "after a checkpoint" in point:
        assert "resuming from checkpoints/resnet18.pt after epoch" in result.stdout
    expected, actual = weights(reference)["state_dict"], weights(project)["state_dict"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected), f"killed {point}"
    curve = (project.root / "plots/train/resnet18/plots/metrics/train/loss.tsv").read_text()
    assert len(curve.splitlines()) == 1 + 3, "the re-run logs the whole curve once"


@pytest.mark.parametrize("stage, pattern", [("download", r"download:"), ("augment", r"")])
def test_killed_data_stage_leaves_no_partial_output_and_reruns(stage, pattern, downloaded, tmp_path):
    source, url, _ = downloaded
    project = copy_working_tree(tmp_path / "project", git=False)
    project.set_params({"data.url": url, "data.md5": source.params()["data"]["md5"]})
    if stage == "augment":
        project.link_raw_from(source)
        pattern = None  # kill while the full-size splits are being written to the staging folder
    args = [sys.executable, "-u", "-m", f"stages.{stage}"]
    if pattern is None:
        process = start_cmd(args, cwd=project.root, env=project.env)
        deadline = time.monotonic() + 120
        while not list((project.root / "data").glob(".prepared.*.tmp/*.npz")):
            assert process.poll() is None and time.monotonic() < deadline, "augment ended before the kill"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    else:
        kill_on_line(project, args, pattern)
    out = project.root / "data" / ("raw" if stage == "download" else "prepared")
    assert not out.exists(), f"a killed {stage} left {out}"
    result = project.stage(stage)
    assert result.returncode == 0, result.stderr
    assert not list((project.root / "data").glob(".*.tmp")), "the re-run cleans the killed run's staging"
    expected = source.root / "data/raw/test.npz"
    if stage == "download":
        assert (out / "test.npz").read_bytes() == expected.read_bytes()
    else:
        with np.load(out / "test.npz") as npz, np.load(expected) as raw:
            assert np.array_equal(npz["images"], raw["images"])


def limit_file_size():
    """A full disk, as far as the process can tell: writes past 1 MiB fail with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_full_disk_gives_a_clear_error_and_no_partial_output(downloaded, tmp_path):
    source, url, _ = downloaded
    project = copy_working_tree(tmp_path / "project", git=False)
    project.link_raw_from(source)
    result = subprocess.run([sys.executable, "-m", "stages.augment"], cwd=project.root,
                            env=command_env(project.env), capture_output=True, text=True,
                            preexec_fn=limit_file_size, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot write" in result.stderr and "Free some disk space" in result.stderr
    assert not (project.root / "data/prepared").exists()
    assert not list((project.root / "data").glob(".*.tmp"))


def test_an_unwritable_output_folder_gives_a_clear_error(trained, tmp_path):
    project = clone(trained[0], tmp_path / "unwritable")
    (project.root / "models").write_text("a file where the models folder should be\n")
    result = train(project)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot write" in result.stderr and "models" in result.stderr
