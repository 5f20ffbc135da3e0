"""app.py, the Gradio demo, as users reach it: the real server on a loopback port, called
through gradio_client and driven in a real browser (Debian's chromium and chromedriver).

The server runs as `python app.py --port N` in project copies with tiny models (see
tests/inference_project.py), with every HTTP(S) proxy variable pointing at a loopback
listener that records what would have left the machine: nothing may.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from gradio_client import Client, handle_file

from conftest import MODELS, command_env, ok
from inference_project import PARTIAL_MODEL, classify, partial_project, save_pngs, split_images, trained_project

START_TIMEOUT = 120  # seconds for the server to answer; it starts in about 10 on two busy cores
BROWSER_TIMEOUT = 60
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Where the browser test also copies its screenshot when set (the README's docs/app.png).
SCREENSHOT_COPY = os.environ.get("APP_SCREENSHOT")


class OutboundRecorder(socketserver.ThreadingTCPServer):
    """A loopback 'proxy' that answers nothing and records the first line of each request."""
    daemon_threads = True

    def __init__(self):
        self.requests: list[str] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.request.settimeout(2)
                try:
                    recorder.requests.append(self.rfile.readline().decode(errors="replace").strip())
                except OSError:
                    recorder.requests.append("(a connection that sent nothing)")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.server_address[1]}"
        names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
        return {**{n: proxy for n in names}, **{n.lower(): proxy for n in names},
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def outbound():
    recorder = OutboundRecorder()
    yield recorder
    recorder.shutdown()
    recorder.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_get(url: str, timeout: float = 5) -> bytes:
    """GET from the loopback server, never through a proxy of this machine's environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()


