"""Resumable training state: what a run records about itself, resume points and their fingerprint.

A checkpoint is only resumed when its fingerprint matches: the same training
params, the same prepared data and the same code. Anything else starts fresh
and says why. Files are written atomically and read with weights_only=True, so
a truncated or hostile file is refused instead of executed. (The final model file is
src/model_file.py's.)
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import torch

from src.atomic import staged_file
from src.params import Params
from src.provenance import code_hash
from src.runtime import Runtime


def training_record(name: str, params: Params, runtime: Runtime, processes: int, heldout: str) -> dict:
    """What made the weights: stored in the model file, and hashed into the resume fingerprint."""
    return {"model": name, "seed": params.seed, "lr": params.model_lr(name), "epochs": params.model_epochs(name),
            "warmup_epochs": params.model_warmup_epochs(name),
            "batch_size": params.batch_size, "width": params.model.width,
            "zero_init_residual": params.model.zero_init_residual, "dropout": params.model.dropout,
            "recipe": params.recipe(name).model_dump(), "train": params.train.model_dump(),
            # The augmentation as built: the shared keys with the model's overrides.
            "augment": {**params.model_augment(name).model_dump(mode="json"),
                        "autoaugment": params.recipe(name).autoaugment},
            "heldout": heldout,
            "runtime": {"device": str(runtime.device), "compile": runtime.compile,
                        "gpu_augment": runtime.gpu_augment, "precision": runtime.precision,
                        "channels_last": runtime.channels_last, "processes": processes,
                        "sync_batchnorm": processes > 1 and params.runtime.sync_batchnorm is not False,
                        "deterministic": params.runtime.deterministic}}


def fingerprint(training_params: dict, prepared_hash: str, weights_md5: str | None = None) -> str:
    """`weights_md5`: of the ImageNet weights a pretrained model starts from."""
    blob = json.dumps({"params": training_params, "data": prepared_hash, "code": code_hash(),
                       **({"weights": weights_md5} if weights_md5 else {})}, sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest()


def save(state: dict, path: str | Path) -> None:
    with staged_file(path) as tmp:
        torch.save(state, tmp)


class BackgroundSaver:
    """Writes resume checkpoints in a thread, so training does not wait for the disk
    (a write each epoch: on a GPU, where epochs are short, a share of the run worth saving).

    submit() copies the state to host memory first (training changes the live tensors in
    place), then returns. One write at a time; an error of a write is raised by the next
    submit() or by wait().
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict, path: str | Path) -> None:
        self.wait()
        snapshot = _to_host(state)
        self._thread = threading.Thread(target=self._write, args=(snapshot, path), name="checkpoint")
        self._thread.start()

    def _write(self, state: dict, path: str | Path) -> None:
        try:
            save(state, path)
        except BaseException as error:  # handed to the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Block until the last submitted checkpoint is on disk; re-raise its error if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _to_host(value):
    """A copy of nested dicts/lists of tensors with every tensor on the CPU, sharing nothing."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(item) for item in value)
    return value


def load_checkpoint(path: str | Path, expected_fingerprint: str) -> tuple[dict | None, str]:
    """(state, message): the state to resume from, or None and why training starts fresh."""
    path = Path(path)
    if not path.exists():
        return None, "no checkpoint: starting from scratch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt or hostile: never resume from it
        return None, f"ignoring unreadable checkpoint {path} ({type(error).__name__}): starting fresh"
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        return None, (f"ignoring checkpoint {path}: it was made with other params, data or code; "
                      "starting fresh")
    return state, f"resuming from {path} after epoch {state['epoch']}"


def resume_point(fingerprint: str, epochs_done: int, model, optimizer, ema, history: list[dict]) -> dict:
    """The state a resumed run needs after `epochs_done` epochs (the EMA's too, when on)."""
    state = {"fingerprint": fingerprint, "epoch": epochs_done, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "history": history}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def restore(state: dict, model, optimizer, ema) -> list[dict]:
    """Load a resume point into the live objects; returns the finished epochs' history."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    return state["history"]
