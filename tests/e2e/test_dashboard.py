"""The dashboard (issue #7 item 3) in a real headless Chromium, driven by Playwright.

One real server, the classic crew on the fake LLM: log in with an API token made over
SSH, watch the app go live while it is pushed, see a kickoff appear in its history and
the log tail update live, then log out. Screenshots go to ``test-artifacts/``. Access
rules (cookie, other users' apps, the stream) are checked with plain HTTP beside it.
Chromium is Debian's ``chromium``: missing, the browser test skips, or fails under CI.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.test_deploy import configure, instance_pid, new_project, push, wait_until
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import REPO_ROOT, CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO_ROOT / "test-artifacts"
HOSTILE = "<b id='injected'>kelp</b>"   # crew inputs: must show as text, never as markup


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
           "CREWSHIP_RESTART_DELAY": "0.2"}
    server = CrewshipServer(tmp_path_factory.mktemp("dashboard"), env=env)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def api_token(srv: CrewshipServer, key: Path) -> str:
    token = srv.ssh(key, "api-tokens:create", check=True).stdout.strip()
    assert token.startswith("csu_"), token
    return token


def log_in(page: Page, srv: CrewshipServer, token: str) -> None:
    page.goto(f"{srv.http_url}/")
    expect(page).to_have_url(f"{srv.http_url}/dashboard/login")
    page.fill("#token", "csu_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("unknown, revoked or expired")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Apps")


def app_row(page: Page, app: str) -> str:
    row = page.locator("#apps tr", has=page.locator(f"a[href='/dashboard/apps/{app}']"))
    return row.inner_text() if row.count() else ""


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def watch_go_live(page: Page, srv: CrewshipServer, project: Path, app: str) -> list[str]:
    """Push in the background, reloading the app list until the row says running v1."""
    out: dict[str, str] = {}
    pusher = threading.Thread(target=lambda: out.update(stderr=push(srv, project, app)))
    pusher.start()
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while True:
        page.reload()
        row = app_row(page, app)
        seen.append(row)
        if "running" in row and "v1" in row:
            break
        assert time.monotonic() < deadline, f"{app} never showed running v1: {seen[-3:]}"
        time.sleep(1.0)
    pusher.join(timeout=120)
    assert "is live" in out.get("stderr", ""), out
    return seen


def test_dashboard_in_a_real_browser(srv: CrewshipServer, llm: FakeLLM, browser: Browser,
                                     tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, srv, api_token(srv, srv.admin_key))
    [cookie] = [c for c in context.cookies() if c["name"] == "crewship_session"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""   # not readable by scripts

    api = configure(srv, "board", llm)
    page.reload()
    assert "board" in app_row(page, "board")
    assert "v1" not in app_row(page, "board")
    seen = watch_go_live(page, srv, new_project(srv, "classic_crew", tmp_path), "board")
    assert "running" not in seen[0]       # it was seen before it went live
    assert f"{srv.http_url}/apps/board" in app_row(page, "board")
    screenshot(page, "dashboard-apps.png")

    page.click("a[href='/dashboard/apps/board']")
    expect(page.locator("h1")).to_have_text("board")
    expect(page.locator("#log-state")).to_have_text("live")
    expect(page.locator("#log")).to_contain_text("[system] v1 is live")
    expect(page.locator("#kickoffs")).to_contain_text("No kickoffs yet")

    # A kickoff through the crew API: the runner's lines reach the open page by SSE.
    kickoff_id = api.kickoff({"topic": HOSTILE, "audience": "otters"})
    expect(page.locator("#log")).to_contain_text(f"kickoff {kickoff_id} started", timeout=60_000)
    assert api.wait(kickoff_id, timeout=180)["state"] == "SUCCESS"
    expect(page.locator("#log")).to_contain_text(f"kickoff {kickoff_id} finished SUCCESS",
                                                 timeout=30_000)
    check_crash_restart_shows_live(page, srv)

    page.reload()
    expect(page.locator("#log-state")).to_have_text("live")
    kickoffs = page.locator("#kickoffs")
    expect(kickoffs).to_contain_text(kickoff_id[:8])
    expect(kickoffs).to_contain_text("SUCCESS")
    expect(kickoffs).to_contain_text(HOSTILE)                 # shown as text...
    assert page.locator("#injected").count() == 0             # ...never as markup
    stats = page.locator(".stats").inner_text()
    assert "p50" in stats
    assert "p95" in stats
    assert "-" not in stats.split("p50")[1], stats            # a duration, not "-"
    expect(page.locator("#restart-count")).to_have_text("1")
    expect(page.locator("#releases")).to_contain_text("v1")
    expect(page.locator("#log")).to_contain_text("restarted and healthy")
    path = screenshot(page, "dashboard-app.png")
    assert path.stat().st_size > 10_000

    page.click("text=Log out")
    expect(page).to_have_url(f"{srv.http_url}/dashboard/login")
    page.goto(f"{srv.http_url}/dashboard/apps/board")
    expect(page).to_have_url(f"{srv.http_url}/dashboard/login")
    context.close()
    srv.wait_for_log("log_stream_closed", app="board", user="admin", timeout=15)


def check_crash_restart_shows_live(page: Page, srv: CrewshipServer) -> None:
    """Kill the instance: the supervisor's [system] lines appear without a reload."""
    pid = instance_pid(srv, "board")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    expect(page.locator("#log")).to_contain_text("restarting in", timeout=30_000)
    wait_until(lambda: instance_pid(srv, "board") not in (None, pid), timeout=120,
               what="the crash restart")
    expect(page.locator("#log")).to_contain_text("restarted and healthy", timeout=30_000)


