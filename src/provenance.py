"""What made a result: content hashes of data and code, and the library versions.

Shared by the train stage (model files, resume fingerprints) and evaluate (the stale-model
check and the metrics' provenance), so that neither imports the other's code.

Two hashes of a folder, with two meanings: `data_hash` is the project's, recorded in the model
files and the metrics' provenance as `prepared_data_hash`; `dvc_dir_md5` is DVC's, the `md5` that
dvc.lock records for an output folder. They differ for the same files: a card or report that
shows one must say which.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path


def files_md5(paths: list[Path]) -> str:
    digest = hashlib.md5()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def data_hash(folder: str | Path) -> str:
    """The project's data hash: md5 over the files of a DVC output folder (names and contents),
    the `prepared_data_hash` of the model files and metrics. Not DVC's hash: see dvc_dir_md5."""
    return files_md5([p for p in Path(folder).iterdir() if p.is_file()])


def file_md5(path: Path) -> str:
    """md5 of one file's bytes: what dvc.lock records for a file."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_dir_md5(folder: Path) -> str:
    """DVC's hash of an output folder, as dvc.lock records it: md5 of its sorted file listing,
    plus ".dir". Not the project's data hash: see data_hash."""
    listing = sorted(({"md5": file_md5(path), "relpath": path.relative_to(folder).as_posix()}
                      for path in folder.rglob("*") if path.is_file()), key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def code_hash() -> str:
    """md5 over the source of every project module loaded in this process."""
    files = {Path(module.__file__) for name, module in list(sys.modules.items())
             if name.split(".")[0] in ("src", "stages") and getattr(module, "__file__", None)}
    return files_md5(list(files))


def versions() -> dict[str, str]:
    """Python and the libraries that shape the weights (imported here, when asked: inference needs
    neither this nor albumentations, whose import would ask PyPI for a newer version)."""
    import albumentations
    import torch
    import torchvision

    found = {"python": platform.python_version(), "torch": str(torch.__version__),
             "torchvision": str(torchvision.__version__), "albumentations": str(albumentations.__version__)}
    if "timm" in sys.modules:  # a model of timm's zoo was built
        found["timm"] = str(sys.modules["timm"].__version__)
    return found
