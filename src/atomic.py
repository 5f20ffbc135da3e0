"""Atomic outputs: a stage that fails or is killed half-way never leaves a partial file or folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _parent_removed_on_failure(final: Path) -> Iterator[None]:
    """Create final's missing parent folders, and remove them again if the body fails."""
    missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp*"):  # left by a killed run
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    try:
        yield
    except BaseException:
        for folder in missing:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; it replaces `final` only on success.

    So a stage that fails or is killed half-way never leaves a partial output behind.
    """
    final = Path(final)
    with _parent_removed_on_failure(final):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; outputs are ordinary files
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; it is renamed to `final` only on success."""
    final = Path(final)
    with _parent_removed_on_failure(final):
        yield from _staged_file(final)


def _staged_file(final: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
