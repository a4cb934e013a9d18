"""A stand-in for the in-crew runner (stdlib only), for runtime integration tests.

    python fakerunner.py --port N --instance v1.1 [--host 127.0.0.1]
        [--health-delay S]   sleep before binding the port (a slow crew import)
        [--never-healthy]    /healthz answers 503
        [--crash-after S]    exit with --exit-status after S seconds (0: before binding)
        [--exit-status N]
        [--ignore-term]      ignore SIGTERM (to test the SIGKILL escalation)
        [--max-life S]       exit anyway after S seconds: a test that leaks us is bounded

``GET /healthz`` -> 200 ``{"status": "ok"}``; ``GET /work?seconds=S`` sleeps S and
answers 200. Like the real runner it reads its channel secret from stdin, refuses
unsigned requests (401) and proves every reply (runtime/runner.py's MAC functions).
SIGTERM: refuse new work (503), finish what is running, exit 0.
Every line printed is ``<ISO ts>Z [<instance>] text``, like the real runner's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from runtime.runner.signing import (
    PROOF_HEADER,
    SIGNATURE_HEADER,
    read_secret,
    response_mac,
    signature_valid,
)

INSTANCE = "runner"
STATE: dict[str, Any] = {"draining": False, "in_flight": 0, "healthy": True}
SECRET = b""
LOCK = threading.Lock()


def say(text: str) -> None:
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    sys.stdout.write(f"{stamp} [{INSTANCE}] {text}\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        signature = self.headers.get(SIGNATURE_HEADER) or ""
        if status != 401:
            self.send_header(PROOF_HEADER, response_mac(SECRET, signature, status, data))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        signature = self.headers.get(SIGNATURE_HEADER) or ""
        if not signature_valid(SECRET, signature, "GET", self.path, b""):
            self.reply(401, {"error": "unsigned"})
            return
        if url.path == "/healthz":
            ok = STATE["healthy"] and not STATE["draining"]
            self.reply(200 if ok else 503, {"status": "ok" if ok else "unhealthy",
                                            "pid": os.getpid()})
        elif url.path == "/work":
            self.work(float(parse_qs(url.query).get("seconds", ["1"])[0]))
        else:
            self.reply(404, {"error": "not found"})

    def work(self, seconds: float) -> None:
        with LOCK:
            if STATE["draining"]:
                self.reply(503, {"error": "draining"})
                return
            STATE["in_flight"] += 1
        say(f"work started ({seconds:g} s)")
        time.sleep(seconds)
        say("work done")
        self.reply(200, {"done": True, "pid": os.getpid()})
        with LOCK:
            STATE["in_flight"] -= 1


def drain(server: ThreadingHTTPServer) -> None:
    while True:
        with LOCK:
            if STATE["in_flight"] == 0:
                break
        time.sleep(0.05)
    server.shutdown()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance", default="runner")
    parser.add_argument("--health-delay", type=float, default=0.0)
    parser.add_argument("--never-healthy", action="store_true")
    parser.add_argument("--crash-after", type=float)
    parser.add_argument("--exit-status", type=int, default=1)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--max-life", type=float, default=120.0)
    return parser.parse_args(argv)


def exit_later(seconds: float, status: int, text: str) -> None:
    def fire() -> None:
        say(text)
        os._exit(status)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main(argv: list[str]) -> int:
    global INSTANCE, SECRET
    args = parse(argv)
    SECRET = read_secret("-")
    INSTANCE = args.instance
    STATE["healthy"] = not args.never_healthy
    say(f"starting (pid {os.getpid()})")
    exit_later(args.max_life, 99, "max life reached")
    if args.crash_after is not None:
        if args.crash_after <= 0:
            say(f"crashing with status {args.exit_status}")
            return int(args.exit_status)
        exit_later(args.crash_after, args.exit_status, "crashing")
    time.sleep(args.health_delay)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def on_term(signum: int, frame: Any) -> None:
        if args.ignore_term:
            say("SIGTERM ignored")
            return
        with LOCK:
            STATE["draining"] = True
            running = STATE["in_flight"]
        say(f"SIGTERM received: draining {running} request(s)")
        threading.Thread(target=drain, args=(server,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    say(f"listening on {args.host}:{args.port}")
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
