"""The daemon-runner channel (issue 10 item 3, DESIGN.md section 5), with real processes.

The supervisor and the process backend start tests/support/fakerunner.py, which speaks
the runner's channel with runtime/runner.py's own MAC functions. A process that holds
the port the daemon picked (``free_port`` is check-then-use) is never marked healthy
and never receives a kickoff; the instance's secret is in neither argv nor environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout
from crewship.service.kickoffs import KickoffService
from crewship.store.apps import AppStore
from crewship.store.state import Database, now
from runtime.backend import InstanceSpec
from runtime.channel import Peer, RunnerClient, UnprovenReplyError
from runtime.events import InstanceFailedError
from runtime.process import ProcessBackend
from runtime.supervisor import Supervisor

FAKERUNNER = Path(__file__).resolve().parents[1] / "support" / "fakerunner.py"


class Squatter(ThreadingHTTPServer):
    """Answers 200 to everything, like a runner would, and records what it was sent."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(handler) -> None:  # noqa: N805 (the handler, not the server)
                length = int(handler.headers.get("Content-Length") or 0)
                body = handler.rfile.read(length) if length else b""
                self.requests.append((handler.command, handler.path,
                                      dict(handler.headers), body))
                data = json.dumps({"status": "ok", "state": "SUCCESS", "inputs": []}).encode()
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(data)))
                handler.send_header("X-Crewship-Proof", "0" * 64)  # a guess: never valid
                handler.end_headers()
                handler.wfile.write(data)

            do_GET = _answer  # noqa: N815 (http.server's names)
            do_POST = _answer  # noqa: N815

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def squatter() -> Iterator[Squatter]:
    server = Squatter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _spec(root: Path, index: int, port: int, *extra: str) -> InstanceSpec:
    argv = [sys.executable, str(FAKERUNNER), "--port", str(port), "--instance", f"v1.{index}",
            "--max-life", "60", *extra]
    return InstanceSpec("demo", 1, index, argv, {"PATH": os.environ.get("PATH", "")}, root,
                        port)


def _supervisor(layout: Layout, backend: ProcessBackend) -> Supervisor:
    return Supervisor(backend, layout, health_timeout=10.0, drain_timeout=5.0,
                      health_interval=0.05, stop_grace=2.0)


def _deployed_app(db: Database) -> AppStore:
    db.execute("INSERT INTO users (name, is_admin, created_at) VALUES ('root', 1, ?)", now())
    apps = AppStore(db)
    app = apps.create("demo", 1)
    apps.set_live_release(app, 1)
    return apps


def test_a_squatter_on_the_port_is_never_healthy_and_never_receives_a_kickoff(
        tmp_path: Path, squatter: Squatter) -> None:
    """The runner starts slowly (2 s before it binds); meanwhile the squatter holds the port
    and answers every health check with 200, but cannot prove it holds the secret."""
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    apps = _deployed_app(db)

    def taken(index: int, port: int) -> InstanceSpec:  # the squatter got the port first
        return _spec(tmp_path, index, squatter.port, "--health-delay", "2")

    async def body() -> None:
        backend = ProcessBackend(layout)
        sup = _supervisor(layout, backend)
        kickoffs = KickoffService(db, sup)
        try:
            with pytest.raises(InstanceFailedError) as caught:
                await sup.deploy("demo", 1, taken)
            assert "exited with status" in caught.value.reason  # the runner could not bind
            assert sup.endpoints("demo") == []
            app = apps.get("demo")
            assert app is not None
            kickoff_id = await kickoffs.kickoff(app, {"topic": "secret plans"})
            await asyncio.sleep(1.0)
            row = db.one("SELECT state FROM kickoffs WHERE id = ?", kickoff_id)
            assert row is not None
            assert row["state"] == "PENDING"
        finally:
            await kickoffs.aclose()
            await sup.aclose(stop_instances=True)
            await backend.aclose()

    asyncio.run(asyncio.wait_for(body(), 60))
    assert squatter.requests, "the squatter was never probed: the test proved nothing"
    assert {(method, path) for method, path, _, _ in squatter.requests} == {("GET", "/healthz")}
    assert not any(b"secret plans" in body for _, _, _, body in squatter.requests)
    db.close()


def test_a_reply_without_the_runners_proof_is_refused(squatter: Squatter) -> None:
    async def body() -> None:
        client = RunnerClient(timeout=5)
        try:
            with pytest.raises(UnprovenReplyError):
                await client.call(Peer("127.0.0.1", squatter.port, "ab" * 32), "GET", "/healthz")
        finally:
            await client.aclose()

    asyncio.run(body())


def test_the_instance_secret_is_in_neither_argv_nor_environment_nor_log(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.ensure()

    async def body() -> None:
        backend = ProcessBackend(layout)
        sup = _supervisor(layout, backend)
        try:
            await sup.deploy("demo", 1, lambda index, port: _spec(tmp_path, index, port))
            (endpoint,) = sup.endpoints("demo")
            secret = endpoint.secret
            assert len(secret) >= 32
            stored = layout.secrets / endpoint.instance_id
            assert stored.read_text() == secret
            assert stored.stat().st_mode & 0o777 == 0o600
            assert layout.secrets.stat().st_mode & 0o777 == 0o700
            (status,) = sup.status("demo").instances
            assert status.pid is not None
            proc = Path(f"/proc/{status.pid}")
            for name in ("cmdline", "environ"):
                assert secret.encode() not in (proc / name).read_bytes(), name
            assert secret not in (layout.app_logs("demo") / "app.log").read_text()
            unsigned = RunnerClient(timeout=5)
            try:  # a caller with the wrong secret gets 401, which proves nothing either
                with pytest.raises(UnprovenReplyError):
                    await unsigned.call(Peer(endpoint.host, endpoint.port, "00" * 32),
                                        "GET", "/healthz")
            finally:
                await unsigned.aclose()
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
        assert list(layout.secrets.iterdir()) == []  # a stopped instance's secret is gone

    asyncio.run(asyncio.wait_for(body(), 60))
