"""A tiny webhook/alert receiver on 127.0.0.1 for tests (stdlib, a background thread).

    with Receiver() as rx:
        url = rx.url("/alerts")                      # http://127.0.0.1:PORT/alerts
        rx.fail_first("/flaky", 2)                   # answer 500 to the first 2 POSTs there
        ...
        bodies = rx.wait_for("/alerts", count=1)     # JSON bodies received with a 2xx
        rx.attempts("/flaky")                        # every POST, answered or refused
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = {"unparsable": raw.decode(errors="replace")}
        with self.server.lock:
            self.server.hosts.append(self.headers.get("Host", ""))
            self.server.auth.append((self.path, self.headers.get("Authorization")))
        status = self.server.record(self.path, body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[tuple[str, Any]] = []
        self.tried: list[tuple[str, Any]] = []
        self.failures: dict[str, int] = {}
        self.hosts: list[str] = []   # the Host header of every POST
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization) of every POST

    def record(self, path: str, body: Any) -> int:
        with self.lock:
            self.tried.append((path, body))
            if self.failures.get(path, 0) > 0:
                self.failures[path] -= 1
                return 500
            self.received.append((path, body))
            return 204


class Receiver:
    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, name="receiver",
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def fail_first(self, path: str, times: int) -> None:
        with self._server.lock:
            self._server.failures[path] = times

    def bodies(self, path: str) -> list[Any]:
        with self._server.lock:
            return [body for p, body in self._server.received if p == path]

    def attempts(self, path: str) -> list[Any]:
        with self._server.lock:
            return [body for p, body in self._server.tried if p == path]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def authorizations(self, path: str) -> list[str | None]:
        """The ``Authorization`` header of every POST to ``path`` (None: none sent)."""
        with self._server.lock:
            return [value for p, value in self._server.auth if p == path]

    def host_headers(self) -> list[str]:
        with self._server.lock:
            return list(self._server.hosts)

    def wait_for(self, path: str, count: int = 1, timeout: float = 60.0,
                 where: Any = None) -> list[Any]:
        """At least ``count`` bodies received at ``path`` (matching ``where(body)``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [b for b in self.bodies(path) if where is None or where(b)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} POSTs to {path} within "
                                     f"{timeout}s: {self.bodies(path)}")
            time.sleep(0.1)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
