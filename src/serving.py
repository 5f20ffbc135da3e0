"""The app as a service: its limits, its uploads and batched forward passes under concurrent load.

app.py's handlers run in Gradio's worker threads, up to `Limits.concurrency` at once. Each decodes
its own upload (Uploads), so a bad file fails its own request alone, with its own message, and then
hands the 32x32 pixels to the Batcher, whose single thread runs one forward pass for the requests
whose images arrive within `batch_wait_ms` (at most `max_batch_size` images; it waits only while
other requests are decoding). Gradio's own `batch=True` would fail every request of a batch on one
bad file, and would decode in one thread. Uploads are deleted once decoded.
"""
from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image

from src import images
from src.classifier import Classifier

MB = 1 << 20  # bytes: the unit of --max-file-size, as Gradio's "10mb" and its page ("10 Mb") count it
# An image over LARGE pixels that is not a JPEG (a JPEG decodes at reduced scale, src/images.py)
# takes up to ~6 bytes a pixel while decoded: at Pillow's limit (89.5 million pixels) about 500 MB.
# At most LARGE_AT_ONCE of them decode at once, so a burst of small PNG files that claim huge
# sizes cannot take `concurrency` x 500 MB; the others wait their turn.
LARGE = 16_000_000  # pixels
LARGE_AT_ONCE = 2
# An upload that no request decoded (its request was refused, or it was sent alone) is deleted
# after this long, so that uploading without asking cannot fill the disk.
UNUSED_UPLOAD_S = 600  # seconds


@dataclass(frozen=True)
class Limits:
    """Every knob of the service in one place (app.py's flags of the same names)."""
    max_file_size: float = 10.0  # MB per upload; Gradio stops reading a bigger one and refuses it
    concurrency: int = 16        # requests handled at once (each decodes its own upload)
    queue_size: int = 256        # requests waiting for a handler; more are refused ("queue is full")
    max_batch_size: int = 32     # images in one forward pass
    batch_wait_ms: float = 10.0  # ms the batcher waits for images being decoded after the first one

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size * MB)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        help = {"max_file_size": "MB per upload", "concurrency": "requests handled at once",
                "queue_size": "requests waiting beyond those; more are refused",
                "max_batch_size": "images per forward pass (1: no batching)",
                "batch_wait_ms": "ms to wait for more images before a forward pass"}
        for spec in fields(Limits):
            parser.add_argument(f"--{spec.name.replace('_', '-')}", type=type(spec.default), default=spec.default,
                                metavar="N", help=f"{help[spec.name]} (default {spec.default:g})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        limits = cls(**{spec.name: getattr(args, spec.name) for spec in fields(cls)})
        wrong = [spec.name for spec in fields(cls)
                 if getattr(limits, spec.name) < 0 or getattr(limits, spec.name) == 0 and spec.name != "batch_wait_ms"]
        if wrong:
            raise ValueError(", ".join(f"--{name.replace('_', '-')} {getattr(limits, name):g}" for name in wrong)
                             + ": must be above 0 (--batch-wait-ms: 0 or more)")
        return limits


@dataclass
class Stats:
    """Where a server's time went, summed over its requests (printed when it exits)."""
    requests: int = 0
    decode_s: float = 0.0
    forward_s: float = 0.0
    batches: int = 0
    images: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: float) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def line(self) -> str:
        mean = self.images / self.batches if self.batches else 0
        return (f"served {self.requests} requests: decoding {self.decode_s:.1f} s (handler threads), "
                f"{self.images} images in {self.batches} forward passes (mean batch {mean:.1f}) "
                f"{self.forward_s:.1f} s")


