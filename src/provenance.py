"""What made a result: content hashes of data and code, and the library versions.

Shared by the train stage (model files, resume fingerprints) and evaluate (the stale-model
check and the metrics' provenance), so that neither imports the other's code.
"""
from __future__ import annotations

import hashlib
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
    """md5 over the files of a DVC output folder (names and contents)."""
    return files_md5([p for p in Path(folder).iterdir() if p.is_file()])


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

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "albumentations": str(albumentations.__version__)}
