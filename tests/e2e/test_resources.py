"""What each crew uses, and its memory limit under the process runtime (issue 19).

A crew that holds 300 MB (allocated at import, ``BALLAST_MB``) shows it in ``status
--json``, ``ps`` and ``/metrics`` within 10 s; a crew that goes over its ``ps:limits``
memory during a kickoff is stopped and reported as ``memory_exceeded`` (status, the
app log, one alert), not as a plain crash. The crews are the classic test crew's
environment (same uv.lock: a cache hit) with a ``[tool.crewship] entrypoint``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_dashboard import api_token, log_in, screenshot
from tests.e2e.test_dashboard import browser as browser  # the fixture
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root, locked_copy
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MB = 1024 * 1024
SCRAPE = "resources-scrape-token"

BALLAST = '''\
"""Holds BALLAST_MB of memory from import on; a kickoff may take ``mb`` more."""
import json
import os
import time

BALLAST = b"\\x01" * (int(os.environ.get("BALLAST_MB", "0")) * 1024 * 1024)


def run(inputs):
    extra = b"\\x02" * (int(inputs.get("mb", 0)) * 1024 * 1024)
    time.sleep(float(inputs.get("hold", 0)))
    return json.dumps({"ballast": len(BALLAST), "extra": len(extra)})


run.inputs = ["mb", "hold"]
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
           "CREWSHIP_METRICS_TOKEN": SCRAPE, "CREWSHIP_USAGE_INTERVAL": "1",
           "CREWSHIP_USAGE_POINT_INTERVAL": "2",
           "CREWSHIP_RESTART_DELAY": "0.5", "CREWSHIP_ALLOW_PRIVATE_URLS": "1"}
    server = CrewshipServer(tmp_path_factory.mktemp("resources"), env=env)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def project(srv: CrewshipServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = locked_copy("classic_crew", tmp_path_factory.mktemp("ballast"))
    (path / "src/demo_crew/ballast.py").write_text(BALLAST)
    with (path / "pyproject.toml").open("a") as f:
        f.write('\n[tool.crewship]\nentrypoint = "demo_crew.ballast:run"\n')
    srv.git(None, "init", "-q", "-b", "main", cwd=path)
    srv.git(None, "add", "-A", cwd=path)
    srv.git(None, "commit", "-q", "-m", "ballast crew", cwd=path)
    return path


def deploy(srv: CrewshipServer, project: Path, app: str, *setup: list[str]) -> CrewAPI:
    srv.ssh(srv.admin_key, "apps:create", app, check=True)
    for command in setup:
        srv.ssh(srv.admin_key, *command, check=True)
    out = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False)
    assert out.returncode == 0, out.stderr
    token = srv.ssh(srv.admin_key, "tokens", app, check=True).stdout.strip()
    return CrewAPI(srv.http_url, app, token)


def scrape(srv: CrewshipServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(f"{srv.http_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {SCRAPE}"})
    assert resp.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def within(seconds: float, check: Callable[[], Any]) -> Any:
    """``check()``'s first truthy answer within ``seconds`` (else the last one, asserted)."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            assert found, f"not within {seconds}s"
            return found
        time.sleep(0.25)


def test_a_crew_holding_300_mb_shows_it_in_status_ps_and_metrics_within_10_s(
        srv: CrewshipServer, project: Path) -> None:
    deploy(srv, project, "heavy", ["config:set", "heavy", "BALLAST_MB=300"])

    def sampled() -> dict[str, Any] | None:
        inst = srv.ssh_json(srv.admin_key, "status", "heavy")["instances"][0]
        return inst if (inst["memory_bytes"] or 0) >= 300 * MB else None

    inst = within(10, sampled)   # sampled every second here (CREWSHIP_USAGE_INTERVAL=1)
    release = srv.ssh_json(srv.admin_key, "status", "heavy")["release"]
    assert inst["memory_bytes"] < 2048 * MB, inst     # the crew's own, not the machine's
    assert inst["cpu_percent"] is not None
    assert inst["cpu_percent"] >= 0
    assert inst["threads"] >= 1
    assert inst["fds"] >= 3
    assert inst["processes"] >= 1

    def gauge() -> float:
        metrics = scrape(srv)
        return metrics.get(("crewship_instance_memory_bytes", frozenset(
            {"app": "heavy", "release": release, "instance": inst["id"]}.items())), 0.0)
    assert within(10, lambda: gauge() >= 300 * MB)

    rows = srv.ssh_json(srv.admin_key, "ps", "heavy")
    assert [r["id"] for r in rows] == [inst["id"]]
    assert rows[0]["memory_bytes"] >= 300 * MB
    assert rows[0]["uptime_seconds"] >= 0
    text = srv.ssh(srv.admin_key, "ps", "heavy", check=True).stdout
    assert f"{inst['id']}: up for" in text
    assert " MB  cpu " in text
    assert "fds " in text
    assert "threads " in text


