"""The user docs: a short README, docs/ by topic, links that resolve, and words about the project only."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers.docs import DOCS, README, ROOT, anchors, links, pages

README_MAX_LINES = 250
PAGE_MAX_LINES = 400
MIN_PAGES = 5

# Words about how and where the project was built rather than about the project: tracking
# numbers of its own issues, the machines and tools it was built with, and the references'
# working names. Upstream references (owner/repo#123, a github.com URL) are allowed.
BUILD_WORDS = re.compile("|".join([
    r"\bissues?\s+#?\d+",
    r"\blent\b", r"\blends?\b", r"\blending\b",
    r"\bseeds?\s?00\d\b",
    r"\bdevice (?:tool|call)s?\b",
    r"\bdevelopment machine\b",
    r"\bthis (?:session|task)\b",
    r"\bCEO\b",
    r"/work/\.library",
]), re.IGNORECASE)
UPSTREAM = re.compile(r"[\w.-]+/[\w.-]+#\d+|github\.com/")
NOT_SCANNED = {"tests/test_docs.py"}  # it names the words it looks for


def tracked_text_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: `git ls-files` lists no tracked files")
    return [name for name in listed.decode().split("\0") if name and name not in NOT_SCANNED]


def test_the_readme_is_short_and_docs_has_a_page_per_topic():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES
    docs = sorted(DOCS.glob("*.md"))
    assert len(docs) >= MIN_PAGES, [p.name for p in docs]
    long_pages = {p.name: n for p in docs if (n := len(p.read_text().splitlines())) > PAGE_MAX_LINES}
    assert not long_pages, f"pages over {PAGE_MAX_LINES} lines: {long_pages}"


def test_every_docs_page_is_one_click_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in links(README)
              if not re.match(r"[a-z]+:", target)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links to no docs/ page named {missing}"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in pages():
        for number, target in links(path):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http(s), mailto: not checked (no network)
                continue
            file_part, _, anchor = target.partition("#")
            goal = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not goal.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and goal.suffix == ".md" and anchor not in anchors(goal):
                broken.append(f"{where} (no heading with that anchor in {goal.relative_to(ROOT)})")
            elif anchor and goal.suffix != ".md":
                broken.append(f"{where} (an anchor into a file that is not Markdown)")
    assert not broken, "\n".join(broken)


def test_no_tracked_file_speaks_of_how_the_project_was_built():
    found = []
    for name in tracked_text_files():
        path = ROOT / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary files (the screenshot), or a file deleted in the work tree
        for number, line in enumerate(text.splitlines(), 1):
            match = BUILD_WORDS.search(line)
            if match and not UPSTREAM.search(line):
                found.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_the_link_checker_sees_a_broken_anchor(tmp_path):
    """The checks above can fail: a page with a bad anchor and a build word is caught."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A `code` heading: yes\n\n[ok](#a-code-heading-yes) [bad](#nowhere)\n"
                    "```\n[in code](#ignored)\n```\nAs " + "issue" + " 12 said.\n")  # split: no build word here
    assert anchors(page) == {"title", "a-code-heading-yes"}
    assert [t for _, t in links(page)] == ["#a-code-heading-yes", "#nowhere"]
    assert BUILD_WORDS.search(page.read_text()) and not BUILD_WORDS.search("see treeverse/dvc#7419")
    assert Path(ROOT / "README.md").exists()
