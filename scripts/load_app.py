"""Load test of app.py: many gradio_client users at once, batched against unbatched, on loopback.

    python scripts/load_app.py                      # 32 clients x 20 requests, both modes, two rounds each
    python scripts/load_app.py --clients 8 --requests 5 --width 16 --json

Each mode starts its own server (`python app.py` in a temporary folder holding app.py, the src/
modules it imports and untrained ResNet-18 weights at --width: speed only, as scripts/benchmark.py
--classify): batched is the app's defaults, unbatched is `--concurrency 1 --max-batch-size 1`
(one request at a time, a forward pass each: the app's unbatched mode). Every client sends
--requests requests in turn; 90% are good images (a 32x32 PNG, 640x480, 1920x1080 and 4000x3000
JPEGs), 10% bad files (not an image, a truncated JPEG, one over the upload limit). Each upload
carries a few unique trailing bytes, so every request decodes its own file, as real users' do.
Over-limit files go as a plain HTTP upload (gradio_client would refuse them before sending).

It prints requests/s, p50/p95/p99 latency of the good requests, errors by kind, the server's
peak RSS (VmHWM) and its RSS after each round, and where the server's CPU time went per request:
decoding and forward passes (the server's own account at exit) and the rest (Gradio: upload,
queue, events; HTTP), from the process's CPU time (/proc). It fails (exit 1) when a good request
fails, a bad one does not get its message, the server is down after a round, or its RSS grows by
more than --rss-growth-mb in the second round. Linux only (/proc for RSS). Run it on an otherwise
idle machine: it measures speed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOOD = {"png32": (32, 32, "PNG"), "jpeg640": (640, 480, "JPEG"), "jpeg1080": (1920, 1080, "JPEG"),
        "jpeg12mp": (4000, 3000, "JPEG")}
BAD = ("not_image", "truncated", "over_limit")
# What the app answers each bad kind (its words after "<file name>: "), or the upload route's 413.
EXPECTED = {"not_image": "not an image", "truncated": "truncated or corrupt image",
            "over_limit": "maximum allowed size"}
MODES = {"batched": (), "unbatched": ("--concurrency", "1", "--max-batch-size", "1")}


# --------------------------------------------------------------------------- the files

def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth synthetic photo (gradients and discs, mild noise): JPEG compresses it as a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 100 * np.sin(x / width * rng.uniform(2, 8) + y / height * rng.uniform(2, 8) + phase)
                for phase in rng.uniform(0, 6, 3)]
    image = np.stack(channels, -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 4, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_files(folder: Path, max_file_bytes: int, kinds: tuple[str, ...] = tuple(GOOD)) -> dict[str, bytes]:
    """{kind: file contents} for the good kinds asked for and every bad kind."""
    files = {}
    for seed, kind in enumerate(kinds):
        width, height, fmt = GOOD[kind]
        buffer = io.BytesIO()
        photo(width, height, seed).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        files[kind] = buffer.getvalue()
    jpeg = files.get("jpeg640") or next(v for k, v in files.items() if k.startswith("jpeg"))
    files["not_image"] = b"name,class\ncat.jpg,cat\n" * 40
    files["truncated"] = jpeg[: len(jpeg) // 2]
    files["over_limit"] = np.random.default_rng(0).bytes(max_file_bytes + 100_000)
    return files


SUFFIX = {"png32": ".png", "not_image": ".jpg", "truncated": ".jpg", "over_limit": ".jpg"}


def schedule(clients: int, requests: int, good: tuple[str, ...], seed: int = 0) -> list[list[str]]:
    """Each client's kinds in order: 10% bad (each bad kind in turn), the rest good kinds in turn."""
    total = clients * requests
    bad = total // 10
    kinds = [BAD[i % len(BAD)] for i in range(bad)] + [good[i % len(good)] for i in range(total - bad)]
    np.random.default_rng(seed).shuffle(kinds)
    return [kinds[c * requests:(c + 1) * requests] for c in range(clients)]


# --------------------------------------------------------------------------- a round

@dataclass
class Round:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # good requests, seconds
    outcomes: Counter = field(default_factory=Counter)  # "good ok", "bad: not_image refused", ...
    failures: list[str] = field(default_factory=list)  # what must not happen

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def figures(self) -> dict:
        ms = sorted(1000 * t for t in self.latencies) or [0.0]
        def pct(p: float) -> float:
            return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 1)
        return {"requests": self.requests, "seconds": round(self.seconds, 2),
                "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
                "outcomes": dict(sorted(self.outcomes.items())), "failures": self.failures[:10]}


