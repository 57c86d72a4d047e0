"""A small threaded HTTP server on 127.0.0.1 that serves files with Range requests.

For the remote-scene tests and benchmark: it counts the requests and the body
bytes it sends, and can be told to fail (HTTP 500) or stall after some requests.

    with RangeServer(folder) as server:
        url = server.url("scene.tif")
        ...
        server.bytes_sent, server.requests
"""

from __future__ import annotations

import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeServer:
    """Serve ``root`` on 127.0.0.1 (a free port) in a daemon thread.

    Attributes:
        fail_after: answer HTTP 500 to every GET after this many (None: never).
        stall_after: after this many GETs, hold every request for ``stall_s`` seconds
            without answering (None: never).
        status: answer every request with this HTTP status and no body (None: serve).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.fail_after: int | None = None
        self.stall_after: int | None = None
        self.stall_s = 30.0
        self.status: int | None = None
        self.requests = 0
        self.gets = 0
        self.bytes_sent = 0
        self.ranges: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.gets = self.bytes_sent = 0
            self.ranges.clear()

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _file(self) -> Path | None:
                name = self.path.split("?", 1)[0].lstrip("/")
                path = (server.root / name).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    return None
                return path

            def _begin(self, is_get: bool) -> bool:
                with server._lock:
                    server.requests += 1
                    if is_get:
                        server.gets += 1
                    n = server.gets
                if server.stall_after is not None and is_get and n > server.stall_after:
                    server._stop.wait(server.stall_s)
                    self.close_connection = True
                    return False
                status = server.status
                if server.fail_after is not None and is_get and n > server.fail_after:
                    status = HTTPStatus.INTERNAL_SERVER_ERROR
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                return True

            def do_HEAD(self) -> None:
                if not self._begin(is_get=False):
                    return
                path = self._file()
                if path is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:
                if not self._begin(is_get=True):
                    return
                path = self._file()
                if path is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                size = path.stat().st_size
                start, end, status = 0, size - 1, HTTPStatus.OK
                header = self.headers.get("Range")
                if header:
                    match = _RANGE.match(header.strip())
                    if match is None:  # multi-range requests are not served
                        self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                        return
                    first, last = match.groups()
                    if first:
                        start, end = int(first), min(int(last) if last else size - 1, size - 1)
                    else:  # suffix range: the last N bytes
                        start = max(0, size - int(last))
                    status = HTTPStatus.PARTIAL_CONTENT
                with open(path, "rb") as f:
                    f.seek(start)
                    body = f.read(end - start + 1)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == HTTPStatus.PARTIAL_CONTENT:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                self.wfile.write(body)
                with server._lock:
                    server.bytes_sent += len(body)
                    server.ranges.append((path.name, start, end))

        return Handler


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds (tests only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
