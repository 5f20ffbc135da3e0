"""The project's own import graph, read from the source (nothing is imported): the files that run
when a script runs. `python -m src.space` copies what app.py needs with it, and
tests/test_lineage.py checks that each stage's deps in dvc.yaml list what its script needs.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("src", "stages")  # the project's top-level packages; anything else is a library


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (`src.x.y`: src/x/y.py or src/x/y/__init__.py), or None for
    anything else (a library, or a name imported from a module rather than a module)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """The dotted names a file imports: `from src.augment import pipelines` gives src.augment and
    src.augment.pipelines, as either may be a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_files(start: Path, root: Path = ROOT) -> set[Path]:
    """`start` and the project files it imports, directly or not, with the __init__.py of each
    package on the way (importing src.a.b runs src/__init__.py and src/a/__init__.py first)."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:depth]), root)
                if found is not None:
                    todo.append(found)
    return seen
