"""The runner's view of crewAI's event bus (runtime/runner/events.py): each run's trace and
the events a kickoff streams, from real crewAI projects against the fake LLM."""
# ruff: noqa: F811 - the fixtures come from test_runner.py

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from builder.release import copy_runner
from tests.integration.test_runner import (  # noqa: F401 - the fixtures of that module
    FIXTURES,
    RUNNER,
    TERMINAL,
    call,
    env_for,
    llm,
    run_to_end,
    serving,
)

pytestmark = pytest.mark.slow

SPAN_KEYS = {"id", "parent", "kind", "name", "start", "end", "status", "error", "tokens",
             "input", "output"}


def _by_kind(spans: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == kind]


def test_a_crew_run_carries_its_trace(serving: Any) -> None:
    runner = serving("classic_crew")
    status, body = run_to_end(runner.port, "k-trace", FIXTURES["classic_crew"]["kickoff"])
    assert (status, body["state"]) == (200, "SUCCESS"), body
    spans = body["trace"]
    assert all(set(s) == SPAN_KEYS for s in spans), spans
    [crew] = _by_kind(spans, "crew")
    [task] = _by_kind(spans, "task")
    [agent] = _by_kind(spans, "agent")
    llms = _by_kind(spans, "llm")
    assert llms
    assert crew["parent"] is None
    assert task["parent"] == crew["id"]
    assert agent["parent"] == task["id"]
    assert all(c["parent"] == agent["id"] for c in llms)
    assert task["name"] == "research_task"
    assert "quantum kittens" in (task["input"] or "")
    assert json.loads(crew["input"]) == FIXTURES["classic_crew"]["kickoff"]
    assert all(s["status"] == "ok" and s["end"] >= s["start"] for s in spans), spans
    assert crew["start"] <= task["start"] <= agent["start"] <= llms[0]["start"]
    assert llms[-1]["end"] <= crew["end"]
    assert all(c["tokens"]["total"] > 0 for c in llms)
    total = sum(c["tokens"]["total"] for c in llms)
    assert crew["tokens"]["total"] == task["tokens"]["total"] == total
    assert body["token_usage"]["total_tokens"] == total  # what crewAI itself counted
    assert "FAKE-LLM-ANSWER" in (llms[-1]["output"] or "")


def test_a_failed_run_has_error_spans(serving: Any) -> None:
    runner = serving("classic_crew")
    inputs = {"topic": "FAKE-LLM-FAIL please", "audience": "nobody"}
    _, body = run_to_end(runner.port, "k-fail", inputs)
    assert body["state"] == "FAILURE", body
    spans = body["trace"]
    assert _by_kind(spans, "crew")[0]["status"] == "error"
    assert any(s["kind"] == "llm" and s["status"] == "error" and s["error"] for s in spans)


def test_a_flow_trace_has_methods_and_streams_flow_events(serving: Any) -> None:
    runner = serving("flow")
    wanted = ["flow_started", "method_execution_finished", "flow_finished"]
    status, body = call(runner.port, "POST", "/runs", {
        "kickoff_id": "k-flow", "inputs": {"topic": "otters"},
        "webhooks": {"events": wanted}})
    assert status == 202, body
    while body.get("state") not in TERMINAL:
        status, body = call(runner.port, "GET", "/runs/k-flow?wait=20&after=0")
    assert body["state"] == "SUCCESS", body
    spans = body["trace"]
    [flow] = _by_kind(spans, "flow")
    methods = _by_kind(spans, "method")
    assert methods
    assert all(m["parent"] == flow["id"] for m in methods)
    events = [e["body"] for e in body["webhook_events"]]
    assert {e["type"] for e in events} == set(wanted)
    assert events[0]["type"] == "flow_started"
    assert events[-1]["type"] == "flow_finished"
    assert len([e for e in events if e["type"] == "method_execution_finished"]) == len(methods)
    assert all(e["execution_id"] == "k-flow" and e["id"] and e["timestamp"] for e in events)
    assert call(runner.port, "POST", "/runs/k-flow/ack")[0] == 200


