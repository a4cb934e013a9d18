"""Kickoff traces over OTLP/HTTP (crewship/service/otlp.py), with the official SDK, to a
collector on 127.0.0.1 that decodes what it gets with OpenTelemetry's own protobufs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from crewship.config import Layout, Settings
from crewship.events import KickoffFinished
from crewship.service.otlp import make_export, traces_url
from crewship.service.platform import Platform
from crewship.service.telemetry import Telemetry
from crewship.store.state import Database
from crewship.urls import Policy


class _Collector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = ExportTraceServiceRequest()
        request.ParseFromString(raw)
        with self.server.lock:
            self.server.requests.append((self.path, request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _span(sid: str, parent: str | None, kind: str, start: float, end: float,
          **extra: Any) -> dict[str, Any]:
    return {"id": sid, "parent": parent, "kind": kind, "name": f"{kind}-{sid}", "start": start,
            "end": end, "status": "ok", "error": None, "tokens": None, "input": None,
            "output": None, **extra}


SPANS = [_span("c", None, "crew", 1000.0, 1004.0,
               tokens={"prompt": 30, "completion": 12, "total": 42}),
         _span("t", "c", "task", 1000.5, 1003.5, input="research kelp"),
         _span("l", "t", "llm", 1001.0, 1002.0, status="error", error="HTTP 500",
               tokens={"prompt": 30, "completion": 12, "total": 42})]


def test_a_finished_kickoffs_trace_reaches_the_collector(collector: _Collector,
                                                         tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    settings = Settings(data_dir=layout.root, allow_private_urls=True, otlp_endpoint=endpoint)
    platform = Platform(settings, layout, db)
    export = make_export(settings.otlp_endpoint, settings.url_policy())
    assert export is not None
    telemetry = Telemetry(settings, platform.metrics, platform.alerts, otlp=export)
    finished = KickoffFinished(app="demo", kickoff_id="k-1", release=3, state="FAILURE",
                               execution_time=4.0, error="HTTP 500", trace=SPANS)

    async def scenario() -> None:
        telemetry.handle(finished)
        await asyncio.sleep(0.5)  # the export runs in a worker thread
        await telemetry.aclose()  # shutdown flushes the batch

    asyncio.run(scenario())
    db.close()
    deadline = time.monotonic() + 10
    while not collector.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {path for path, _ in collector.requests} == {"/v1/traces"}
    spans = {s.name: s for _, r in collector.requests for rs in r.resource_spans
             for ss in rs.scope_spans for s in ss.spans}
    assert set(spans) == {"kickoff", "crew crew-c", "task task-t", "llm llm-l"}
    root, crew, task, llm = (spans[n] for n in ("kickoff", "crew crew-c", "task task-t",
                                                "llm llm-l"))
    assert len({s.trace_id for s in spans.values()}) == 1  # one trace per kickoff
    assert (crew.parent_span_id, task.parent_span_id, llm.parent_span_id) == (
        root.span_id, crew.span_id, task.span_id)
    assert (task.start_time_unix_nano, task.end_time_unix_nano) == (1000_500_000_000,
                                                                   1003_500_000_000)
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (1000 * 10**9, 1004 * 10**9)
    attrs = {a.key: a.value for a in llm.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 30
    assert attrs["gen_ai.usage.output_tokens"].int_value == 12
    assert attrs["crewai.kind"].string_value == "llm"
    assert llm.status.code == 2  # STATUS_CODE_ERROR
    assert llm.status.message == "HTTP 500"
    assert {a.key: a.value.string_value for a in root.attributes}["crewship.kickoff_id"] == "k-1"
    assert {a.key: a.value.string_value for a in task.attributes}["crewai.input"] == "research kelp"


def test_an_endpoint_is_checked_and_an_unset_one_is_off() -> None:
    assert make_export("", Policy()) is None
    assert make_export("http://127.0.0.1:4318", Policy()) is None  # loopback, not allowed
    assert make_export("ftp://collector", Policy(allow_private=True)) is None
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
