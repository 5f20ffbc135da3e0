"""app.py, the Gradio demo, as users reach it: the real server on a loopback port, called
through gradio_client and driven in a real browser (Debian's chromium and chromedriver).

The server runs as `python app.py --port N` in project copies with tiny models (see
tests/helpers/inference.py), with every HTTP(S) proxy variable pointing at a loopback
listener that records what would have left the machine: nothing may.

As a service: each kind of bad upload gets the app's one-line message over the API and in the
page, the upload limit, the queue bound, uploads deleted once served and the run's folder on
exit, concurrent requests batched with the probabilities of one at a time. As a Space:
`python -m src.space OUT` in a copy whose dvc.lock `dvc commit` wrote, then OUT copied alone
elsewhere and its app started there, out of the repository's reach.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import load_app
import numpy as np
import pytest
import yaml
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from PIL import Image

from helpers.commands import command_env, ok
from helpers.inference import (
    PARTIAL_MODEL,
    classify,
    partial_project,
    save_pngs,
    split_images,
    trained_project,
    write_untrained_like,
)
from helpers.models import MODELS
from helpers.project import ROOT, Project, copy_working_tree
from src import classifier, images, model_file
from src import space as publish
from src.errors import UserError
from src.serving import Batcher, Limits, Stats, Uploads

START_TIMEOUT = 120  # seconds for the server to answer; it starts in about 10 on two busy cores
BROWSER_TIMEOUT = 60
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Where the browser test also copies its screenshot when set (docs/app.png).
SCREENSHOT_COPY = os.environ.get("APP_SCREENSHOT")
# A folder where the bad-upload test also saves what the page shows for each bad file, when set.
BAD_UPLOAD_SCREENSHOTS = os.environ.get("APP_BAD_UPLOAD_SCREENSHOTS")


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


class AppServer:
    """`python app.py --port N ARGS` running in a project; `stop()` ends it as a service manager would."""

    def __init__(self, project, folder: Path, outbound: OutboundRecorder, *args: str, cwd: Path | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log, port = folder, folder / "app.log", free_port()
        self.temp = folder / "gradio"  # GRADIO_TEMP_DIR: the app makes its run's folder in it
        env = {**project.env, **outbound.env(), "TMPDIR": str(folder), "GRADIO_TEMP_DIR": str(self.temp)}
        with self.log.open("w") as output:
            self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args],
                                            cwd=cwd or project.root, env=command_env(env), stdout=output,
                                            stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}/"

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process.poll() is None, f"app.py exited with {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s:\n{self.output()}"
            try:
                local_get(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.25)

    def output(self) -> str:
        return self.log.read_text()[-3000:]

    def files(self) -> list[Path]:
        """Every file under the app's temporary folder."""
        return sorted(p for p in self.temp.rglob("*") if p.is_file())

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after 15 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def app_server(project, folder: Path, outbound: OutboundRecorder, *args: str, cwd: Path | None = None
               ) -> Iterator[AppServer]:
    """`python app.py --port N ARGS` in the project (or `cwd`); yields it once it answers, always stops it."""
    app = AppServer(project, folder, outbound, *args, cwd=cwd)
    try:
        app.wait_until_up()
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, downloaded):
    return trained_project(tmp_path_factory, downloaded)


# The module's server: a 1 MB (2**20 bytes) upload limit keeps the over-limit file small; a 30 ms batch wait
# gathers concurrent requests without slowing the others much.
SERVER_ARGS = ("--max-file-size", "1", "--batch-wait-ms", "30")


