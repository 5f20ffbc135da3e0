"""Resumable training state and the final model file.

A checkpoint is only resumed when its fingerprint matches: the same training
params, the same prepared data and the same code. Anything else starts fresh
and says why. Files are written atomically and read with weights_only=True, so
a truncated or hostile file is refused instead of executed.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import threading
from pathlib import Path

import albumentations
import torch
import torchvision

from src.cli import UserError, staged_file
from src.params import Params
from src.runtime import Runtime


def files_md5(paths: list[Path]) -> str:
    digest = hashlib.md5()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def data_hash(folder: str | Path) -> str:
    """md5 over the files of a DVC output folder (names and contents)."""
    return files_md5([p for p in Path(folder).iterdir() if p.is_file()])


def code_hash() -> str:
    """md5 over the source of every project module loaded in this process."""
    files = {Path(module.__file__) for name, module in list(sys.modules.items())
             if name.split(".")[0] in ("src", "stages") and getattr(module, "__file__", None)}
    return files_md5(list(files))


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


def fingerprint(training_params: dict, prepared_hash: str) -> str:
    blob = json.dumps({"params": training_params, "data": prepared_hash, "code": code_hash()},
                      sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest()


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "albumentations": str(albumentations.__version__)}


def save(state: dict, path: str | Path) -> None:
    with staged_file(path) as tmp:
        torch.save(state, tmp)


class BackgroundSaver:
    """Writes resume checkpoints in a thread, so training does not wait for the disk
    (about 0.1 s an epoch for ResNet-18, 0.2 s for ResNet-50: several % of a GPU epoch).

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


def load_model_file(path: str | Path) -> dict:
    """A models/<name>.pt file, refusing anything torch's weights_only loader refuses."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro` to train it") from None
    except Exception as error:
        raise UserError(f"refusing {path}: expected a model file written by the train stage, "
                        f"found something torch's safe loader rejects ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}). Delete it and run `dvc repro`.") from None
    if not isinstance(state, dict) or "state_dict" not in state or "architecture" not in state:
        raise UserError(f"refusing {path}: it is not a model file written by the train stage "
                        "(no state_dict/architecture). Delete it and run `dvc repro`.")
    return state
