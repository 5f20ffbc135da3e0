"""Build .dvc/plots/page.html: the page `dvc plots show` / `dvc plots diff` fill, with Vega inlined.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN (a blank page offline)
and declares no charset. This script downloads the three npm tarballs at the versions
dvc-render's VegaRenderer.SCRIPTS names, checks each against the sha512 `dist.integrity`
pinned below, and writes

    page.html            the HTML template (`plots.html_template` in .dvc/config) with the
                         three minified builds inlined in <script> tags
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

PAGE_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh_tag}
<title>CIFAR-100 ResNets: DVC plots</title>
<style>
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: #1f2328; background: #f4f5f7; }
  header { padding: 14px 24px 10px; background: #fff; border-bottom: 1px solid #d8dbe0; }
  header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
  header p { margin: 0; color: #4a5059; max-width: 1100px; }
  header code { font-size: 13px; background: #eef0f3; padding: 0 3px; border-radius: 3px; }
  /* One card per plot; cards wrap into as many columns as the window holds. */
  main.plots { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; padding: 18px 24px; }
  main.plots > div { background: #fff; border: 1px solid #d8dbe0; border-radius: 6px;
                     padding: 12px 14px 8px; max-width: 100%; box-sizing: border-box; overflow-x: auto; }
  .plot-error { color: #b42318; white-space: pre-wrap; font-family: monospace; }
</style>
"""

# Runs after the three libraries, before DVC's plot divs: each div calls vegaEmbed('#id', spec).
# This wrapper sets the page's defaults (SVG, only the export actions: the others open the online
# editor) and keeps every plot's outcome on window.dvcPlots: {id, done, view, error, warnings},
# the Vega view once drawn, what its logger reported, or why it failed (also shown in the card).
EMBED_WRAPPER = """
(function () {
  "use strict";
  var embed = window.vegaEmbed;
  var plots = window.dvcPlots = [];
  function record(logger, list, method) {
    var original = logger[method];
    logger[method] = function () {
      list.push(Array.prototype.map.call(arguments, String).join(" "));
      return original.apply(logger, arguments);
    };
  }
  function vegaEmbedRecorded(el, spec, options) {
    var entry = {id: String(el).replace(/^#/, ""), done: false, view: null, error: null,
                 errors: [], warnings: []};
    plots.push(entry);
    class RecordedView extends vega.View {
      constructor(runtime, viewOptions) {
        super(runtime, viewOptions);
        record(this.logger(), entry.errors, "error");
        record(this.logger(), entry.warnings, "warn");
      }
    }
    var defaults = {renderer: "svg", viewClass: RecordedView,
                    actions: {export: true, source: false, compiled: false, editor: false}};
    entry.promise = embed(el, spec, Object.assign(defaults, options || {})).then(function (result) {
      entry.view = result.view;
      entry.done = true;
      return result;
    }, function (err) {
      entry.error = String(err && err.stack || err);
      entry.done = true;
      var target = typeof el === "string" ? document.querySelector(el) : el;
      if (target) {
        var message = document.createElement("pre");
        message.className = "plot-error";
        message.textContent = entry.id + ": " + entry.error;
        target.appendChild(message);
      }
    });
    return entry.promise;
  }
  Object.keys(embed).forEach(function (key) { vegaEmbedRecorded[key] = embed[key]; });
  window.vegaEmbed = vegaEmbedRecorded;
})();
"""

PAGE_BODY = """</head>
<body>
<header>
  <h1>CIFAR-100 ResNets: training curves and test-split results</h1>
  <p>Written by <code>dvc plots show</code> / <code>dvc plots diff</code> from the top-level
  <code>plots:</code> of dvc.yaml with the templates in <code>.dvc/plots/</code>. Colour: the model;
  line dash or panel: the revision (<code>workspace</code>, a commit, an experiment). Hover for
  values; drag or scroll to pan and zoom the curves. Vega {vega}, Vega-Lite {vega_lite} and
  vega-embed {vega_embed} are inlined (BSD-3-Clause, <code>.dvc/plots/LICENSE-*</code>), so the
  page needs no network.</p>
</header>
<main class="plots">
{plot_divs}
</main>
</body>
</html>
"""


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
    scripts, versions = [], {}
    for name, version, integrity in PACKAGES:
        tarball = download(name, version, integrity)
        scripts.append(inline_script(name, version, member(tarball, f"build/{name}.min.js")))
        (HERE / f"LICENSE-{name}").write_text(member(tarball, "LICENSE"), encoding="utf-8")
        versions[name.replace("-", "_")] = version
        print(f"{name} {version}: {len(tarball):,} bytes, sha512 verified")
    body = PAGE_BODY
    for key, version in versions.items():
        body = body.replace("{" + key + "}", version)
    page = PAGE_HEAD + "".join(scripts) + f"<script>{EMBED_WRAPPER}</script>\n" + body
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page
    (HERE / "page.html").write_text(page, encoding="utf-8")
    print(f"wrote {HERE / 'page.html'} ({len(page.encode()):,} bytes)")


if __name__ == "__main__":
    main()