@pytest.fixture(scope="module")
def app(project, tmp_path_factory, outbound):
    with app_server(project, tmp_path_factory.mktemp("app"), outbound, *SERVER_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def server(app) -> str:
    return app.url


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


# --------------------------------------------------------------------------- hostile uploads, limits

def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels (a decompression bomb's header) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_files(image, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """{kind: (file, the app's message for it after "<name>: ")}."""
    folder = tmp_path_factory.mktemp("bad")
    photo = folder / "photo.jpg"
    Image.open(image).resize((320, 240)).save(photo, quality=90)
    files = {"not an image": ("notes.jpg", b"these are notes, not a JPEG\n",
                              "not an image (Pillow recognises no image format in it)"),
             "empty": ("empty.png", b"", "empty file (0 bytes)"),
             "truncated": ("cut.jpg", photo.read_bytes()[:photo.stat().st_size // 2], "truncated or corrupt image"),
             "bomb": ("huge.png", png_header(20000, 20000), "refused as a possible decompression bomb")}
    written = {}
    for kind, (name, data, message) in files.items():
        (folder / name).write_bytes(data)
        written[kind] = (folder / name, message)
    return written


@pytest.mark.parametrize("kind", ["not an image", "empty", "truncated", "bomb"])
def test_a_bad_file_gets_one_message_naming_it_and_the_server_keeps_serving(app, bad_files, image, kind):
    path, message = bad_files[kind]
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(str(path)), "resnet18", api_name="/classify")
    text = str(refused.value)
    assert text.startswith(f"{path.name}: {message}"), text  # the app's words, not Pillow's raw error
    assert "\n" not in text and "/" not in text, f"one line, no server path: {text}"
    assert len(label_top5(client.predict(handle_file(str(image)), "resnet18", api_name="/classify"))) == 5


def test_an_upload_over_the_limit_is_refused_before_it_is_stored(app, image, tmp_path):
    big = tmp_path / "big.jpg"  # over the server's 1 MB
    big.write_bytes(np.random.default_rng(0).bytes(1_200_000))
    with pytest.raises(ValueError, match=r"big\.jpg exceeds the maximum file size of 1048576 bytes"):
        Client(app.url, verbose=False).predict(handle_file(str(big)), "resnet18", api_name="/classify")
    # A client that does not check first (curl, a script): Gradio stops reading at the limit.
    with big.open("rb") as data:
        response = httpx.post(app.url + "gradio_api/upload", files=[("files", ("big.jpg", data))], timeout=30)
    assert response.status_code == 413 and "maximum allowed size of 1048576 bytes" in response.text
    assert not [p for p in app.files() if p.name == "big.jpg"]
    assert len(label_top5(Client(app.url, verbose=False).predict(handle_file(str(image)), "resnet18",
                                                                   api_name="/classify"))) == 5


def test_an_upload_is_deleted_once_served(app, image, tmp_path):
    upload = tmp_path / "served-once.png"
    shutil.copyfile(image, upload)
    value = Client(app.url, verbose=False).predict(handle_file(str(upload)), "resnet18", api_name="/classify")
    assert len(label_top5(value)) == 5
    assert not [p for p in app.files() if p.name == upload.name], "the upload is still on the server's disk"



def test_an_upload_no_request_used_is_swept_when_old(tmp_path, image):
    uploaded, example = tmp_path / "sent-alone.png", tmp_path / "example.png"
    for path in (uploaded, example):
        shutil.copyfile(image, path)
    uploads = Uploads({str(uploaded)})  # Gradio's record: what users uploaded (not the example)
    uploads.sweep(max_age_s=3600)
    assert uploaded.exists(), "swept while younger than the age"
    uploads.sweep(max_age_s=-1)  # every upload is older than that
    assert not uploaded.exists() and example.exists() and uploads.served == set()


# --------------------------------------------------------------------------- batched inference

def test_concurrent_requests_get_the_probabilities_of_one_at_a_time(app, project, tmp_path):
    paths = save_pngs(split_images(project)[0][20:28], tmp_path)  # 8 images, classified at once
    client = Client(app.url, verbose=False)
    jobs = [client.submit(handle_file(str(path)), "resnet18", api_name="/classify") for path in paths]
    for path, job in zip(paths, jobs):
        alone = one_at_a_time(project, "resnet18", path)  # as `python -m src.classify` does it
        value = job.result(timeout=120)
        assert [label for label, _ in label_top5(value)] == [label for label, _ in alone]
        assert [p for _, p in label_top5(value)] == pytest.approx([p for _, p in alone], abs=1e-5)


def one_at_a_time(project, name: str, path: Path) -> list[tuple[str, float]]:
    """The top-5 of `python -m src.classify` (the command's own functions, in this process): one image,
    one forward pass. test_api_classify_gives_what_the_command_gives runs the command itself."""
    model = classifier.load_classifier(model_file.path_of(name, project.root), classifier.inference_runtime("cpu"))
    return model.top(images.load_image(path), 5)


def test_the_batcher_classifies_images_together_as_each_alone(project):
    model = classifier.load_classifier(model_file.path_of("resnet18", project.root),
                                       classifier.inference_runtime("cpu"))
    pixels = split_images(project)[0][:24]
    batcher = Batcher(max_batch_size=8, wait_ms=500, stats=(stats := Stats()))

    def request(image: np.ndarray) -> np.ndarray:
        with batcher.arriving():
            time.sleep(0.05)  # decoding the upload: the batcher waits for it
        return batcher.probabilities(model, image)

    with ThreadPoolExecutor(len(pixels)) as pool:  # 24 requests at once
        batched = list(pool.map(request, pixels))
    alone = [model.probabilities(image[None])[0] for image in pixels]
    np.testing.assert_allclose(np.stack(batched), np.stack(alone), atol=1e-5, rtol=0)
    assert stats.images == 24 and 3 <= stats.batches < 24, stats  # together, at most 8 at a time
    start = time.monotonic()
    assert batcher.probabilities(model, pixels[0]) == pytest.approx(alone[0], abs=1e-5)
    assert time.monotonic() - start < 0.4  # alone: no wait for images that are not coming



def test_a_short_load_round_serves_every_good_request_and_answers_every_bad_one(app, tmp_path):
    """scripts/load_app.py's round, short: 5 clients x 6 requests, 10% bad files (one of each kind)."""
    good = ("png32", "jpeg640")
    files = load_app.make_files(tmp_path, Limits(max_file_size=1).max_file_bytes, good)  # the server's 1 MB
    result = load_app.run_round(app.url, load_app.schedule(5, 6, good), files, tmp_path / "uploads")
    assert result.failures == []
    assert result.outcomes == {"good: ok": 27, "bad: not_image refused": 1, "bad: truncated refused": 1,
                               "bad: over_limit refused": 1}
    assert app.process.poll() is None and json.loads(local_get(app.url + "config"))  # still serving

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


def test_a_browser_uploads_an_image_and_reads_five_labels(app, server, browser, image, tmp_path):
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
    preview = browser.find_element(By.CSS_SELECTOR, "#image img")
    assert browser.execute_script("return arguments[0].naturalWidth", preview) == 32  # the upload is shown
    assert not [p for p in app.files() if p.name == image.name and "examples" not in p.parts], \
        "the page's upload is still on the server's disk"

    # All models side by side: the page sends the same upload again, deleted from disk by now.
    browser.find_element(By.CSS_SELECTOR, "#compare input[type=checkbox]").click()
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


def test_the_page_shows_a_bad_file_or_one_over_the_limit_in_a_line(app, browser, bad_files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(browser, BROWSER_TIMEOUT)
    browser.get(app.url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    notes, message = bad_files["not an image"]
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(notes))
    wait.until(lambda d: f"{notes.name}: {message}" in d.find_element(By.TAG_NAME, "body").text)
    if BAD_UPLOAD_SCREENSHOTS:
        browser.save_screenshot(str(Path(BAD_UPLOAD_SCREENSHOTS) / "bad-upload-not-an-image.png"))
    big = tmp_path / "big.jpg"
    big.write_bytes(np.random.default_rng(0).bytes(1_200_000))
    browser.refresh()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(big))
    wait.until(lambda d: "big.jpg" in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    if BAD_UPLOAD_SCREENSHOTS:
        browser.save_screenshot(str(Path(BAD_UPLOAD_SCREENSHOTS) / "bad-upload-over-the-limit.png"))
    assert 'File(s) exceed the maximum allowed size of 1.0 Mb: "big.jpg"' in text and str(app.temp) not in text, text


# --------------------------------------------------------------------------- some models missing

# The partial project's server: one handler and one place in the queue.
QUEUE_ARGS = ("--concurrency", "1", "--queue-size", "1")


@pytest.fixture(scope="module")
def partial_app(project, tmp_path_factory, outbound):
    partial = partial_project(tmp_path_factory, project)
    with app_server(partial, tmp_path_factory.mktemp("partial-app"), outbound, *QUEUE_ARGS) as running:
        yield running


def test_with_only_some_models_trained_the_app_serves_them_and_says_how_to_get_the_others(partial_app, image):
    config = json.loads(local_get(partial_app.url + "config"))
    value = Client(partial_app.url, verbose=False).predict(handle_file(str(image)), PARTIAL_MODEL, api_name="/classify")
    texts = " ".join(str(c["props"].get("value")) for c in config["components"] if c.get("type") == "markdown")
    for name in set(MODELS) - {PARTIAL_MODEL}:
        assert (f"| {name} | not trained: train it with `dvc repro train-{name}`, or fetch the trained model "
                "with `dvc pull` |") in texts
    assert f"| {PARTIAL_MODEL} | not evaluated yet: `dvc repro evaluate` |" in texts
    dropdown = next(c for c in config["components"] if c.get("type") == "dropdown")
    assert [choice[0] for choice in dropdown["props"]["choices"]] == [PARTIAL_MODEL]
    assert not any(c.get("type") == "dataset" for c in config["components"])  # no test split here: no examples
    assert len(label_top5(value)) == 5
    assert config["max_file_size"] == 10 * 2**20 == Limits().max_file_bytes  # the default limit, 10 MB


def wait_for(job, status: Status, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while job.status().code != status:
        assert time.monotonic() < deadline and not job.done(), f"never {status}: {job.status()}"
        time.sleep(0.02)


def test_a_full_queue_refuses_at_once_and_the_server_keeps_serving(partial_app, image, tmp_path):
    slow = tmp_path / "slow.png"  # 81 million pixels in 100 KB: seconds of decoding in the one handler
    Image.new("L", (9000, 9000), 90).save(slow)
    client = Client(partial_app.url, verbose=False)
    first = client.submit(handle_file(str(slow)), PARTIAL_MODEL, api_name="/classify")
    wait_for(first, Status.PROCESSING)
    waiting = client.submit(handle_file(str(image)), PARTIAL_MODEL, api_name="/classify")
    wait_for(waiting, Status.IN_QUEUE)  # the queue's one place
    start = time.monotonic()
    with pytest.raises(Exception, match="Queue is full"):
        client.predict(handle_file(str(image)), PARTIAL_MODEL, api_name="/classify")
    assert time.monotonic() - start < 5  # refused, not kept waiting
    assert len(label_top5(first.result(timeout=120))) == 5 and len(label_top5(waiting.result(timeout=60))) == 5
    assert len(label_top5(client.predict(handle_file(str(image)), PARTIAL_MODEL, api_name="/classify"))) == 5

# --------------------------------------------------------------------------- a Space

def link_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, copy_function=os.link, dirs_exist_ok=True)  # stages only read them


@pytest.fixture(scope="module")
def committed(project, tmp_path_factory) -> Project:
    """A git copy holding the trained project's outputs, recorded in dvc.lock by `dvc commit` (as
    after `dvc repro`): the metrics are tied to the model files as a real run ties them."""
    copy = copy_working_tree(tmp_path_factory.mktemp("committed") / "project", git=True)
    copy.env.update(project.env, DVC_SITE_CACHE_DIR=copy.env["DVC_SITE_CACHE_DIR"])
    shutil.copyfile(project.root / "params.yaml", copy.root / "params.yaml")
    for folder in ("models", "metrics", "evaluation", "data/prepared", "plots/confusion", "plots/reliability",
                   "plots/per_class", "plots/predictions"):
        shutil.rmtree(copy.root / folder, ignore_errors=True)
        link_tree(project.root / folder, copy.root / folder)
    ok(copy.dvc("commit", "--force", "evaluate"))
    return copy


def space(project: Project, out: Path):
    return project.run(sys.executable, "-m", "src.space", out, timeout=120)


def test_a_space_runs_alone_and_gives_what_the_command_gives(committed, project, image, outbound, tmp_path):
    ok(space(committed, tmp_path / "built"))
    elsewhere = tmp_path / "elsewhere" / "space"  # the folder alone, far from the repository
    shutil.copytree(tmp_path / "built", elsewhere)
    files = {p.relative_to(elsewhere).as_posix() for p in elsewhere.rglob("*") if p.is_file()}
    assert {"app.py", "README.md", "requirements.txt", "src/serving.py", "src/images.py",
            "data/prepared/test.npz", "metrics/summary.json"} <= files
    assert {f"models/{name}.pt" for name in MODELS} | {f"metrics/{name}.json" for name in MODELS} <= files
    assert not [f for f in files if f.startswith(("stages/", "tests/", "src/evaluate/", "src/train/"))
                or f in ("params.yaml", "dvc.yaml", "dvc.lock", "src/space.py", "src/classify.py")], files
    with app_server(project, tmp_path / "space-app", outbound, cwd=elsewhere) as running:
        value = Client(running.url, verbose=False).predict(handle_file(str(image)), "resnet50", api_name="/classify")
        config = json.loads(local_get(running.url + "config"))
    alone = one_at_a_time(project, "resnet50", image)
    assert [label for label, _ in label_top5(value)] == [label for label, _ in alone]
    assert [p for _, p in label_top5(value)] == pytest.approx([p for _, p in alone], abs=1e-6)
    assert sum(len(c["props"]["samples"]) for c in config["components"] if c.get("type") == "dataset") == 8

    readme = (elsewhere / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    gradio_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                      if line.startswith("gradio=="))
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert f"gradio=={front['sdk_version']}" == gradio_pin
    requirements = (elsewhere / "requirements.txt").read_text().splitlines()
    assert gradio_pin in requirements
    assert any(line.startswith("torch==") and line.endswith("+cpu") for line in requirements)
    assert "pyyaml==" in " ".join(requirements) and "pillow==" in " ".join(requirements)
    for name in MODELS:
        metrics = json.loads((project.root / f"metrics/{name}.json").read_text())
        assert (f"| {name} | {metrics['top1']:.2f}% ({metrics['top1_low']:.2f}-{metrics['top1_high']:.2f}) | "
                f"{metrics['top5']:.2f}% ({metrics['top5_low']:.2f}-{metrics['top5_high']:.2f}) | "
                "epochs 1, lr 0.1, batch 100, width 2") in readme
    lock = yaml.safe_load((committed.root / "dvc.lock").read_text())["stages"]["evaluate"]
    data = next(dep["md5"] for dep in lock["deps"] if dep["path"] == "data/prepared")
    head = ok(committed.git("rev-parse", "HEAD")).stdout.strip()
    assert f"DVC's hash (the `md5` of `data/prepared` in `dvc.lock`, as the evaluate stage read it): `{data}`" in readme
    # and the project's, which the model files and the report record, so that a user can match them
    trained_on = model_file.read(model_file.path_of("resnet18", committed.root))["prepared_data_hash"]
    assert f"the project's hash (the `prepared_data_hash` that the model files and the report record): `{trained_on}`" \
        in readme
    assert head in readme and "CIFAR-100 (Alex Krizhevsky" in readme
    assert "32x32" in readme  # the limits of such models


def test_a_space_is_refused_in_a_line_without_models_or_when_metrics_do_not_match_them(committed, tmp_path):
    # The command's checks, in this process (src.errors.run prints a UserError as one line, exit 1).
    with pytest.raises(UserError) as refused:  # a folder with no model
        publish.checked_models(tmp_path)
    assert str(refused.value) == ("no trained model in models/: train them with `dvc repro` (or fetch them with "
                                  "`dvc pull`), then run `python -m src.space OUT` again")
    metrics = committed.root / "metrics" / "resnet18.json"
    scored = metrics.read_text()
    metrics.unlink()  # a hard link to the trained project's file: replaced, not edited
    metrics.write_text(scored.replace("{", "{ ", 1))  # the same numbers, but not the file evaluate wrote
    with pytest.raises(UserError, match=r"^metrics/ changed since the evaluate stage wrote them .*dvc repro evaluate"):
        publish.checked_models(committed.root)
    metrics.unlink()
    metrics.write_text(scored)
    write_untrained_like(committed.root / "models" / "resnet18.pt", ["resnet34"])  # other weights than scored
    with pytest.raises(UserError) as refused:
        publish.checked_models(committed.root)
    assert str(refused.value).startswith("metrics/ do not match models/resnet34.pt: evaluate scored a file with md5 ")
    assert "Run `dvc repro evaluate`" in str(refused.value) and "\n" not in str(refused.value)


def test_nothing_left_the_machine(server, outbound):
    """Every server of this module ran with its proxies pointing at the recorder."""
    assert outbound.requests == []


def test_on_exit_the_app_says_where_the_time_went_and_leaves_no_file(app):
    """Last: stops the module's server as a service manager does (SIGTERM)."""
    assert app.stop() == 0, app.output()
    assert list(app.temp.iterdir()) == [], "uploads or examples left after the app exited"
    served = re.search(r"served (\d+) requests: .* (\d+) images in (\d+) forward passes", app.output())
    assert served, app.output()
    images, passes = int(served[2]), int(served[3])
    assert int(served[1]) >= 16 and passes < images, served[0]  # some concurrent requests shared a pass
