"""The HTTP API the daemon speaks to (signed requests, proven replies), and ``main``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from .human import abort_waiting
from .output import LinePrefixer, install_output, say
from .project import KINDS, load_project
from .runs import Runner, not_found, with_webhooks
from .signing import PROOF_HEADER, SIGNATURE_HEADER, read_secret, response_mac, signature_valid
from .webhooks import WebhookLog, wait_for_news

TELEMETRY_ENV = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true",
                 "CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_VERSION_CHECK": "true"}

LONG_POLL_MAX = 60.0
DRAIN_ACK_WAIT = 30.0  # after the last run ended, how long a draining runner waits for acks



RUN_PATH = re.compile(r"^/runs/([^/]+)(/stop|/ack|/resume)?$")
MAX_BODY = 4 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0): no idle keep-alive sockets to go stale."""

    server: RunnerServer
    signature = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the daemon logs its own requests; kickoffs log their lifecycle."""

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.signature:
            self.send_header(PROOF_HEADER, response_mac(self.server.secret, self.signature, status, data))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the caller gave up
            self.wfile.write(data)

    def _authenticated(self, method: str) -> bytes | None:
        """The request's body if it carries a valid signature; otherwise 401 and None."""
        declared = self.headers.get("Content-Length") or "0"
        length = int(declared) if declared.isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            self.reply(400, {"error": "Bad Request", "message": "bad Content-Length"})
            return None
        body = self.rfile.read(length) if length else b""
        header = self.headers.get(SIGNATURE_HEADER) or ""
        if not signature_valid(self.server.secret, header, method, self.path, body):
            self.reply(401, {"error": "Unauthorized", "message": "missing or invalid request signature"})
            return None
        self.signature = header
        return body

    def do_GET(self) -> None:
        if self._authenticated("GET") is None:
            return
        runner = self.server.runner
        path, _, query = self.path.partition("?")
        match = RUN_PATH.match(path)
        if path == "/healthz":
            project, draining = runner.project, runner.draining
            health = {"status": "draining" if draining else "ok", "kind": project.kind}
            health.update(inputs=project.inputs, running=runner.running())
            self.reply(503 if draining else 200, health)
        elif path == "/inputs":
            self.reply(200, runner.project.describe())
        elif match and not match.group(2):
            self._status(match.group(1), _query_number(query, "wait", LONG_POLL_MAX),
                         _query_number(query, "after", None), _query_number(query, "human", None),
                         "trace=1" in query.split("&"))
        else:
            self.reply(404, {"error": "Not Found", "message": f"no route GET {path}"})

    def _status(self, kickoff_id: str, wait: float | None, after: float | None,
                human: float | None, trace: bool = False) -> None:
        """``human``: the ``human_version`` the caller saw (a long poll also ends when a
        request for human input starts or ends); ``trace``: a running run's spans so far."""
        run = self.server.runner.runs.get(kickoff_id)
        after_n = None if after is None else int(after)
        if run is not None and wait:
            wait_for_news(run, wait, after_n, None if human is None else int(human))
        if run is None:
            self.reply(404, not_found(kickoff_id))
        else:
            body = with_webhooks(run, after_n)
            if trace and run.state == "RUNNING" and run.trace is not None:
                body["trace"] = run.trace.snapshot()  # the spans so far (GET .../trace)
            self.reply(200, body)

    def do_POST(self) -> None:
        body = self._authenticated("POST")
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        match = RUN_PATH.match(path)
        if match and match.group(2) == "/stop":
            self.reply(*self.server.runner.stop(match.group(1)))
        elif match and match.group(2) == "/ack":
            self.reply(*self.server.runner.acknowledge(match.group(1)))
        elif match and match.group(2) == "/resume":
            self._resume(match.group(1), body)
        elif path == "/runs":
            self._kickoff(body)
        else:
            self.reply(404, {"error": "Not Found", "message": f"no route POST {path}"})

    def _resume(self, kickoff_id: str, raw: bytes) -> None:
        """The human's answer to a run waiting for human input (human.py)."""
        run = self.server.runner.runs.get(kickoff_id)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self.reply(400, {"error": "Bad Request", "message": f"invalid JSON: {exc}"})
            return
        if run is None:
            self.reply(404, not_found(kickoff_id))
        else:
            self.reply(*run.gate.answer(body))

    def _kickoff(self, raw: bytes) -> None:
        runner = self.server.runner
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self.reply(400, {"error": "Bad Request", "message": f"invalid JSON: {exc}"})
            return
        inputs = body.get("inputs", {}) if isinstance(body, dict) else None
        kickoff_id = str(body.get("kickoff_id") or uuid.uuid4()) if isinstance(body, dict) else ""
        if not isinstance(inputs, dict):
            self.reply(400, {"error": "Bad Request", "message": "inputs must be a JSON object"})
            return
        if runner.draining and kickoff_id not in runner.runs:  # a retry still gets its status
            self.reply(503, {"error": "Service Unavailable", "message": "runner is stopping"})
            return
        hooks = body.get("webhooks")
        log = WebhookLog(hooks, kickoff_id, body.get("meta")) if isinstance(hooks, dict) else None
        run, created = runner.start(kickoff_id, inputs, log)
        self.reply(202 if created else 200, run.status())