def test_streamed_events_come_in_order_as_they_happen(serving: Any) -> None:
    runner = serving("classic_crew")
    wanted = ["crew_kickoff_started", "task_started", "llm_call_started", "llm_call_completed",
              "task_completed", "crew_kickoff_completed", "no_such_event"]
    status, body = call(runner.port, "POST", "/runs", {
        "kickoff_id": "k-stream", "inputs": FIXTURES["classic_crew"]["kickoff"],
        "webhooks": {"events": wanted, "step": True}})
    assert status == 202, body
    seen: list[dict[str, Any]] = []
    polls = 0
    while True:  # as the daemon polls: from the number it has on
        status, body = call(runner.port, "GET", f"/runs/k-stream?wait=20&after={len(seen)}")
        seen += body["webhook_events"]
        polls += 1
        if body.get("state") in TERMINAL:
            break
    assert body["state"] == "SUCCESS", body
    assert polls > 1  # the long poll answered on news, before the end
    types = [e["body"]["type"] for e in seen if e["kind"] == "event"]
    assert types[0] == "crew_kickoff_started"
    assert types[1] == "task_started"
    assert types[-2:] == ["task_completed", "crew_kickoff_completed"]
    middle = types[2:-2]
    assert middle
    assert middle[::2] == ["llm_call_started"] * (len(middle) // 2)
    assert {e["kind"] for e in seen} == {"event", "step"}
    started = next(e["body"] for e in seen if e["body"].get("type") == "llm_call_started")
    assert started["data"]["model"]
    assert any("quantum kittens" in str(m) for m in started["data"]["messages"])
    done = next(e["body"] for e in seen if e["body"].get("type") == "llm_call_completed")
    assert done["data"]["usage"]["total_tokens"] > 0
    assert call(runner.port, "POST", "/runs/k-stream/ack")[0] == 200


TOOL_SCRIPT = r"""
import json, sys
from datetime import datetime, timezone
sys.path.insert(0, sys.argv[1])
from crewship_runner.events import Recorder
from crewai.events import crewai_event_bus
from crewai.events.types.crew_events import CrewKickoffCompletedEvent, CrewKickoffStartedEvent
from crewai.events.types.tool_usage_events import (ToolUsageErrorEvent, ToolUsageFinishedEvent,
                                                   ToolUsageStartedEvent)

recorder = Recorder("k-tools", None)
now = datetime.now(timezone.utc)
with recorder.listening():
    crewai_event_bus.emit(None, CrewKickoffStartedEvent(crew_name="tools", inputs={"q": "kelp"}))
    crewai_event_bus.emit(None, ToolUsageStartedEvent(tool_name="search", tool_args={"q": "kelp"}))
    crewai_event_bus.emit(None, ToolUsageFinishedEvent(
        tool_name="search", tool_args={"q": "kelp"}, started_at=now, finished_at=now,
        output="3 results"))
    crewai_event_bus.emit(None, ToolUsageStartedEvent(tool_name="fetch", tool_args="http://x"))
    crewai_event_bus.emit(None, ToolUsageErrorEvent(tool_name="fetch", tool_args="http://x",
                                                    error=ValueError("no route")))
    crewai_event_bus.emit(None, ToolUsageStartedEvent(tool_name="hang", tool_args={}))
crewai_event_bus.emit(None, CrewKickoffCompletedEvent(crew_name="other", output="not ours"))
print("SPANS " + json.dumps(recorder.finish("RuntimeError: stopped")), flush=True)
"""


def test_tool_calls_become_spans_under_their_scope(env_for: Any, tmp_path: Path) -> None:
    """crewAI's own tool events, emitted through its bus (the fake LLM never calls a tool)."""
    _, python = env_for("classic_crew")
    copy_runner(RUNNER, tmp_path / "crewship_runner")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true",
           "CREWAI_TRACING_ENABLED": "false"}
    out = subprocess.run([str(python), "-c", TOOL_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, check=True, cwd=tmp_path, env=env)
    [line] = [x for x in out.stdout.splitlines() if x.startswith("SPANS ")]
    spans = json.loads(line.removeprefix("SPANS "))
    assert [(s["kind"], s["name"]) for s in spans] == [
        ("crew", "tools"), ("tool", "search"), ("tool", "fetch"), ("tool", "hang")]
    crew, search, fetch, hang = spans
    assert all(s["parent"] == crew["id"] for s in (search, fetch, hang))
    assert (search["status"], json.loads(search["input"]), search["output"]) == (
        "ok", {"q": "kelp"}, "3 results")
    assert (fetch["status"], fetch["input"]) == ("error", "http://x")
    assert "no route" in fetch["error"]
    # the run ended (failed) with these still open: the events after it are not its own
    assert (hang["status"], hang["error"]) == ("error", "RuntimeError: stopped")
    assert (crew["status"], crew["output"]) == ("error", None)
    assert all(s["end"] is not None for s in spans)
