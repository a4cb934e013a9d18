"""The dashboard of a real server, over HTTP: exact figures over 10,000 kickoffs, and the
buttons' guards (session, same origin, CSRF token, deploy access), each refusal changing
nothing. The browser side is tests/e2e/test_dashboard.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crewship.api.dashboard_html import duration
from crewship.store.accounts import Accounts
from crewship.store.apps import AppStore
from crewship.store.state import Database
from crewship.store.stats import HistoryStats
from tests.support.history import percentile, seed_kickoffs
from tests.support.server import CrewshipServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("dashboard-pages"))
    server.start()
    yield server
    server.close()


@contextlib.contextmanager
def session(srv: CrewshipServer, key: Path) -> Iterator[httpx.Client]:
    """Logged in through the form with a fresh API token of ``key``'s user."""
    token = srv.ssh(key, "api-tokens:create", check=True).stdout.strip()
    with httpx.Client(base_url=srv.http_url, timeout=60) as client:
        login = client.post("/dashboard/login", data={"token": token})
        assert login.status_code == 303, login.text
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def figure(page: str, ident: str) -> str:
    found = re.search(rf'id="{ident}">([^<]*)<', page)
    assert found, ident
    return found.group(1)


def test_every_figure_covers_the_whole_day(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "busy", check=True)
    seeded = seed_kickoffs(srv.data_dir / "state.db", "busy", 10_000, older=300, running=7)
    with session(srv, srv.admin_key) as admin:
        page = admin.get("/dashboard/apps/busy")
        assert page.status_code == 200, page.text
    text = page.text
    assert figure(text, "count-24h") == str(seeded.recent) == "10007"
    assert figure(text, "failed-24h") == str(seeded.failed)
    assert figure(text, "p50-24h") == duration(percentile(seeded.durations, 0.5))
    assert figure(text, "p95-24h") == duration(percentile(seeded.durations, 0.95))
    chart = text.split('id="kickoffs-chart"')[1].split("</svg>")[0]
    per_hour = [int(n) for n in re.findall(r"UTC: (\d+) kickoffs", chart)]
    assert len(per_hour) == 24
    assert sum(per_hour) == 10_007                 # every kickoff in its hour, none capped
    assert chart.count('class="bar"') == 24
    lines = text.split('id="duration-chart"')[1].split("</svg>")[0]
    assert lines.count('<polyline class="p50"') == 1   # a value every hour: one line each
    assert lines.count('<polyline class="p95"') == 1
    assert len(re.findall(r"<tr><td><a href=\"/dashboard/apps/busy/kickoffs/", text)) == 20