def _query_number(query: str, name: str, cap: float | None) -> float | None:
    """``name`` of the query string as a number >= 0 (capped), or None when absent or bad."""
    try:
        value = max(0.0, float(parse_qs(query)[name][0]))
    except (KeyError, ValueError):
        return None
    return value if cap is None else min(value, cap)


class RunnerServer(ThreadingHTTPServer):
    daemon_threads = True  # a long poll must not hold up the exit
    allow_reuse_address = True  # TIME_WAIT only: Linux never binds over a live listener
    request_queue_size = 1024  # the listen backlog: bursts of connections queue, not fail

    def __init__(self, address: tuple[str, int], runner: Runner, secret: bytes) -> None:
        super().__init__(address, Handler)
        self.runner = runner
        self.secret = secret


def _drain(server: RunnerServer) -> None:
    """Let running kickoffs end, then give the daemon a while to collect their results."""
    while server.runner.running():
        time.sleep(0.1)
    deadline = time.monotonic() + DRAIN_ACK_WAIT
    while server.runner.unacknowledged() and time.monotonic() < deadline:
        time.sleep(0.1)
    server.shutdown()


def install_signals(server: RunnerServer) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        if server.runner.draining:
            return
        server.runner.draining = True
        name = signal.Signals(signum).name
        say(f"{name} received: draining {server.runner.running()} running kickoff(s)")
        abort_waiting(server.runner.runs.values(), (
            "the instance stopped (a restart or deploy) while the kickoff waited for human "
            "input: kick it off again"))
        threading.Thread(target=_drain, args=(server,), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def warm_up() -> None:
    """Import what the first LLM call would import lazily (the OpenAI SDK's resources, ~4 s)."""
    with contextlib.suppress(Exception):
        importlib.import_module("openai.resources")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crewship_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--app-dir", required=True, type=Path)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--package", default="")
    parser.add_argument("--definition")
    parser.add_argument("--entrypoint")  # pkg.mod:callable
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--instance", default="runner")
    parser.add_argument("--secret-file", default="-", help="the instance's secret (default: stdin)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret = read_secret(args.secret_file)
    except (OSError, ValueError) as exc:
        print(f"crewship_runner: {exc}: the daemon passes it when it starts an instance", file=sys.stderr)
        return 2
    for key, value in TELEMETRY_ENV.items():
        os.environ.setdefault(key, value)
    install_output(args.instance)
    app_dir = args.app_dir.resolve()
    os.chdir(app_dir)
    for entry in (app_dir, app_dir / "src"):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))
    started = time.monotonic()
    say(f"loading {args.kind} from {app_dir}")
    try:
        runner = Runner(load_project(args))
        server = RunnerServer((args.host, args.port), runner, secret)
    except Exception:
        say("failed to load the crew:")
        traceback.print_exc()
        return 1
    install_signals(server)
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    say(f"loaded in {time.monotonic() - started:.1f}s; inputs: {', '.join(runner.project.inputs)}")
    say(f"listening on {args.host}:{server.server_address[1]}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    say("stopped")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, LinePrefixer):
            stream.close_line()
    return 0

