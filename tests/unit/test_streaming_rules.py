"""Event streaming's rules (crewship/service/streaming.py) and traces' (traces.py): the
``webhooks`` field checked, credentials sealed, spans cleaned and drawn."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from crewship.errors import InvalidInputError, UnprocessableInputError
from crewship.service.streaming import StreamSpec, parse_webhooks
from crewship.service.traces import MAX_BYTES, clean_spans, timeline
from crewship.store.sealing import Sealer

URL = "https://hooks.example.com/crew"


def test_a_full_webhooks_field_is_read() -> None:
    spec = parse_webhooks({"events": ["crew_kickoff_started", "llm_call_started",
                                      "crew_kickoff_started"],
                           "url": URL, "realtime": True,
                           "authentication": {"strategy": "bearer", "token": "t0k"}})
    assert spec.events == ("crew_kickoff_started", "llm_call_started")  # once each
    assert (spec.url, spec.realtime) == (URL, True)
    assert spec.header() == {"Authorization": "Bearer t0k"}
    basic = parse_webhooks({"events": ["task_completed"], "url": URL, "authentication": {
        "strategy": "basic", "username": "ann", "password": "p:w"}})
    assert basic.realtime is False
    assert basic.header() == {"Authorization": "Basic " + base64.b64encode(b"ann:p:w").decode()}
    assert parse_webhooks({"events": ["my_custom_event"], "url": URL}).header() == {}


BAD: list[tuple[Any, type[Exception], str]] = [
    ("https://x", InvalidInputError, "must be a JSON object"),
    ({"url": URL}, InvalidInputError, "'webhooks.events' must be a list"),
    ({"events": "task_completed", "url": URL}, InvalidInputError, "must be a list"),
    ({"events": [1], "url": URL}, InvalidInputError, "must be a list"),
    ({"events": [], "url": URL}, UnprocessableInputError, "is empty"),
    ({"events": ["Task Completed"], "url": URL}, UnprocessableInputError, "no crewAI event"),
    ({"events": ["e"] * 101, "url": URL}, UnprocessableInputError, "over the limit"),
    ({"events": ["task_completed"]}, InvalidInputError, "'webhooks.url' is required"),
    ({"events": ["task_completed"], "url": "ftp://x"}, InvalidInputError, "http://"),
    ({"events": ["task_completed"], "url": "http://[::1"}, InvalidInputError, "webhooks.url"),
    ({"events": ["task_completed"], "url": URL, "realtime": "yes"}, InvalidInputError,
     "true or false"),
    ({"events": ["task_completed"], "url": URL, "realTime": True}, UnprocessableInputError,
     "unknown field(s) 'realTime'"),
    ({"events": ["task_completed"], "url": URL, "authentication": "t0k"}, InvalidInputError,
     "must be an object"),
    ({"events": ["task_completed"], "url": URL, "authentication": {"strategy": "oauth"}},
     UnprocessableInputError, "'bearer' or 'basic'"),
    ({"events": ["task_completed"], "url": URL, "authentication": {"strategy": "bearer"}},
     UnprocessableInputError, "token' is required"),
    ({"events": ["task_completed"], "url": URL,
      "authentication": {"strategy": "bearer", "token": "a\r\nX-Evil: 1"}},
     UnprocessableInputError, "no control characters"),
    ({"events": ["task_completed"], "url": URL,
      "authentication": {"strategy": "basic", "username": "a:b", "password": "c"}},
     UnprocessableInputError, "may not contain ':'"),
    ({"events": ["task_completed"], "url": URL,
      "authentication": {"strategy": "basic", "username": "a"}},
     UnprocessableInputError, "password' is required"),
    ({"events": ["task_completed"], "url": URL,
      "authentication": {"strategy": "bearer", "token": "t", "user": "x"}},
     UnprocessableInputError, "unknown field(s) 'user'"),
]


@pytest.mark.parametrize(("value", "error", "words"), BAD)
def test_a_bad_webhooks_field_is_refused_with_a_reason(value: Any, error: type[Exception],
                                                       words: str) -> None:
    with pytest.raises(error) as caught:
        parse_webhooks(value)
    assert type(caught.value) is error
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credentials_are_stored_sealed(tmp_path: Path) -> None:
    sealer = Sealer.for_dir(tmp_path)
    spec = parse_webhooks({"events": ["task_completed"], "url": URL,
                           "authentication": {"strategy": "bearer", "token": "s3cret-t0ken"}})
    stored = spec.stored(sealer)
    assert "s3cret-t0ken" not in json.dumps(stored)
    assert StreamSpec.load(json.loads(json.dumps(stored)), sealer) == spec
    assert StreamSpec.load(None, sealer) is None


def _span(sid: str, parent: str | None, kind: str, start: float, end: float | None,
          **extra: Any) -> dict[str, Any]:
    return {"id": sid, "parent": parent, "kind": kind, "name": f"{kind}-{sid}",
            "start": start, "end": end, "status": "ok", "error": None, "tokens": None,
            "input": None, "output": None, **extra}


def test_spans_from_the_runner_are_cleaned_and_bounded() -> None:
    raw = [_span("c", None, "crew", 100.0, 103.0, tokens={"prompt": 3, "completion": 2,
                                                           "total": 5}),
           _span("t", "c", "task", 100.5, 102.0, input="x" * 5000, status="bogus"),
           {"id": "z", "kind": "spaceship", "start": 1.0},          # no such kind
           {"id": 7, "kind": "llm", "start": 1.0},                  # id no string
           _span("l", "t", "llm", float("nan"), None),              # no start time
           _span("e", "t", "tool", 101.0, 100.0, tokens={"total": -1}, extra="dropped"),
           "not a span"]
    spans = clean_spans(raw)
    assert [s["id"] for s in spans] == ["c", "t", "e"]
    assert all(set(s) == set(_span("x", None, "crew", 0, 0)) for s in spans)
    assert spans[0]["tokens"] == {"prompt": 3, "completion": 2, "total": 5}
    assert len(spans[1]["input"]) <= 1001
    assert spans[1]["status"] == "running"
    assert spans[2]["end"] is None  # it cannot end before it started
    assert spans[2]["tokens"] is None
    assert clean_spans({"spans": []}) == []
    big = [_span(str(i), None, "llm", 1.0, 2.0, input="y" * 1000, output="z" * 1000)
           for i in range(2000)]
    kept = clean_spans(big)
    assert len(kept) == 2000
    assert len(json.dumps(kept)) <= MAX_BYTES


def test_the_timeline_indents_children_under_their_parent() -> None:
    spans = [_span("c", None, "crew", 100.0, 103.5, tokens={"prompt": 3, "completion": 2,
                                                             "total": 5}),
             _span("t", "c", "task", 100.25, 103.0),
             _span("a", "t", "agent", 100.5, None, status="running"),
             _span("l", "a", "llm", 101.0, 102.0, status="error", error="boom\nagain"),
             _span("o", "gone", "tool", 102.5, 102.75)]  # its parent is not in the trace
    lines = timeline(spans)
    assert len(lines) == 5
    assert lines[0].split()[:4] == ["+0.00s", "3.50s", "crew", "crew-c"]
    assert "5 tok" in lines[0]
    assert lines[1].split()[:4] == ["+0.25s", "2.75s", "task", "task-t"]
    assert "  task task-t" in lines[1]
    assert "    agent agent-a" in lines[2]
    assert "running" in lines[2]
    assert "      llm llm-l" in lines[3]
    assert lines[3].split()[-3:] == ["error", "boom", "again"]
    assert lines[4].split()[:3] == ["+2.50s", "0.25s", "tool"]  # an orphan is a root
    assert timeline([]) == []
