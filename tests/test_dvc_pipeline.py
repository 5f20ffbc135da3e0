"""The real `dvc repro augment` in a temporary git repository copied from the working tree.

Only the download and augment stages run (their target is `augment`); the archive is
the generated one, served over HTTP on 127.0.0.1.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from helpers.commands import run_cmd
from helpers.pipeline import resolved_stages, written_out
from helpers.project import ROOT, copy_working_tree

PARAMS = {"seed": 0, "data.train_limit": 1000, "data.test_limit": 200, "data.val_size": 100,
          "augment.offline_copies": 0, "augment.preview_images": 8}
OUTPUTS = ["data/raw/train.npz", "data/raw/test.npz", "data/raw/meta.json",
           "data/prepared/train.npz", "data/prepared/val.npz", "data/prepared/test.npz",
           "data/prepared/classes.json", "data/prepared/stats.json",
           "plots/augment_preview.png"]


@pytest.fixture(scope="module")
def repro(tmp_path_factory, cifar_archive, http_server):
    """A git repo copy with data.url at the loopback archive, after one `dvc repro augment`."""
    project = copy_working_tree(tmp_path_factory.mktemp("dvc") / "project", git=True)
    url = http_server.publish(cifar_archive.path)
    project.set_params({"data.url": url, "data.md5": cifar_archive.md5, **PARAMS})
    committed = project.git("commit", "-q", "-am", "params for the test archive")
    assert committed.returncode == 0, committed.stderr
    first = project.dvc("repro", "augment")
    return project, url, first


def _lock(project) -> dict:
    return yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]


def test_repro_runs_download_and_augment(repro):
    project, _, first = repro
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert "Running stage 'download'" in output and "Running stage 'augment'" in output
    assert "Running stage 'train" not in output  # only what `augment` needs
    for path in OUTPUTS:
        assert (project.root / path).is_file(), path
    with np.load(project.root / "data" / "prepared" / "train.npz") as npz:
        assert npz["images"].shape == (900, 32, 32, 3)
    stats = json.loads((project.root / "data/prepared/stats.json").read_text())
    assert stats["sizes"] == {"train": 900, "test": 200, "val": 100}


def test_lock_records_both_stages(repro, cifar_archive):
    project, url, first = repro
    assert first.returncode == 0
    lock = _lock(project)
    assert {"download", "augment"} <= set(lock)
    download, augment = lock["download"], lock["augment"]
    assert download["params"]["params.yaml"] == {"data.url": url, "data.md5": cifar_archive.md5}
    assert augment["params"]["params.yaml"]["data.train_limit"] == 1000
    assert augment["params"]["params.yaml"]["data.val_size"] == 100
    assert "augment" in augment["params"]["params.yaml"]
    raw_out = {o["path"]: o for o in download["outs"]}["data/raw"]
    raw_dep = {d["path"]: d for d in augment["deps"]}["data/raw"]
    assert raw_out["md5"] == raw_dep["md5"] and raw_out["md5"].endswith(".dir")
    assert raw_out["nfiles"] == 3
    assert {o["path"] for o in augment["outs"]} == {"data/prepared", "plots/augment_preview.png"}
    code = {d["path"] for d in augment["deps"]}
    assert {"stages/augment.py", "src/data/splits.py", "src/augment/pipelines.py"} <= code
    # the outputs are in this repository's DVC cache
    cache = project.root / ".dvc" / "cache" / "files" / "md5"
    digest = raw_out["md5"]
    assert (cache / digest[:2] / digest[2:]).is_file()


def test_second_repro_runs_nothing(repro):
    project, _, first = repro
    assert first.returncode == 0
    before = {p: (project.root / p).stat().st_mtime_ns for p in OUTPUTS}
    lock_before = (project.root / "dvc.lock").read_text()
    again = project.dvc("repro", "augment")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    assert "Running stage" not in output
    assert "Stage 'download' didn't change" in output and "Stage 'augment' didn't change" in output
    assert {p: (project.root / p).stat().st_mtime_ns for p in OUTPUTS} == before
    assert (project.root / "dvc.lock").read_text() == lock_before

    status = project.dvc("status", "--with-deps", "augment")
    assert status.returncode == 0, status.stderr
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


def test_augment_param_change_invalidates_augment_only(repro):
    """`dvc status` after changing an augment-only param: augment changed, download did not."""
    project, _, first = repro
    assert first.returncode == 0
    params = (project.root / "params.yaml").read_text()
    try:
        project.set_params({"augment.hflip_p": 0.25})
        status = project.dvc("status", "--with-deps", "augment")
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("augment:"), status.stdout
        assert "params.yaml" in status.stdout and "modified" in status.stdout, status.stdout
        assert "download:" not in status.stdout, status.stdout
    finally:
        (project.root / "params.yaml").write_text(params)


def test_the_anchors_in_dvc_yaml_change_nothing(tmp_path):
    """The train stages share their deps and params through YAML anchors; each resolves to the
    same cmd, deps, params and outs as the same dvc.yaml written out in full."""
    text = (ROOT / "dvc.yaml").read_text()
    assert "&train_deps" in text and text.count("*train_deps") == 2 and text.count("*train_params") == 2
    full = tmp_path / "full"
    full.mkdir()
    assert run_cmd(["git", "init", "-q"], cwd=full).returncode == 0
    (full / ".dvc").mkdir()  # with git: a DVC repository enough to load its dvc.yaml
    (full / "dvc.yaml").write_text(yaml.safe_dump(written_out(yaml.safe_load(text)), sort_keys=False))
    assert "&" not in (full / "dvc.yaml").read_text() and "*train" not in (full / "dvc.yaml").read_text()
    (full / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    anchored, expanded = resolved_stages(ROOT), resolved_stages(full)
    assert anchored == expanded
    shared = anchored["train-resnet18"]
    for name in ("train-resnet34", "train-resnet50"):
        model = name.removeprefix("train-")
        assert anchored[name]["deps"] == shared["deps"]
        assert set(anchored[name]["params"]["params.yaml"]) - set(shared["params"]["params.yaml"]) == {f"model.{model}"}


def uncovered_augment_keys(keys: list[str], schema=None) -> list[str]:
    """The fields of ModelAugment (the augment keys a model may override) that a stage with these
    params.yaml keys does not depend on, as `augment` or `augment.<field>`."""
    from src.params import ModelAugment

    fields = (schema or ModelAugment).model_fields
    return [field for field in fields if "augment" not in keys and f"augment.{field}" not in keys]


def test_each_train_stage_depends_on_every_augment_key_a_model_may_override():
    """A model's `augment` block overrides the shared `augment.*` keys and falls back to them for
    the rest: a change to any of them must re-run the train stages, so each lists them all (a key
    added to ModelAugment and params.yaml but not to dvc.yaml would change no stage)."""
    from src.params import ModelAugment

    stages = resolved_stages(ROOT)  # as DVC resolves the anchors
    trains = [name for name in stages if name.startswith("train-")]
    assert trains
    for name in trains:
        keys = stages[name]["params"]["params.yaml"]
        assert uncovered_augment_keys(keys) == [], f"{name}: add these to its params in dvc.yaml"
    # The check fails when a key is missing, from either side.
    keys = stages[trains[0]]["params"]["params.yaml"]
    assert uncovered_augment_keys([k for k in keys if k != "augment.cutout_p"]) == ["cutout_p"]

    class WithANewKey(ModelAugment):
        solarize_p: float = 0.0

    assert uncovered_augment_keys(keys, WithANewKey) == ["solarize_p"]
    assert uncovered_augment_keys(["augment"], WithANewKey) == []  # the whole block covers every key