def test_a_crew_over_its_memory_limit_is_stopped_and_reported_as_memory_exceeded(
        srv: CrewshipServer, project: Path) -> None:
    with Receiver() as rx:
        api = deploy(srv, project, "greedy",
                     ["ps:limits", "greedy", "--memory", "600m"],
                     ["alerts:add", "greedy", rx.url("/alerts"), "--events", "memory_exceeded"])
        limits = srv.ssh_json(srv.admin_key, "ps:limits", "greedy")
        assert limits["memory"] == 600 * MB
        assert limits["enforced_by"]
        before = srv.ssh_json(srv.admin_key, "status", "greedy")["instances"][0]

        api.kickoff({"mb": 900, "hold": 60})

        def reported() -> list[dict[str, Any]]:
            return list(srv.ssh_json(srv.admin_key, "status", "greedy")["memory_exceeded"])
        events = within(20, reported)
        assert events[0]["instance"] == before["id"]
        assert events[0]["reason"] == "memory_exceeded"
        assert events[0]["limit_bytes"] == 600 * MB
        log = srv.ssh(srv.admin_key, "logs", "greedy", "-n", "200", check=True).stdout
        assert "memory_exceeded" in log
        alerts = rx.wait_for("/alerts", where=lambda b: b["event"] == "memory_exceeded")
        assert alerts[0]["app"] == "greedy"
        assert alerts[0]["details"]["instance"] == before["id"]
        text = srv.ssh(srv.admin_key, "status", "greedy", check=True).stdout
        assert "memory_exceeded" in text
        # it is restarted like a crash, and a kickoff within the limit runs
        again = within(30, lambda: srv.ssh_json(srv.admin_key, "ps", "greedy")[0]["state"] == "up")
        assert again
        ok = api.run({"mb": 10, "hold": 0}, timeout=60)
        assert ok["state"] == "SUCCESS", ok


def test_the_dashboard_shows_usage_now_and_a_24_h_chart(srv: CrewshipServer, project: Path,
                                                        browser: Browser) -> None:
    if "heavy" not in srv.ssh(srv.admin_key, "apps", check=True).stdout:
        deploy(srv, project, "heavy", ["config:set", "heavy", "BALLAST_MB=300"])
    within(20, lambda: len(srv.ssh_json(srv.admin_key, "status", "heavy")["instances"]) == 1
           and (srv.ssh_json(srv.admin_key, "status", "heavy")["instances"][0]["memory_bytes"]
                or 0) >= 300 * MB)
    time.sleep(5)  # a few points of the chart (CREWSHIP_USAGE_POINT_INTERVAL=2)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        log_in(page, srv, api_token(srv, srv.admin_key))
        page.goto(f"{srv.http_url}/dashboard/apps/heavy")
        card = page.locator("#usage")
        expect(card).to_contain_text("Memory")
        row = card.locator("tr", has=page.locator("code")).first.inner_text()
        assert " MB" in row
        assert float(row.split(" MB")[0].split()[-1]) >= 300, row
        chart = page.locator("svg#usage-chart")
        expect(chart).to_be_visible()
        assert chart.locator("polygon.mem").count() == 1
        assert chart.locator("polyline.cpu").count() == 1
        expect(chart).to_contain_text("10 min ago")  # the span so far (at most 24 h)
        card.scroll_into_view_if_needed()
        path = screenshot(page, "dashboard-usage.png")
        assert path.stat().st_size > 10_000
    finally:
        page.close()