def test_dashboard_access_rules(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "private", check=True)
    bob = srv.add_user("bob")
    bob_token = api_token(srv, bob)
    admin_token = api_token(srv, srv.admin_key)

    def client(token: str | None = None) -> httpx.Client:
        """Logged in with ``token`` through the login form (the cookie is a session id)."""
        cookies = None
        if token:
            login = httpx.post(f"{srv.http_url}/dashboard/login", data={"token": token},
                               timeout=30)
            cookies = login.cookies if login.status_code == 303 else {"crewship_session": token}
        return httpx.Client(base_url=srv.http_url, cookies=cookies, timeout=30)

    with client() as anon:
        assert anon.get("/").status_code == 303
        assert anon.get("/").headers["location"] == "/dashboard/login"
        assert anon.get("/dashboard/apps/private").status_code == 303
        assert anon.get("/dashboard/apps/private/logs/stream").status_code == 401
        assert anon.get("/", headers={"accept": "application/json"}).json()["service"] == "crewship"
        login = anon.get("/dashboard/login")
        assert "Content-Security-Policy" in login.headers
        assert anon.post("/dashboard/login", data={"token": "x" * 5000}).status_code == 401
        assert anon.post("/dashboard/login", data={"token": "x" * 9000}).status_code == 413
    with client("csu_forged") as forged:
        resp = forged.get("/")
        assert resp.status_code == 303
        assert 'crewship_session=""' in resp.headers["set-cookie"]   # the bad cookie is dropped
    as_bob = client(bob_token)
    with as_bob:
        listing = as_bob.get("/")
        assert listing.status_code == 200
        assert "private" not in listing.text        # only apps bob can see
        for path in ("/dashboard/apps/private", "/dashboard/apps/private/logs/stream"):
            resp = as_bob.get(path)
            assert resp.status_code == 404, (path, resp.text)
            assert "not found" in resp.text
    with client(admin_token) as as_admin:
        assert "private" in as_admin.get("/").text
        assert as_admin.get("/dashboard/apps/private").status_code == 200
    srv.ssh(bob, "api-tokens:revoke", token_id(srv, bob), check=True)
    with client(bob_token) as revoked:
        assert revoked.get("/").status_code == 303
    with httpx.Client(base_url=srv.http_url, cookies=as_bob.cookies) as again:
        assert again.get("/").status_code == 303   # the session made from it ended too


def token_id(srv: CrewshipServer, key: Path) -> str:
    tokens: list[dict[str, Any]] = json.loads(srv.ssh(key, "api-tokens", "--json",
                                                      check=True).stdout)
    return str(tokens[0]["id"])