@contextmanager
def app_server(project, folder: Path, outbound: OutboundRecorder) -> Iterator[str]:
    """`python app.py --port N` in the project; yields its URL once it answers, always stops it."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "app.log"
    env = {**project.env, **outbound.env(), "TMPDIR": str(folder), "GRADIO_TEMP_DIR": str(folder / "gradio")}
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=project.root,
                                   env=command_env(env), stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}"
            try:
                local_get(url, timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def project(tmp_path_factory, downloaded):
    return trained_project(tmp_path_factory, downloaded)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory, outbound):
    with app_server(project, tmp_path_factory.mktemp("app"), outbound) as url:
        yield url


@pytest.fixture(scope="module")
def image(project, tmp_path_factory) -> Path:
    """A test-split image as a PNG file."""
    return save_pngs(split_images(project)[0][3:4], tmp_path_factory.mktemp("upload"), first=3)[0]


def label_top5(value: dict) -> list[tuple[str, float]]:
    return [(row["label"], row["confidence"]) for row in value["confidences"]]


# --------------------------------------------------------------------------- the API

def test_api_classify_gives_what_the_command_gives(server, project, image):
    client = Client(server, verbose=False)
    command = json.loads(ok(classify(project, image, "--model", "resnet18", "--json")).stdout)[0]["predictions"]
    value = client.predict(handle_file(str(image)), "resnet18", api_name="/classify")
    assert value["label"] == command[0]["class"]  # the same top-1
    assert [label for label, _ in label_top5(value)] == [row["class"] for row in command]
    assert [p for _, p in label_top5(value)] == pytest.approx([row["probability"] for row in command], abs=1e-6)
    # Side by side: each model's top-5 as /classify gives it.
    side_by_side = client.predict(handle_file(str(image)), True, api_name="/classify_all")
    assert len(side_by_side) == len(MODELS)
    for name, value in zip(MODELS, side_by_side):
        alone = client.predict(handle_file(str(image)), name, api_name="/classify")
        assert [label for label, _ in label_top5(value)] == [label for label, _ in label_top5(alone)]
        assert [p for _, p in label_top5(value)] == pytest.approx([p for _, p in label_top5(alone)], abs=1e-6)
    with pytest.raises(Exception, match="resnet99 is not in the list of choices"):
        client.predict(handle_file(str(image)), "resnet99", api_name="/classify")


def test_the_page_shows_metrics_params_and_examples(server, project):
    config = json.loads(local_get(server + "config"))
    texts = [c["props"].get("value") for c in config["components"] if c.get("type") == "markdown"]
    table = next(t for t in texts if t and t.startswith("| model"))
    for name in MODELS:
        metrics = json.loads((project.root / f"metrics/{name}.json").read_text())
        low, high = metrics["top1_low"], metrics["top1_high"]
        row = f"| {name} | {metrics['top1']:.2f}% ({low:.2f}-{high:.2f}) | epochs 1, lr 0.1, batch 100, width 2"
        assert row in table, table
    examples = next(c for c in config["components"] if c.get("type") == "dataset")
    classes = json.loads((project.root / "data/prepared/classes.json").read_text())["fine"]
    _, labels = split_images(project)
    truths = [sample[1] for sample in examples["props"]["samples"]]
    assert len(truths) == 8 and set(truths) <= set(classes)
    assert truths[0] == classes[labels[0]]  # the first test image, with its true class


# --------------------------------------------------------------------------- a browser

@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on PATH: `apt-get install chromium chromium-driver` "
                    "(.ci/run does this when it runs as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1500"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to list every request
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(BROWSER_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def shown_top5(driver, element_id: str) -> list[tuple[str, str]]:
    """(class, percentage text) of each row a gr.Label shows."""
    from selenium.webdriver.common.by import By
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} .confidence-set")
    return [(row.find_element(By.CSS_SELECTOR, ".text").text,
             row.find_element(By.CSS_SELECTOR, ".confidence").text) for row in rows]


def test_a_browser_uploads_an_image_and_reads_five_labels(server, browser, image, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(browser, BROWSER_TIMEOUT)
    browser.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    shown_model = browser.find_element(By.CSS_SELECTOR, "#model input").get_attribute("value")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image))
    wait.until(lambda d: len(shown_top5(d, "top5")) == 5)
    expected = Client(server, verbose=False).predict(handle_file(str(image)), shown_model, api_name="/classify")
    rows = shown_top5(browser, "top5")
    assert [name for name, _ in rows] == [label for label, _ in label_top5(expected)]
    assert all(text.endswith("%") for _, text in rows)

    browser.find_element(By.CSS_SELECTOR, "#compare input[type=checkbox]").click()  # all models side by side
    wait.until(lambda d: all(len(shown_top5(d, f"top5-{name}")) == 5 for name in MODELS))
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "app.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if SCREENSHOT_COPY:
        shutil.copyfile(screenshot, SCREENSHOT_COPY)

    requested = {json.loads(entry["message"])["message"]["params"].get("request", {}).get("url", "")
                 for entry in browser.get_log("performance")}
    outside = sorted(url for url in requested if url.split(":")[0] in ("http", "https", "ws", "wss")
                     and not url.startswith(server.rstrip("/")))
    assert outside == [], f"the page loaded resources from outside the server: {outside}"


# --------------------------------------------------------------------------- some models missing

def test_with_only_some_models_trained_the_app_serves_them_and_says_how_to_get_the_others(
        project, tmp_path_factory, outbound, image):
    partial = partial_project(tmp_path_factory, project)
    with app_server(partial, tmp_path_factory.mktemp("partial-app"), outbound) as url:
        config = json.loads(local_get(url + "config"))
        client = Client(url, verbose=False)
        value = client.predict(handle_file(str(image)), PARTIAL_MODEL, api_name="/classify")
    texts = " ".join(str(c["props"].get("value")) for c in config["components"] if c.get("type") == "markdown")
    for name in set(MODELS) - {PARTIAL_MODEL}:
        assert (f"| {name} | not trained: train it with `dvc repro train-{name}`, or fetch the trained model "
                "with `dvc pull` |") in texts
    assert f"| {PARTIAL_MODEL} | not evaluated yet: `dvc repro evaluate` |" in texts
    dropdown = next(c for c in config["components"] if c.get("type") == "dropdown")
    assert [choice[0] for choice in dropdown["props"]["choices"]] == [PARTIAL_MODEL]
    assert not any(c.get("type") == "dataset" for c in config["components"])  # no test split here: no examples
    assert len(label_top5(value)) == 5


def test_nothing_left_the_machine(server, outbound):
    """Last: every server of this module ran with its proxies pointing at the recorder."""
    assert outbound.requests == []
