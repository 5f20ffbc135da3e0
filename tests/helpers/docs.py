"""The user docs as the tests read them: README.md and docs/*.md, their sections, commands,
links and GitHub anchors. Tests that run a snippet read it from its page through `section`, so
the page and the test cannot drift apart."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page(name: str) -> Path:
    """'README.md' or a docs page by file name ('experiments.md')."""
    return README if name == "README.md" else DOCS / name


def section(name: str, title: str) -> str:
    """The text under `## title` of a page, up to the next level-2 heading."""
    text = page(name).read_text()
    marker = f"\n## {title}\n"
    assert marker in text, f"{name} has no section '## {title}'"
    return text.split(marker, 1)[1].split("\n## ")[0]


def command(text: str, start: str) -> str:
    """The first line of `text` that starts with `start`, its backslash-continued lines joined and
    its trailing comment dropped."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(start))
    line = lines[i]
    while line.split("#")[0].rstrip().endswith("\\"):
        i += 1
        line = line.split("#")[0].rstrip()[:-1] + " " + lines[i].strip()
    return line.split("  #")[0].strip()


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a page outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page has: one per heading, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code blocks."""
    found = []
    for number, line in prose_lines(path):
        for match in LINK.finditer(line):
            found.append((number, match.group(1) or match.group(2)))
    return found
