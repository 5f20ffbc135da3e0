"""Seconds of wall time per test file, from a SUITE_CPU_PROFILE run, as tests/durations.json.

    SUITE_CPU_PROFILE=/tmp/profile.jsonl python -m pytest
    python scripts/suite_durations.py /tmp/profile.jsonl > tests/durations.json

tests/conftest.py hands the files out longest first (pytest-xdist gives whole files to its
processes in that order), so that no long file starts last and runs on alone.
"""
from __future__ import annotations

import collections
import json
import sys


def durations(lines) -> dict[str, float]:
    """{test file name: its tests' wall seconds, summed}, longest first."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for line in lines:
        if line.strip():
            record = json.loads(line)
            seconds[record["test"].split("::")[0].rsplit("/", 1)[-1]] += record["wall"]
    return {name: round(s, 1) for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        print(json.dumps(durations(f), indent=1))


if __name__ == "__main__":
    main()
