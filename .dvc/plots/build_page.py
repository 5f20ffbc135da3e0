"""Refresh the Vega builds inlined in .dvc/plots/page.html, the page `dvc plots` fill.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN (a blank page offline)
and declares no charset. page.html (the HTML template, `plots.html_template` in .dvc/config;
its layout and script are edited by hand) inlines them instead. This script downloads the three
npm tarballs at the versions dvc-render's VegaRenderer.SCRIPTS names, checks each against the
sha512 `dist.integrity` pinned below, and rewrites

    page.html            each package's <script>/* <package> <version>, BSD-3-Clause ... */ block,
                         in place, with its minified build; nothing else in the page
    LICENSE-<package>    each package's licence (BSD-3-Clause), from its tarball

Run it from anywhere with any Python 3.9+ (standard library only):

    python .dvc/plots/build_page.py

To change a version, update PACKAGES (version and the `dist.integrity` that
`npm view <package>@<version> dist.integrity` prints) and run it again.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = "https://registry.npmjs.org"

# (package, version, sha512 dist.integrity as the npm registry publishes it)
PACKAGES = [
    ("vega", "5.20.2",
     "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0",
     "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2",
     "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
]

# dvc-render replaces these in the template; none may occur inside the inlined code.
# {scripts} is deliberately absent from the page: it is where DVC would insert its CDN tags.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

# One inlined build in page.html: its opening comment names the package and version.
def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"<script>/\* {re.escape(name)} [\w.-]+, BSD-3-Clause: [^\n]*\n.*?\n</script>\n", re.S)


def download(package: str, version: str, integrity: str) -> bytes:
    url = f"{REGISTRY}/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    algorithm, _, expected = integrity.partition("-")
    assert algorithm == "sha512", integrity
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{url}: sha512 {actual} is not the pinned {expected}")
    return data


def member(tarball: bytes, path: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        file = tar.extractfile(f"package/{path}")
        if file is None:
            raise SystemExit(f"package/{path} is not a file in the tarball")
        return file.read().decode("utf-8")


def inline_script(name: str, version: str, code: str) -> str:
    """A <script> element holding `code`, refusing what would end it or fill it early."""
    lowered = code.lower()
    for bad in ("</script", "<!--", *PLACEHOLDERS):
        if bad in lowered:
            raise SystemExit(f"{name}'s build contains {bad!r}: it cannot be inlined as it is")
    return (f"<script>/* {name} {version}, BSD-3-Clause: .dvc/plots/LICENSE-{name} */\n"
            f"{code.strip()}\n</script>\n")


def main() -> None:
    page = (HERE / "page.html").read_text(encoding="utf-8")
    for name, version, integrity in PACKAGES:
        tarball = download(name, version, integrity)
        block = inline_script(name, version, member(tarball, f"build/{name}.min.js"))
        page, found = block_pattern(name).subn(lambda _, block=block: block, page)
        if found != 1:
            raise SystemExit(f"page.html holds {found} inlined {name} builds, not one: restore it with "
                             "`git checkout .dvc/plots/page.html` and run this again")
        (HERE / f"LICENSE-{name}").write_text(member(tarball, "LICENSE"), encoding="utf-8")
        print(f"{name} {version}: {len(tarball):,} bytes, sha512 verified")
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page
    (HERE / "page.html").write_text(page, encoding="utf-8")
    print(f"wrote {HERE / 'page.html'} ({len(page.encode()):,} bytes)")


if __name__ == "__main__":
    main()