class Batcher:
    """One thread that classifies the images of concurrent requests together.

    `probabilities(model, pixels)` blocks until the forward pass that included the image is done.
    Batched and alone, an image gets the same probabilities (eval mode: no batch statistics).
    A request decoding its image inside `arriving()` is one the batcher waits for (up to
    `wait_ms`); when no other image is on its way, a pass starts at once: a lone user waits for
    nothing.
    """

    def __init__(self, max_batch_size: int, wait_ms: float, stats: Stats | None = None):
        self.max_batch_size, self.wait_s = max_batch_size, wait_ms / 1000
        self.stats = stats or Stats()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._arriving = 0  # requests decoding their image, whose pixels will come here
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="batcher", daemon=True).start()

    @contextmanager
    def arriving(self) -> Iterator[None]:
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def probabilities(self, model: Classifier, pixels: np.ndarray) -> np.ndarray:
        """float32 (classes,) softmax of one uint8 (32, 32, 3) image."""
        future: Future = Future()
        self._requests.put((model, pixels, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            batch = self._collect()
            for model in {id(m): m for m, _, _ in batch}.values():  # a pass per model, in arrival order
                mine = [(pixels, future) for m, pixels, future in batch if m is model]
                self._forward(model, mine)

    def _collect(self) -> list:
        batch = [self._requests.get()]  # waits for the first request
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._requests.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not self._arriving:  # no other image is on its way
                break
            try:
                batch.append(self._requests.get(timeout=min(left, 0.001)))
            except queue.Empty:
                pass
        return batch

    def _forward(self, model: Classifier, requests: list[tuple[np.ndarray, Future]]) -> None:
        start = time.perf_counter()
        try:
            probabilities = model.probabilities(np.stack([pixels for pixels, _ in requests]))
        except Exception as error:  # noqa: BLE001 -- each waiting request re-raises it
            for _, future in requests:
                future.set_exception(error)
            return
        self.stats.add(forward_s=time.perf_counter() - start, batches=1, images=len(requests))
        for (_, future), row in zip(requests, probabilities):
            future.set_result(row)


class Uploads:
    """Uploaded files decoded once, then deleted from the server's disk.

    The page sends the same upload again for its follow-up requests (another model, all models
    side by side), so the decoded pixels (3 KB each; an error, for a bad file) are kept for the
    last `keep` uploads. `served` is the set of files users uploaded (Gradio's own record of
    them): only those are deleted, never the examples.
    """

    def __init__(self, served: set, keep: int = 1024, stats: Stats | None = None):
        self.served, self.keep = served, keep
        self.stats = stats or Stats()
        self._decoded: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._large = threading.BoundedSemaphore(LARGE_AT_ONCE)

    def pixels(self, path: str) -> np.ndarray:
        """uint8 (32, 32, 3) of the upload at `path`; an images.ImageError says what is wrong."""
        with self._lock:
            future = self._decoded.get(path)
            mine = future is None
            if mine:  # decode it here; requests naming the same file meanwhile wait for this one
                future = self._decoded[path] = Future()
            self._decoded.move_to_end(path)
            while len(self._decoded) > self.keep:
                self._decoded.popitem(last=False)
        if mine:
            start = time.perf_counter()
            try:
                future.set_result(images.load_image(path, self._decode_slot))
            except images.ImageError as error:  # kept without its traceback, which holds the decoder's frames
                future.set_exception(images.ImageError(str(error)))
            self.stats.add(decode_s=time.perf_counter() - start)
        self.remove(path)  # also a copy uploaded again after the first one was decoded
        return future.result()

    def sweep(self, max_age_s: float = UNUSED_UPLOAD_S) -> None:
        """Delete the uploads older than `max_age_s` that no request has decoded."""
        now = time.time()
        for path in list(self.served):  # a copy: Gradio adds uploads meanwhile
            try:
                if now - os.stat(path).st_ctime > max_age_s:
                    self.remove(path)
            except FileNotFoundError:
                self.served.discard(path)

    def sweep_every(self, seconds: float) -> None:
        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.sweep()
        threading.Thread(target=loop, name="upload-sweeper", daemon=True).start()

    def _decode_slot(self, image: Image.Image):
        """For an image over LARGE pixels that is not a JPEG, one of the LARGE_AT_ONCE places."""
        return self._large if image.width * image.height > LARGE and image.format != "JPEG" else nullcontext()

    def remove(self, path: str) -> None:
        """Delete the file if a user uploaded it (and it is still there)."""
        if path in self.served:
            self.served.discard(path)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

