"""The dashboard (issue #7 item 3, issue 17 items 3-5) in a real headless Chromium.

One real server, the classic crew on the fake LLM: log in with an API token made over
SSH, watch the app go live while it is pushed, see a kickoff appear in its history and
the log tail update live; start a kickoff from the form built from the crew's /inputs,
watch it finish on its page (trace timeline), find it in the figures and the chart;
restart and roll back with the buttons; check every page at 390 px; then log out.
Screenshots go to ``test-artifacts/`` (gitignored). Access rules (cookie, other users'
apps, the stream) are checked with plain HTTP beside it, the buttons' guards in
tests/integration/test_dashboard_pages.py.
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
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

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

    form_kickoff = kickoff_from_the_form(page, srv)
    restart_and_roll_back(page, srv)
    check_phone_width(browser, context, srv, form_kickoff)

    page.click("text=Log out")
    expect(page).to_have_url(f"{srv.http_url}/dashboard/login")
    page.goto(f"{srv.http_url}/dashboard/apps/board")
    expect(page).to_have_url(f"{srv.http_url}/dashboard/login")
    context.close()
    srv.wait_for_log("log_stream_closed", app="board", user="admin", timeout=15)


def no_horizontal_overflow(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{page.url} overflows: {widths}"


def kickoff_from_the_form(page: Page, srv: CrewshipServer) -> str:
    """Fill the form the crew's /inputs made, start it, watch it finish on its own page
    (which reloads itself), then find it in the app page's figures and chart."""
    fields = page.locator("#kickoff-form input[name^='input:']")
    expect(fields.first).to_be_visible()
    names = [fields.nth(i).get_attribute("name") for i in range(fields.count())]
    assert "input:topic" in names, names
    for name in names:
        page.fill(f"#kickoff-form input[name='{name}']",
                  HOSTILE if name == "input:topic" else "sea otters")
    page.click("#kickoff-submit")
    expect(page.locator("h1")).to_contain_text("Kickoff")
    kickoff_id = page.url.rsplit("/", 1)[-1]
    assert page.url == f"{srv.http_url}/dashboard/apps/board/kickoffs/{kickoff_id}"
    expect(page.locator("#kickoff-state")).to_contain_text("SUCCESS", timeout=180_000)
    expect(page.locator("#kickoff-inputs")).to_contain_text(HOSTILE)   # as text...
    assert page.locator("#injected").count() == 0                      # ...never as markup
    expect(page.locator("#kickoff-result")).not_to_be_empty()
    expect(page.locator("#timeline .bar.k-task").first).to_be_visible()  # its trace
    assert page.locator("#timeline .bar.k-llm").count() >= 1
    no_horizontal_overflow(page)
    screenshot(page, "dashboard-kickoff.png")

    page.click("a[href='/dashboard/apps/board']")
    expect(page.locator("#count-24h")).to_have_text("2")      # the API's and the form's
    expect(page.locator("#kickoffs")).to_contain_text(kickoff_id[:8])
    hours = page.locator("#kickoffs-chart title").all_text_contents()
    assert sum(int(t.split("UTC: ")[1].split()[0]) for t in hours) == 2, hours
    assert page.locator("#kickoffs-chart rect.bar").count() >= 1
    assert page.locator("#duration-chart polyline, #duration-chart circle").count() >= 2
    no_horizontal_overflow(page)
    screenshot(page, "dashboard-app-charts.png")
    return kickoff_id


def restart_and_roll_back(page: Page, srv: CrewshipServer) -> None:
    """The restart button makes v2; the rollback button, with v1 chosen, makes v3."""
    page.click("#restart")
    expect(page.locator("#outcome-text")).to_have_text("board restarted: v2 is live",
                                                       timeout=180_000)
    expect(page.locator("#progress")).to_contain_text("Restarting board")
    page.click("#back")
    expect(page.locator("#releases")).to_contain_text("Restart of v1")
    page.select_option("#rollback-version", "1")
    page.click("#rollback")
    expect(page.locator("#outcome-text")).to_have_text("board rolled back to v1: v3 is live",
                                                       timeout=180_000)
    screenshot(page, "dashboard-rollback.png")
    page.click("#back")
    expect(page.locator("#releases")).to_contain_text("Rollback to v1")
    live = srv.ssh_json(srv.admin_key, "status", "board")
    assert live["release"] == "v3", live
    days = page.locator("#deploys-chart title").all_text_contents()   # one per day with some
    assert sum(int(d.split(": ")[1].split()[0]) for d in days) == 3, days


def check_phone_width(browser: Browser, wide: BrowserContext, srv: CrewshipServer,
                      kickoff_id: str) -> None:
    """Every page at 390 px: nothing wider than the screen (tables scroll in their box)."""
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.add_cookies(wide.cookies())
    page = phone.new_page()
    for path, shot in (("/", "phone-apps.png"), ("/dashboard/apps/board", "phone-app.png"),
                       (f"/dashboard/apps/board/kickoffs/{kickoff_id}", "phone-kickoff.png")):
        page.goto(f"{srv.http_url}{path}")
        expect(page.locator("h1")).to_be_visible()
        no_horizontal_overflow(page)
        screenshot(page, shot)
    phone.close()


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
