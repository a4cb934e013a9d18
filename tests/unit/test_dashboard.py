"""The dashboard's pure parts: durations, server-sent events, templates and escaping."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

from crewship.api import dashboard_html as html
from crewship.api.dashboard import kickoff_duration
from crewship.api.sse import sse_events, sse_message

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
EVIL = "<script>alert(1)</script>"


def test_kickoff_duration_prefers_the_crews_own_time() -> None:
    assert kickoff_duration({"execution_time": 1.5, "started_at": "2026-11-26T10:00:00Z",
                             "finished_at": "2026-11-26T10:00:09Z"}) == 1.5
    assert kickoff_duration({"execution_time": None, "started_at": "2026-11-26T10:00:00Z",
                             "finished_at": "2026-11-26T10:00:09Z"}) == 9.0
    assert kickoff_duration({"started_at": "2026-11-26T10:00:00Z", "finished_at": None}) is None


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


def _window(counts: list[int]) -> dict[str, object]:
    buckets = [{"start": f"2026-11-26T{i % 24:02d}:00:00Z", "count": n, "failed": n // 3,
                "finished": n, "p50": float(n) or None, "p95": 2.0 * n or None}
               for i, n in enumerate(counts)]
    return {"count": sum(counts), "failed": sum(n // 3 for n in counts), "p50": 0.5,
            "p95": 0.5, "buckets": buckets}


def app_page(user: str, status: dict[str, object], releases: list[dict[str, object]],
             kickoffs: list[dict[str, object]], *, can_deploy: bool = True,
             described: dict[str, object] | None = None) -> str:
    form = html.kickoff_form(described, None if described else "no instance can say")
    context = html.app_context(status, releases, kickoffs, _window([0, 3, 0, 7]),
                               [{"day": "2026-11-26", "count": 2, "failed": 1}], [],
                               can_deploy=can_deploy, form=form)
    return html.render("app.html", {**context, "user": user, "csrf": "tok"})


STATUS = {"app": "demo", "state": EVIL, "release": "v1", "url": EVIL, "git_url": EVIL,
          "scale": 1, "uptime_seconds": 75, "restarts": 2,
          "instances": [{"id": EVIL, "state": "up", "pid": 1, "port": 2, "restarts": 2}]}
RELEASES = [{"version": "v1", "number": 1, "kind": "push", "status": "superseded",
             "commit": EVIL, "created_by": EVIL, "created_at": "2026-11-26T10:00:00Z",
             "live": False, "description": EVIL, "error": EVIL, "build_available": True},
            {"version": "v2", "number": 2, "kind": "push", "status": "live", "commit": "c2",
             "created_by": "a", "created_at": "2026-11-26T11:00:00Z", "live": True,
             "description": "", "error": None, "build_available": True}]
KICKOFFS = [{"kickoff_id": EVIL, "state": "PENDING_HUMAN_INPUT", "release": 1,
             "created_at": EVIL, "duration": 0.5, "inputs": {"topic": EVIL}, "error": EVIL}]


def test_pages_escape_crew_and_user_text() -> None:
    described = {"inputs": [EVIL], "optional_inputs": {"audience": EVIL}}
    kickoff = {"kickoff_id": "k" * 36, "state": "SUCCESS", "inputs": {"topic": EVIL},
               "result": EVIL, "error": EVIL, "tasks": [{"task_id": EVIL, "output": EVIL}]}
    spans = [{"id": "1", "parent": None, "kind": "task", "name": EVIL, "start": 1.0, "end": 2.0,
              "status": "error", "error": EVIL, "tokens": None, "input": EVIL, "output": EVIL}]
    pages = [app_page(EVIL, STATUS, RELEASES, KICKOFFS, described=described),
             html.render("apps.html", {**html.apps_context([STATUS]), "user": EVIL}),
             html.render("login.html", {"error": EVIL}),
             html.render("error.html", {"status": 404, "message": EVIL, "user": EVIL}),
             html.render("kickoff.html", {**html.kickoff_context("demo", kickoff, spans, 1.0),
                                          "user": EVIL}),
             html.render("action.html", {"title": EVIL, "app": "demo", "outcome": EVIL,
                                         "lines": [EVIL], "failed": True})]
    for page in pages:
        assert "<script>alert" not in page
        assert "&lt;script&gt;" in page
    assert "1m 15s" in pages[0]
    assert "PENDING_HUMAN_INPUT" in pages[0]       # an unknown state shows as it comes


def test_the_app_page_shows_charts_and_offers_actions_to_deployers() -> None:
    page = app_page("ann", STATUS, RELEASES, KICKOFFS,
                    described={"inputs": ["topic"], "optional_inputs": {"audience": "otters"}})
    assert 'id="count-24h">10<' in page
    assert page.count('class="bar"') == 2           # two hours had kickoffs
    assert page.count('class="bar-failed"') == 3      # and the day with a failed deploy
    assert 'class="p50"' in page
    assert 'class="p95"' in page
    assert page.count('class="deploy"') == 1
    assert 'name="input:topic"' in page
    assert 'placeholder="otters"' in page
    assert page.count('name="csrf" value="tok"') == 5   # logout, restart, rollback, scale, kickoff
    assert '<option value="1">' in page             # v1 can be rolled back to; v2 is live
    assert '<option value="2">' not in page
    reader = app_page("rita", STATUS, RELEASES, KICKOFFS, can_deploy=False)
    assert "/restart" not in reader
    assert "kickoff-form" not in reader
    unknown = app_page("ann", STATUS, RELEASES, KICKOFFS)
    assert 'name="inputs_json"' in unknown          # no description: a JSON box
    assert "no instance can say" in unknown


def test_the_kickoff_page_draws_the_trace_or_says_there_is_none() -> None:
    kickoff = {"kickoff_id": "abc", "state": "RUNNING", "inputs": {}, "result": None}
    spans = [{"id": "c", "parent": None, "kind": "crew", "name": "crew", "start": 10.0,
              "end": None, "status": "running"},
             {"id": "t", "parent": "c", "kind": "task", "name": "research", "start": 10.5,
              "end": 12.0, "status": "ok", "tokens": {"prompt": 1, "completion": 2, "total": 3}}]
    page = html.render("kickoff.html", html.kickoff_context("demo", kickoff, spans, None))
    assert 'id="timeline"' in page
    assert page.count('class="bar k-') == 2
    assert 'http-equiv="refresh"' in page           # still running: the page reloads
    empty = html.render("kickoff.html", html.kickoff_context(
        "demo", {**kickoff, "state": "SUCCESS"}, [], 1.0))
    assert "No trace recorded" in empty
    assert "refresh" not in empty


def test_durations_read_naturally() -> None:
    assert [html.duration(v) for v in (None, 0.4237, 12.34, 61, 3725.0, 7)] == [
        "-", "0.42s", "12.3s", "1m 01s", "1h 02m", "7s"]
    assert html.slug("PENDING_HUMAN_INPUT") == "pendinghumaninput"
    assert html.slug(None) == "unknown"


def test_the_templates_and_assets_ship_with_the_package() -> None:
    assert b"--accent" in html.static_file("dashboard.css")
    assert b"EventSource" in html.static_file("dashboard.js")
    assert html.TEMPLATES.env.autoescape is True


def test_the_deployment_page_escapes_too() -> None:
    from crewship.api.deployment_page import render_page

    page = render_page(EVIL, {"status": "Online", "error_message": EVIL, "git_url": EVIL},
                       [{"version": "v1", "kind": "push", "status": "live", "commit": EVIL,
                         "created_at": "t", "description": EVIL}])
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;") == 7   # title, heading, error, hint, git, commit, text
    assert "No releases yet" in render_page("demo", {"status": "Online"}, [])
