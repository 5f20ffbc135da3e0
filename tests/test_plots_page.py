"""`dvc plots show` and `dvc plots diff` pages as a person opens them: from disk, offline, in a browser.

The page template (.dvc/plots/page.html, `plots.html_template` in .dvc/config) inlines Vega,
Vega-Lite and vega-embed, so the pages must draw every plot with the network off. A tiny
`dvc repro evaluate` in a project copy makes the plot data the real stages write (three train
stages, evaluate); after a commit a second run, with ResNet-18 at half its learning rate, gives
`dvc plots diff HEAD` two revisions to draw. Each page is opened as a file in headless chromium
(Debian's chromium and chromedriver, as tests/test_app.py drives them) with the network emulated
offline (DevTools) and every proxy pointing at a closed port; chromium's own request log must
show no http(s) request at all.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from helpers.commands import ok
from helpers.models import MODELS
from helpers.project import ROOT, copy_project

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DRAW_TIMEOUT = 120  # seconds for every plot of a page to draw (a few on an idle machine)
SCREENSHOT_DIR = os.environ.get("PLOTS_SCREENSHOT_DIR")  # where the screenshots are also copied
PLOTS_DIR = ROOT / ".dvc" / "plots"
CURVES = ("train/loss", "train/acc", "heldout/loss", "heldout/acc", "lr")
VENDORED = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}  # dvc-render's SCRIPTS
# vega-embed 6.18.2 warns that a "v5" $schema (DVC's own templates use it too) does not match
# Vega-Lite 5.2.0 / Vega 5.20.2: its semver range check fails on "^5". Nothing else may warn.
VERSION_CHECK = re.compile(r"The (input|compiled) spec uses Vega(-Lite)? v5, but (the )?current version")


def dvc_yaml_plots() -> dict[str, dict]:
    return {next(iter(p)): next(iter(p.values())) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}


def plot_ids(models: list[str]) -> set[str]:
    """What the page draws: each plot of dvc.yaml, and one per model file of a folder plot."""
    ids = set()
    for name, plot in dvc_yaml_plots().items():
        ids |= {name} if isinstance(plot.get("y"), dict) else {f"{name}/{model}.csv" for model in models}
    return ids


def div_id(plot_id: str) -> str:
    """The id dvc-render gives a plot's <div> (Renderer.remove_special_chars)."""
    from dvc_render.base import Renderer
    return Renderer.remove_special_chars(plot_id)


# --------------------------------------------------------------------------- without a browser

def html_template() -> Path:
    from configobj import ConfigObj
    configured = ConfigObj(str(ROOT / ".dvc" / "config"))["plots"]["html_template"]
    return ROOT / ".dvc" / configured  # DVC reads a relative path from .dvc/


