"""A static file server on 127.0.0.1, as the download stage meets a remote archive."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files (404 when missing); /truncated/<name> promises the whole file, sends half."""

    protocol_version = "HTTP/1.0"  # one request per connection: closing it ends the body

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        prefix = "/truncated/"
        if not self.path.startswith(prefix):
            return super().do_GET()
        file = Path(self.directory) / self.path[len(prefix):]
        if not file.is_file():
            return self.send_error(404, "File not found")
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@dataclass
class HttpServer:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def truncated_url(self, name: str) -> str:
        """A response whose Content-Length is the file's size but which sends only half."""
        return f"http://127.0.0.1:{self.port}/truncated/{name}"

    def publish(self, path: Path, name: str | None = None) -> str:
        """Serve `path` (hard-linked, or copied) under `name`; return its URL."""
        target = self.root / (name or path.name)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        return self.url(target.name)


@contextmanager
def serving(root: Path) -> Iterator[HttpServer]:
    """An HttpServer over `root` on a free port of 127.0.0.1, shut down on exit."""
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