def run_round(url: str, plan: list[list[str]], files: dict[str, bytes], folder: Path) -> Round:
    """Every client of `plan` in its own thread, with its own gradio_client.Client; model resnet18."""
    result, lock = Round(), threading.Lock()
    folder.mkdir(parents=True, exist_ok=True)
    clients = [Client(url, verbose=False) for _ in plan]  # connected before the clock starts

    def user(index: int, kinds: list[str]) -> None:
        for number, kind in enumerate(kinds):
            path = folder / f"u{index}-{number}-{kind}{SUFFIX.get(kind, '.jpg')}"
            path.write_bytes(files[kind] + f"#{index}-{number}-{time.time_ns()}".encode())  # a unique file
            start = time.perf_counter()
            outcome, failure = request(clients[index], url, path, kind)
            elapsed = time.perf_counter() - start
            path.unlink()
            with lock:
                result.outcomes[outcome] += 1
                if failure:
                    result.failures.append(failure)
                if kind in GOOD and not failure:
                    result.latencies.append(elapsed)

    threads = [threading.Thread(target=user, args=(i, kinds)) for i, kinds in enumerate(plan)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - start
    return result


def request(client: Client, url: str, path: Path, kind: str) -> tuple[str, str | None]:
    """(outcome, failure or None) of one request of `kind`."""
    if kind == "over_limit":  # as a client that does not check first: the server must refuse it
        with path.open("rb") as data:
            response = httpx.post(url + "gradio_api/upload", files=[("files", (path.name, data))], timeout=120)
        refused = response.status_code == 413 and EXPECTED[kind] in response.text
        return f"bad: {kind} refused" if refused else f"bad: {kind} ACCEPTED", \
            None if refused else f"{path.name}: {response.status_code} {response.text[:200]}"
    try:
        value = client.predict(handle_file(str(path)), "resnet18", api_name="/classify")
    except Exception as error:  # noqa: BLE001 -- what the user sees is the point
        message = str(error)
        if kind in GOOD:
            return f"good: {kind} FAILED", f"{path.name}: {type(error).__name__}: {message[:300]}"
        expected = message.startswith(f"{path.name}: {EXPECTED[kind]}") and "/" not in message
        return (f"bad: {kind} refused", None) if expected else \
            (f"bad: {kind} WRONG MESSAGE", f"{path.name}: {message[:300]}")
    if kind in GOOD:
        return ("good: ok", None) if len(value.get("confidences", [])) == 5 else \
            (f"good: {kind} FAILED", f"{path.name}: {value}")
    return f"bad: {kind} ACCEPTED", f"{path.name} was classified: {value.get('label')}"


# --------------------------------------------------------------------------- a server

def write_models_folder(folder: Path, width: int) -> Path:
    """app.py, the modules it imports and an untrained ResNet-18 at `width`: a folder app.py serves."""
    from src import model_file, space
    from src.imports import imported_files
    from src.models.build import build_model
    from src.params import load_params

    for path in imported_files(ROOT / "app.py", ROOT):  # app.py and the project modules it imports
        space.copy(path, folder / path.relative_to(ROOT))
    architecture = load_params(ROOT / "params.yaml").recipe("resnet18").architecture()
    model_file.write(model_file.path_of("resnet18", folder), name="resnet18", architecture=architecture,
                     width=width, state_dict=build_model(architecture, width=width).state_dict(), ema=False,
                     params={"width": width}, prepared_data_hash="", classes=[f"class {i}" for i in range(100)],
                     normalize={"mean": [0.507, 0.487, 0.441], "std": [0.267, 0.256, 0.276]}, history=[],
                     versions={})
    return folder


class Server:
    def __init__(self, folder: Path, args: tuple[str, ...], log: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
        env.pop("PYTHONPATH", None)
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=folder,
                                            env=env, stdout=output, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while not self.up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "config", timeout=5, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def memory_mb(self) -> dict[str, float]:
        """VmRSS (now) and VmHWM (peak) of the server process, in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {key: round(int(re.search(rf"{key}:\s+(\d+) kB", status)[1]) / 1024, 1) for key in ("VmRSS", "VmHWM")}

    def stop(self) -> str:
        """SIGTERM; the server's own account of where its time went (its last line)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        served = [line for line in self.log.read_text().splitlines() if line.startswith("served ")]
        return served[-1] if served else "(no account)"


# --------------------------------------------------------------------------- main

def measure(mode: str, folder: Path, plan: list[list[str]], files: dict[str, bytes], max_file_mb: float,
            rss_growth_mb: float) -> dict:
    server = Server(folder, (*MODES[mode], "--max-file-size", f"{max_file_mb:g}"), folder / f"{mode}.log")
    rounds, rss = [], []
    try:
        cpu_before = server.cpu_seconds()
        for _ in range(2):  # the second, identical round: does memory keep growing?
            rounds.append(run_round(server.url, plan, files, folder / "uploads"))
            if not server.up():
                rounds[-1].failures.append("the server was down after the round")
            rss.append(server.memory_mb())
        peak, cpu = server.memory_mb()["VmHWM"], server.cpu_seconds() - cpu_before
    finally:
        account = server.stop()
    growth = rss[1]["VmRSS"] - rss[0]["VmRSS"]
    failures = [f for r in rounds for f in r.failures]
    if growth > rss_growth_mb:
        failures.append(f"RSS grew by {growth:.0f} MB in the second round (allowed: {rss_growth_mb:g})")
    return {"mode": mode, "rounds": [r.figures() for r in rounds], "peak_rss_mb": peak,
            "rss_after_rounds_mb": [r["VmRSS"] for r in rss], "server": account,
            "time_per_request_ms": split(account, cpu), "failures": failures}


def split(account: str, cpu_seconds: float) -> dict[str, float]:
    """The server's CPU time per request (both rounds): decoding, forward passes (its own account,
    in wall time of the threads doing them) and the rest: Gradio (upload, queue, events), HTTP."""
    found = re.search(r"served (\d+) requests: decoding ([\d.]+) s .* forward passes .*\) ([\d.]+) s", account)
    if not found:
        return {}
    requests, decode, forward = int(found[1]), float(found[2]), float(found[3])
    per = lambda seconds: round(1000 * seconds / max(requests, 1), 1)  # noqa: E731
    return {"cpu": per(cpu_seconds), "decode": per(decode), "forward": per(forward),
            "rest (Gradio, HTTP)": per(max(0.0, cpu_seconds - decode - forward))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--width", type=int, default=64, help="the model's width (64: the standard ResNet-18)")
    parser.add_argument("--max-file-size", type=float, default=10, help="the server's upload limit, MB")
    parser.add_argument("--rss-growth-mb", type=float, default=50, help="allowed RSS growth in round two, MB")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    plan = schedule(args.clients, args.requests, tuple(GOOD))
    with tempfile.TemporaryDirectory(prefix="load-app-") as tmp:
        folder = write_models_folder(Path(tmp) / "app", args.width)
        files = make_files(Path(tmp), int(args.max_file_size * 2**20))
        results = [measure(mode, folder, plan, files, args.max_file_size, args.rss_growth_mb)
                   for mode in args.modes]
    config = {"clients": args.clients, "requests_per_client": args.requests, "width": args.width,
              "cpus": os.cpu_count(), "file_kb": {k: len(v) // 1024 for k, v in files.items()}}
    report(results, config, args.json)
    if any(result["failures"] for result in results):
        sys.exit(1)


def report(results: list[dict], config: dict, as_json: bool) -> None:
    by_mode = {result["mode"]: result for result in results}
    if "batched" in by_mode and "unbatched" in by_mode:
        config["batched_over_unbatched"] = round(
            by_mode["batched"]["rounds"][-1]["requests_per_s"]
            / by_mode["unbatched"]["rounds"][-1]["requests_per_s"], 2)
    if as_json:
        print(json.dumps({"config": config, "results": results}, indent=2))
        return
    print(f"{config['clients']} clients x {config['requests_per_client']} requests, ResNet-18 width {config['width']}, "
          f"{config['cpus']} CPUs; files (KB): {config['file_kb']}")
    print(f"{'mode':<10} {'round':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  outcomes")
    for result in results:
        for number, figures in enumerate(result["rounds"], start=1):
            print(f"{result['mode']:<10} {number:>5} {figures['requests_per_s']:>7} {figures['p50_ms']:>8} "
                  f"{figures['p95_ms']:>8} {figures['p99_ms']:>8}  {figures['outcomes']}")
        print(f"{'':<10} peak RSS {result['peak_rss_mb']} MB, after rounds {result['rss_after_rounds_mb']} MB; "
              f"server: {result['server']}")
        print(f"{'':<10} server CPU per request, ms: {result['time_per_request_ms']}")
        for failure in result["failures"]:
            print(f"{'':<10} FAILED: {failure}")
    if "batched_over_unbatched" in config:
        print(f"batched / unbatched requests/s (second rounds): {config['batched_over_unbatched']}x")


if __name__ == "__main__":
    main()