def test_the_page_template_is_configured_self_contained_and_pinned():
    from dvc_render.vega import VegaRenderer
    template = html_template()
    assert template.is_file(), f".dvc/config's plots.html_template names {template}, which is missing"
    page = template.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1  # where dvc-render puts the plots
    assert "{scripts}" not in page  # where it would put its CDN <script src=...> tags
    assert '<meta charset="utf-8">' in page
    assert re.findall(r"<script[^>]*\ssrc\s*=", page, flags=re.IGNORECASE) == []
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page, flags=re.IGNORECASE)
    # The versions dvc-render itself would load, each inlined once with its licence beside it.
    assert dict(re.findall(r"npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS)) == VENDORED, \
        "dvc-render changed its Vega versions: update PACKAGES in .dvc/plots/build_page.py and run it"
    for name, version in VENDORED.items():
        assert page.count(f"<script>/* {name} {version}, BSD-3-Clause") == 1, name
        assert f'"{version}"' in page, f"{name} {version}'s own version string is not in the page"
        licence = (PLOTS_DIR / f"LICENSE-{name}").read_text(encoding="utf-8")
        assert "Redistribution and use in source and binary forms" in licence, name
        assert f'"{name}", "{version}",' in (PLOTS_DIR / "build_page.py").read_text(), name


def test_dvc_yaml_plots_use_the_templates_here_and_epochs_on_the_curves():
    plots = dvc_yaml_plots()
    assert not any(model in json.dumps(plots) for model in MODELS), "dvc.yaml's plots name a model"
    for name in CURVES:
        assert plots[name]["x"] == "step" and plots[name]["x_label"] == "epoch", name
    for name, plot in plots.items():
        template = plot.get("template")
        assert template and (PLOTS_DIR / f"{template}.json").is_file(), f"{name}: template {template!r}"
        content = json.loads((PLOTS_DIR / f"{template}.json").read_text(encoding="utf-8"))
        assert "<DVC_METRIC_DATA>" in json.dumps(content), template
        assert not any(model in json.dumps(content) for model in MODELS), f"{template} names a model"


# --------------------------------------------------------------------------- the pages

def require_chromium() -> None:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH: `apt-get install chromium chromium-driver` "
                    "(.ci/run does this when it runs as root)")


@pytest.fixture(scope="module")
def pages(tmp_path_factory, request) -> dict:
    """{'show': index.html of `dvc plots show`, 'diff': of `dvc plots diff HEAD`, 'project': ...}."""
    require_chromium()  # before the pipeline runs: without a browser nothing here uses the pages
    # Committed after a whole repro (the report too: it writes every model's curves in one table),
    # curves of 2 epochs (ResNet-50: 4), not single points.
    trained = request.getfixturevalue("trained_tiny")
    assert trained.params()["epochs"] == 2
    repo = copy_project(trained, tmp_path_factory.mktemp("plots") / "project")
    repo.set_params({"model.resnet18.lr_scale": 0.5})  # re-trains ResNet-18 only, then evaluates
    ok(repo.dvc("repro"))
    out = tmp_path_factory.mktemp("pages")
    ok(repo.dvc("plots", "show", "-o", str(out / "show")))
    ok(repo.dvc("plots", "diff", "HEAD", "-o", str(out / "diff")))
    return {"show": out / "show" / "index.html", "diff": out / "diff" / "index.html", "project": repo}


@contextmanager
def offline_browser(profile: Path) -> Iterator:
    """Headless chromium with the network emulated offline and a dead proxy for everything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    with socket.socket() as sock:  # a loopback port that nothing listens on: the only "proxy"
        sock.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--proxy-server={dead_proxy}", "--proxy-bypass-list=<-loopback>",
                 f"--user-data-dir={profile}", "--window-size=1440,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(DRAW_TIMEOUT)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path):
    require_chromium()
    with offline_browser(tmp_path / "chromium-profile") as driver:
        yield driver


# Everything a test needs from a drawn page, read from each plot's Vega view (window.dvcPlots,
# kept by the page template): its marks by type, axis titles, legend labels, what the confusion
# cells and the per-superclass bars show, and any error or warning its logger reported.
SUMMARY_JS = """
function walk(mark, out) {
  var role = mark.role || "";
  if (role === "mark" && mark.marktype !== "group") {
    out.marks[mark.marktype] = (out.marks[mark.marktype] || 0) + mark.items.length;
    if (mark.marktype === "rect") mark.items.forEach(function (item) {
      var d = item.datum || {};
      if (d.row_class !== undefined) out.cells.push([d.panel, d.row_class, d.column_class, d.share]);
      if (d.group_accuracy !== undefined) out.bars.push([d.model, d.rev, d.superclass, d.group_accuracy]);
    });
  }
  if (role === "axis-title") mark.items.forEach(function (i) { out.axisTitles.push(String(i.text)); });
  if (role === "legend-label") mark.items.forEach(function (i) { out.legendLabels.push(String(i.text)); });
  (mark.items || []).forEach(function (item) {
    (item.items || []).forEach(function (child) { walk(child, out); });
  });
}
return window.dvcPlots.map(function (p) {
  var out = {id: p.id, error: p.error, errors: p.errors, warnings: p.warnings, marks: {},
             axisTitles: [], legendLabels: [], cells: [], bars: []};
  if (p.view) walk(p.view.scenegraph().root, out);
  return out;
});
"""


def open_page(driver, page: Path, expected_ids: set[str]) -> dict[str, dict]:
    """Open `page`, wait until every plot has drawn or failed; its summary per div id."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get_log("performance")  # drop what came before
    driver.get(page.as_uri())  # returns once the page (scripts included) has loaded
    assert driver.execute_script("return typeof vegaEmbed === 'function' && Array.isArray(window.dvcPlots)"), \
        "no vegaEmbed or window.dvcPlots after loading: Vega did not load, or this is not .dvc/plots/page.html"
    WebDriverWait(driver, DRAW_TIMEOUT).until(lambda d: d.execute_script(
        "return window.dvcPlots !== undefined && window.dvcPlots.length === arguments[0] "
        "&& window.dvcPlots.every(function (p) { return p.done; })", len(expected_ids)))
    summary = {plot["id"]: plot for plot in driver.execute_script(SUMMARY_JS)}
    assert set(summary) == expected_ids
    return summary


def full_page_screenshot(driver, path: Path) -> Path:
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    driver.set_window_size(max(width, 1440), height + 140)  # + the window's own frame
    time.sleep(0.5)
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 20_000
    driver.set_window_size(1440, 1000)
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(SCREENSHOT_DIR) / path.name)
    return path


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        url = message.get("params", {}).get("request", {}).get("url")
        if url:
            urls.append(url)
    return urls