def test_the_buttons_need_a_session_the_same_origin_a_csrf_token_and_deploy_access(
        srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "guarded", check=True)
    reader_key = srv.add_user("rita")
    stranger_key = srv.add_user("sam")
    srv.ssh(srv.admin_key, "access:add", "guarded", "rita", "read", check=True)
    base = "/dashboard/apps/guarded"

    def scale_shown(client: httpx.Client) -> str:
        return figure(client.get(base).text, "scale")

    with httpx.Client(base_url=srv.http_url, timeout=30) as anon:
        refused = anon.post(f"{base}/scale", data={"scale": "3"})
        assert refused.status_code == 303
        assert refused.headers["location"] == "/dashboard/login"

    with session(srv, srv.admin_key) as admin:
        page = admin.get(base).text
        token = csrf_of(page)
        assert 'id="kickoff-form"' in page
        assert 'name="inputs_json"' in page        # nothing live: no instance says its inputs
        before = scale_shown(admin)
        for data, headers in (({"scale": "3"}, {}),
                              ({"scale": "3", "csrf": "0" * 64}, {}),
                              ({"scale": "3", "csrf": token}, {"origin": "http://evil.test"}),
                              ({"scale": "3", "csrf": token}, {"sec-fetch-site": "cross-site"})):
            resp = admin.post(f"{base}/scale", data=data, headers=headers)
            assert resp.status_code == 403, (data, headers, resp.text)
        assert "stale or was not sent by the dashboard" in admin.post(
            f"{base}/restart", data={"csrf": "nope"}).text
        assert scale_shown(admin) == before        # nothing changed

        bad = admin.post(f"{base}/scale", data={"scale": "lots", "csrf": token})
        assert bad.status_code == 400
        assert "whole number" in bad.text
        assert admin.post(f"{base}/scale", data={"scale": "99", "csrf": token}).status_code == 400
        nothing_live = admin.post(f"{base}/restart", data={"csrf": token})
        assert nothing_live.status_code == 409
        assert "nothing live to restart" in nothing_live.text
        assert admin.post(f"{base}/rollback", data={"version": "7", "csrf": token}
                          ).status_code in (400, 404, 409)
        no_release = admin.post(f"{base}/kickoff", data={"inputs_json": '{"a": "b"}',
                                                        "csrf": token})
        assert no_release.status_code == 503
        assert "no live release" in no_release.text
        assert admin.post(f"{base}/kickoff", data={"inputs_json": "[1]", "csrf": token}
                          ).status_code == 400
        assert scale_shown(admin) == before

        done = admin.post(f"{base}/scale", data={"scale": "2", "csrf": token})
        assert done.status_code == 200, done.text
        assert "guarded is scaled to 2" in done.text
        assert "once a release is live" in done.text   # the progress line, as over SSH
        assert scale_shown(admin) == "2"
        missing = admin.get(f"{base}/kickoffs/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404

    with session(srv, reader_key) as reader:
        page = reader.get(base).text
        assert "/restart" not in page              # a reader sees no buttons...
        assert "kickoff-form" not in page
        token = csrf_of(page)                      # ...and a forged form is refused
        resp = reader.post(f"{base}/scale", data={"scale": "0", "csrf": token})
        assert resp.status_code == 403
        assert "needs deploy" in resp.text
        assert reader.post(f"{base}/kickoff", data={"csrf": token}).status_code == 403
    over_ssh = srv.ssh(reader_key, "kickoff", "guarded", "{}")   # the same check over SSH
    assert over_ssh.returncode != 0
    assert "needs deploy" in over_ssh.stderr
    assert "no live release" in srv.ssh(srv.admin_key, "kickoff", "guarded", "{}").stderr
    with session(srv, stranger_key) as stranger:
        token = csrf_of(stranger.get("/").text)
        resp = stranger.post(f"{base}/restart", data={"csrf": token})
        assert resp.status_code == 404             # no access reads as no app
    with session(srv, srv.admin_key) as admin:
        assert scale_shown(admin) == "2"
    audit = srv.ssh(srv.admin_key, "audit", "--app", "guarded", check=True).stdout
    assert "scale to 2" in audit


def test_sqlite_ranks_every_duration_exactly(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    try:
        owner = Accounts(db).ensure_user("ann", admin=True)
        app = AppStore(db).create("exact", owner.id)
        now = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
        seeded = seed_kickoffs(tmp_path / "state.db", "exact", 3_000, now=now, older=50,
                               running=3)
        window = HistoryStats(db).kickoffs(app.id, now, dt.timedelta(hours=24), 24)
        assert window.total.count == 3_003
        assert window.total.failed == seeded.failed
        assert window.total.finished == len(seeded.durations) == 3_000
        assert window.total.p50 == pytest.approx(percentile(seeded.durations, 0.5))
        assert window.total.p95 == pytest.approx(percentile(seeded.durations, 0.95))
        assert sum(b.count for b in window.buckets) == 3_003
        assert sum(b.finished for b in window.buckets) == 3_000
        empty = HistoryStats(db).kickoffs(app.id, now - dt.timedelta(days=9),
                                          dt.timedelta(hours=24), 24)
        assert (empty.total.count, empty.total.p50, empty.buckets[0].p95) == (0, None, None)
        for version, (when, status) in enumerate([("2026-11-26T09:00:00Z", "live"),
                                                  ("2026-11-26T08:00:00Z", "failed"),
                                                  ("2026-11-20T08:00:00Z", "superseded"),
                                                  ("2026-10-01T08:00:00Z", "superseded")], 1):
            db.execute("INSERT INTO releases (app_id, version, kind, commit_sha, created_by, "
                       "created_at, status) VALUES (?, ?, 'push', 'c', 'ann', ?, ?)",
                       app.id, version, when, status)
        days = HistoryStats(db).deploys(app.id, now, 30)
        assert len(days) == 30
        assert days[-1] == {"day": "2026-11-26", "count": 2, "failed": 1}
        assert days[-7] == {"day": "2026-11-20", "count": 1, "failed": 0}
        assert sum(d["count"] for d in days) == 3          # October is outside the window
    finally:
        db.close()
