"""The dashboard's pure parts: kickoff statistics, server-sent events, escaping."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from crewship.api import dashboard_html as html
from crewship.api.dashboard import (
    kickoff_duration,
    kickoff_stats,
    percentile,
    sse_events,
    sse_message,
)

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
EVIL = "<script>alert(1)</script>"


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([float(v) for v in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_kickoff_duration_prefers_the_crews_own_time() -> None:
    assert kickoff_duration({"execution_time": 1.5, "started_at": "2026-11-26T10:00:00Z",
                             "finished_at": "2026-11-26T10:00:09Z"}) == 1.5
    assert kickoff_duration({"execution_time": None, "started_at": "2026-11-26T10:00:00Z",
                             "finished_at": "2026-11-26T10:00:09Z"}) == 9.0
    assert kickoff_duration({"started_at": "2026-11-26T10:00:00Z", "finished_at": None}) is None


def test_kickoff_stats_cover_finished_kickoffs_of_the_last_day() -> None:
    def row(hours_ago: float, state: str, seconds: float | None) -> dict[str, object]:
        created = (NOW - dt.timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z")
        return {"created_at": created, "state": state, "execution_time": seconds}

    rows = [row(1, "SUCCESS", 1.0), row(2, "FAILURE", 3.0), row(3, "RUNNING", None),
            row(4, "SUCCESS", 2.0), row(30, "SUCCESS", 100.0), row(5, "PENDING", None)]
    stats = kickoff_stats(rows, NOW)
    assert stats == {"count": 5, "failed": 1, "p50": 2.0, "p95": pytest.approx(2.9)}
    assert kickoff_stats([], NOW) == {"count": 0, "failed": 0, "p50": None, "p95": None}


def test_sse_message_keeps_one_event_per_line() -> None:
    assert sse_message("hello") == "data: hello\n\n"
    assert sse_message("a\r\nb") == "data: a\ndata: b\n\n"


async def _lines(closed: list[str], items: list[str], forever: bool) -> AsyncIterator[str]:
    try:
        for item in items:
            yield item
        while forever:
            await asyncio.sleep(0.01)
    finally:
        closed.append("closed")


def test_sse_events_end_with_the_lines_and_close_them_when_the_client_leaves() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        closed: list[str] = []
        done = [e async for e in sse_events(_lines(closed, ["a", "b"], False), lambda: True)]
        events = sse_events(_lines(closed, ["x"], True), lambda: True)
        first = [await anext(events), await anext(events)]
        await events.aclose()       # what the server does when the browser goes away
        return done, first, closed

    done, first, closed = asyncio.run(scenario())
    assert done == ["retry: 3000\n\n", "data: a\n\n", "data: b\n\n"]
    assert first == ["retry: 3000\n\n", "data: x\n\n"]
    assert closed == ["closed", "closed"]


def test_sse_events_stop_once_access_is_gone() -> None:
    async def scenario() -> list[str]:
        closed: list[str] = []
        allowed = iter([True, False])
        events = sse_events(_lines(closed, [], True), lambda: next(allowed), heartbeat=0.01)
        return [e async for e in events] + closed

    assert asyncio.run(scenario()) == ["retry: 3000\n\n", ": keep-alive\n\n", "closed"]


def test_pages_escape_crew_and_user_text() -> None:
    status = {"app": "demo", "state": EVIL, "release": "v1", "url": EVIL, "git_url": EVIL,
              "scale": 1, "uptime_seconds": 75, "restarts": 2,
              "instances": [{"id": EVIL, "state": "up", "pid": 1, "port": 2, "restarts": 2}]}
    releases = [{"version": "v1", "kind": "push", "status": "live", "commit": EVIL,
                 "created_by": EVIL, "created_at": "2026-11-26T10:00:00Z", "live": True,
                 "description": EVIL, "error": EVIL}]
    kickoffs = [{"kickoff_id": EVIL, "state": "FAILURE", "release": 1, "created_at": EVIL,
                 "duration": 0.5, "inputs": {"topic": EVIL}, "error": EVIL}]
    stats = {"count": 1, "failed": 1, "p50": 0.5, "p95": 0.5}
    pages = [html.app_page(EVIL, status, releases, kickoffs, stats),
             html.apps_page(EVIL, [status]), html.login_page(EVIL),
             html.error_page(404, EVIL, EVIL)]
    for page in pages:
        assert "<script>alert" not in page
        assert "&lt;script&gt;" in page
    assert "1m 15s" in pages[0]


def test_durations_read_naturally() -> None:
    assert [html.duration(v) for v in (None, 0.4237, 12.34, 61, 3725.0, 7)] == [
        "-", "0.42s", "12.3s", "1m 01s", "1h 02m", "7s"]