def read_csv(path: Path, delimiter: str = ",") -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_the_browser_is_offline(browser):
    """What the default page needs, Vega from jsDelivr, is out of reach here (as on an offline machine)."""
    browser.get("about:blank")
    failed = browser.execute_async_script(
        "var done = arguments[0]; fetch('https://cdn.jsdelivr.net/npm/vega@5.20.2')"
        ".then(function () { done(false); }, function () { done(true); });")
    assert failed, "the browser fetched from the CDN: the network is not off"
    assert "https://cdn.jsdelivr.net/npm/vega@5.20.2" in requested_urls(browser)  # what the pages must not do


@pytest.mark.parametrize("kind", ["show", "diff"])
def test_the_page_draws_every_plot_offline(pages, browser, tmp_path, kind):
    revisions = {"show": {"workspace"}, "diff": {"HEAD", "workspace"}}[kind]
    summary = open_page(browser, pages[kind], {div_id(name) for name in plot_ids(MODELS)})

    # Nothing failed, nothing was fetched, the text is UTF-8 and nothing was truncated.
    for plot_id, plot in summary.items():
        assert plot["error"] is None and plot["errors"] == [], (plot_id, plot["error"], plot["errors"])
        assert plot["warnings"] == [], (plot_id, plot["warnings"])
        assert sum(plot["marks"].values()) > 0, (plot_id, plot["marks"])
    console = [entry["message"] for entry in browser.get_log("browser")
               if entry["level"] in ("SEVERE", "WARNING") and not VERSION_CHECK.search(entry["message"])]
    assert console == [], console
    requested = requested_urls(browser)
    assert pages[kind].as_uri() in requested  # the log does list what the page loads
    fetched = [url for url in requested if not url.startswith(("file:", "data:", "blob:", "about:"))]
    assert fetched == [], f"the page requested {fetched}"
    assert browser.execute_script("return document.characterSet") == "UTF-8"
    versions = browser.execute_script("return [vega.version, vegaLite.version, vegaEmbed.version]")
    assert versions == list(VENDORED.values())
    html = browser.execute_script("return document.documentElement.outerHTML")
    assert "â€" not in html and "Â·" not in html  # "…" and "·" read as cp1252
    truncated = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg text')).map(function (t) { return t.textContent; })"
        ".filter(function (text) { return text.indexOf('\\u2026') >= 0; })")
    assert truncated == [], f"labels cut short: {truncated}"
    assert browser.title and "DVC plots" in browser.title
    assert "CIFAR-100 ResNets" in browser.find_element("css selector", "header h1").text

    # Curves: a line per model and revision, x in epochs (DVCLive's step counts them from 1), the
    # legend in model names.
    root = pages["project"].root
    steps = [row["step"] for row in read_csv(root / "plots/train/resnet18/plots/metrics/lr.tsv", "\t")]
    assert steps == ["1", "2"], steps
    for name in CURVES:
        plot = summary[div_id(name)]
        assert plot["marks"].get("line", 0) > 0 and plot["marks"].get("symbol", 0) > 0, (name, plot["marks"])
        assert "epoch" in plot["axisTitles"], (name, plot["axisTitles"])
        assert set(MODELS) | revisions <= set(plot["legendLabels"]), (name, plot["legendLabels"])
        assert not any("/" in label for label in plot["legendLabels"]), plot["legendLabels"]

    # Confusion: one heatmap per revision, every actual class a row that sums to 100%, each cell
    # the share of its row's images that the CSV counts.
    for model in MODELS:
        plot = summary[div_id(f"plots/confusion/{model}.csv")]
        rows = read_csv(root / f"plots/confusion/{model}.csv")
        actual = {row["actual"] for row in rows}
        assert {"actual superclass", "predicted superclass"} <= set(plot["axisTitles"]), plot["axisTitles"]
        panels = {panel for panel, *_ in plot["cells"]}
        assert panels == {f"{model}  ·  {rev}" for rev in revisions}, panels
        shares: dict[tuple, float] = {}
        for panel, row_class, _, share in plot["cells"]:
            shares[panel, row_class] = shares.get((panel, row_class), 0.0) + share
        for panel in panels:
            assert {row_class for p, row_class in shares if p == panel} == actual, panel
        assert all(abs(total - 1) < 1e-9 for total in shares.values()), shares
        columns = {column for *_, column, _ in plot["cells"]}
        assert columns >= actual | {row["predicted"] for row in rows}
        assert plot["marks"]["rect"] == len(panels) * len(actual) * len(columns)
        pairs = Counter((row["actual"], row["predicted"]) for row in rows)
        per_row = Counter(row["actual"] for row in rows)
        for panel, row_class, column_class, share in plot["cells"]:
            if panel == f"{model}  ·  workspace":
                assert share == pytest.approx(pairs[row_class, column_class] / per_row[row_class])

    # Reliability, a plot per model: a line and sized symbols, and the diagonal.
    for model in MODELS:
        plot = summary[div_id(f"plots/reliability/{model}.csv")]
        assert plot["marks"].get("line", 0) >= 2 and plot["marks"].get("symbol", 0) > 0, plot["marks"]
        assert model in plot["legendLabels"]

    # Per superclass, a plot per model: a bar per revision and superclass, the accuracy over its images.
    superclasses = {row["superclass"] for row in read_csv(root / "plots/per_class/resnet18.csv")}
    shown = {}
    for model in MODELS:
        plot = summary[div_id(f"plots/per_class/{model}.csv")]
        assert plot["marks"]["rect"] == len(revisions) * len(superclasses), plot["marks"]
        shown.update({(m, group): value for m, rev, group, value in plot["bars"] if rev == "workspace"})
    for model in MODELS:
        correct, images = Counter(), Counter()
        for row in read_csv(root / f"plots/per_class/{model}.csv"):
            correct[row["superclass"]] += float(row["accuracy"]) * int(row["images"]) / 100
            images[row["superclass"]] += int(row["images"])
        for group in superclasses:
            assert shown[model, group] == pytest.approx(100 * correct[group] / images[group]), (model, group)

    full_page_screenshot(browser, tmp_path / f"plots-{kind}.png")
