"""Every door checks who is knocking (issue 11 items 2, 4, 5), against a real server.

Offboarding: ``users``, ``users:remove`` and admins' ``api-tokens --user`` /
``api-tokens:revoke`` over real OpenSSH; what a removed user or a revoked token held
(SSH key, Plus API, dashboard session, an open log stream) stops at once. Dashboard
sessions: the cookie is a hashed server-side session id, CSRF-checked logout, ``Secure``
only over TLS through a trusted proxy. Bounded requests: bodies refused while they
stream (chunked too), kickoff inputs capped, requests in flight per token capped,
``/metrics`` and the deployment page need a login. No crew is deployed: nothing here
needs one.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.server import HOST, REPO_ROOT, CrewshipServer

pytestmark = [pytest.mark.e2e]

API = "/crewai_plus/api/v1"
SCRAPE = "scrape-token-for-tests"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_METRICS_TOKEN": SCRAPE, "CREWSHIP_TRUSTED_PROXIES": "127.0.0.1",
           "CREWSHIP_MAX_REQUESTS_PER_TOKEN": "2"}
    server = CrewshipServer(tmp_path_factory.mktemp("doors"), env=env)
    server.start()
    yield server
    server.close()


def api_token(srv: CrewshipServer, key: Path, *args: str) -> str:
    token = srv.ssh(key, "api-tokens:create", *args, check=True).stdout.strip()
    assert token.startswith("csu_"), token
    return token


def log_in(srv: CrewshipServer, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{srv.http_url}/dashboard/login", data={"token": token},
                      headers=headers or {}, timeout=10)


def session_client(srv: CrewshipServer, token: str) -> httpx.Client:
    """An httpx client holding the session cookie a real login gave it."""
    resp = log_in(srv, token)
    assert resp.status_code == 303, resp.text
    return httpx.Client(base_url=srv.http_url, cookies=resp.cookies, timeout=10)


def csrf_of(page: str) -> str:
    found = re.search(r"name=[\"']csrf[\"'] value=[\"']([0-9a-f]+)[\"']", page)
    assert found, page[:400]
    return found.group(1)


class Stream:
    """A dashboard log stream (SSE) read in a thread; ``ended`` is set when it closes."""

    def __init__(self, client: httpx.Client, app: str) -> None:
        self.ended = threading.Event()
        self.opened = threading.Event()
        self.status = 0
        self.thread = threading.Thread(target=self._read, args=(client, app), daemon=True)
        self.thread.start()
        assert self.opened.wait(15), "the log stream did not open"

    def _read(self, client: httpx.Client, app: str) -> None:
        try:
            with client.stream("GET", f"/dashboard/apps/{app}/logs/stream",
                               timeout=httpx.Timeout(10, read=60)) as resp:
                self.status = resp.status_code
                self.opened.set()
                for _ in resp.iter_raw():
                    pass
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()


def ends_within(stream: Stream, seconds: float) -> float:
    started = time.monotonic()
    assert stream.ended.wait(seconds + 1), f"the log stream still ran after {seconds}s"
    return time.monotonic() - started


# --------------------------------------------------------------------- offboarding
def test_users_lists_keys_tokens_apps_and_last_seen_for_admins_only(srv: CrewshipServer) -> None:
    dora = srv.add_user("dora")
    srv.ssh(dora, "apps:create", "dora-app", check=True)
    api_token(srv, dora)
    found = {u["name"]: u for u in srv.ssh_json(srv.admin_key, "users")}
    assert found["dora"]["keys"] == ["laptop"]
    assert found["dora"]["tokens"] == 1
    assert found["dora"]["apps"] == ["dora-app"]
    assert found["dora"]["admin"] is False
    assert found["dora"]["last_seen_at"]
    assert found["admin"]["admin"] is True
    table = srv.ssh(srv.admin_key, "users", check=True).stdout
    assert "LAST SEEN" in table
    assert "dora-app" in table
    refused = srv.ssh(dora, "users")
    assert refused.returncode != 0
    assert "only an admin" in refused.stderr
    assert srv.ssh(dora, "users:remove", "admin").returncode != 0


def test_removing_a_user_ends_keys_tokens_grants_and_sessions_at_once(srv: CrewshipServer) -> None:
    bob = srv.add_user("bob")
    carol = srv.add_user("carol")
    srv.ssh(bob, "apps:create", "bobs-app", check=True)
    srv.ssh(srv.admin_key, "apps:create", "shared", check=True)
    srv.ssh(srv.admin_key, "access:add", "shared", "bob", "deploy", check=True)
    token = api_token(srv, bob)
    plus = httpx.Client(base_url=srv.http_url, timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    assert plus.get(f"{API}/crews").status_code == 200
    browser = session_client(srv, token)
    assert browser.get("/").status_code == 200
    stream = Stream(browser, "shared")
    assert stream.status == 200

    refused = srv.ssh(srv.admin_key, "users:remove", "bob")
    assert refused.returncode != 0
    assert "owns bobs-app" in refused.stderr
    assert "--transfer-to" in refused.stderr
    assert srv.ssh(bob, "whoami", check=True).stdout.strip() == "bob"   # nothing changed

    done = srv.ssh(srv.admin_key, "users:remove", "bob", "--transfer-to", "carol", check=True)
    assert "1 keys, 1 API tokens, 1 dashboard sessions" in done.stdout
    assert "bobs-app now owned by carol" in done.stdout
    took = ends_within(stream, 5)
    assert plus.get(f"{API}/crews").status_code == 401
    assert browser.get("/").status_code == 303
    assert srv.ssh(bob, "whoami").returncode == 255            # the key is refused
    assert "bobs-app" in [a["name"] for a in srv.ssh_json(carol, "apps")]
    assert [a for a in srv.ssh_json(srv.admin_key, "access", "shared")
            if a.get("user") == "bob"] == []
    assert "bob" not in {u["name"] for u in srv.ssh_json(srv.admin_key, "users")}
    srv.wait_for_log("user_removed", target="bob", by="admin")
    print(f"log stream ended {took:.2f}s after users:remove")
    plus.close()
    browser.close()


def test_admins_see_and_revoke_other_users_tokens(srv: CrewshipServer) -> None:
    erin = srv.add_user("erin")
    srv.ssh(srv.admin_key, "apps:create", "erin-watch", check=True)
    srv.ssh(srv.admin_key, "access:add", "erin-watch", "erin", "read", check=True)
    token = api_token(srv, erin)
    browser = session_client(srv, token)
    stream = Stream(browser, "erin-watch")
    listed = srv.ssh_json(srv.admin_key, "api-tokens", "--user", "erin")
    assert len(listed) == 1
    assert listed[0]["expires_at"]
    assert listed[0]["last_used_at"]                 # the login used it
    assert "LAST USED" in srv.ssh(srv.admin_key, "api-tokens", "--user", "erin").stdout
    refused = srv.ssh(erin, "api-tokens", "--user", "admin")
    assert refused.returncode != 0
    assert "only an admin" in refused.stderr
    admin_token = api_token(srv, srv.admin_key)
    admin_id = [t for t in srv.ssh_json(srv.admin_key, "api-tokens")][-1]["id"]
    assert srv.ssh(erin, "api-tokens:revoke", str(admin_id)).returncode != 0   # not hers
    assert httpx.get(f"{srv.http_url}{API}/crews", timeout=10,
                     headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200

    srv.ssh(srv.admin_key, "api-tokens:revoke", str(listed[0]["id"]), check=True)
    ends_within(stream, 5)
    assert browser.get("/").status_code == 303
    assert httpx.get(f"{srv.http_url}{API}/crews", timeout=10,
                     headers={"Authorization": f"Bearer {token}"}).status_code == 401
    browser.close()


def test_api_tokens_expire_after_90_days_unless_told(srv: CrewshipServer) -> None:
    fred = srv.add_user("fred")
    api_token(srv, fred)
    api_token(srv, fred, "--expires-days", "7")
    tokens = srv.ssh_json(fred, "api-tokens")
    now = time.time()
    days = [(time.mktime(time.strptime(t["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - now
             - time.timezone) / 86400 for t in tokens]
    assert 89.9 < days[0] <= 90.01
    assert 6.9 < days[1] <= 7.01
    assert srv.ssh(fred, "api-tokens:create", "--expires-days", "0").returncode != 0


# ------------------------------------------------------------------------ sessions
def test_the_cookie_is_a_hashed_session_id_never_the_token(srv: CrewshipServer) -> None:
    token = api_token(srv, srv.admin_key)
    resp = log_in(srv, token)
    session = resp.cookies["crewship_session"]
    assert session.startswith("css_")
    assert token not in resp.headers["set-cookie"]
    assert "HttpOnly" in resp.headers["set-cookie"]
    assert "Secure" not in resp.headers["set-cookie"]      # plain HTTP, no proxy
    with sqlite3.connect(f"file:{srv.data_dir / 'state.db'}?mode=ro", uri=True) as db:
        stored = [r[0] for r in db.execute("SELECT hash FROM sessions")]
    assert hashlib.sha256(session.encode()).hexdigest() in stored
    assert session not in stored
    with httpx.Client(base_url=srv.http_url, cookies={"crewship_session": token}) as raw:
        assert raw.get("/").status_code == 303                   # the token is no cookie


def test_logout_needs_the_sessions_csrf_token(srv: CrewshipServer) -> None:
    browser = session_client(srv, api_token(srv, srv.admin_key))
    page = browser.get("/")
    csrf = csrf_of(page.text)
    forged = browser.post("/dashboard/logout", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert browser.post("/dashboard/logout").status_code == 403
    assert browser.post("/dashboard/logout", data={"csrf": csrf},
                        headers={"Origin": "http://evil.example"}).status_code == 403
    assert browser.get("/").status_code == 200                   # still logged in
    done = browser.post("/dashboard/logout", data={"csrf": csrf},
                        headers={"Origin": srv.http_url})
    assert done.status_code == 303
    assert browser.get("/").status_code == 303                   # the session is over
    cross = log_in(srv, api_token(srv, srv.admin_key), {"Origin": "http://evil.example"})
    assert cross.status_code == 403
    fetched = log_in(srv, api_token(srv, srv.admin_key), {"Sec-Fetch-Site": "cross-site"})
    assert fetched.status_code == 403
    browser.close()


def test_cookie_is_secure_over_tls_through_a_trusted_proxy(srv: CrewshipServer,
                                                           server_factory: Any) -> None:
    token = api_token(srv, srv.admin_key)
    proxied = log_in(srv, token, {"X-Forwarded-Proto": "https"})
    assert "Secure" in proxied.headers["set-cookie"]
    other = server_factory()                                      # trusts no proxy
    other_token = api_token(other, other.admin_key)
    untrusted = log_in(other, other_token, {"X-Forwarded-Proto": "https"})
    assert untrusted.status_code == 303
    assert "Secure" not in untrusted.headers["set-cookie"]


# ---------------------------------------------------------------- bounded requests
def raw_request(srv: CrewshipServer, head: str, body_chunks: list[bytes] = (),  # type: ignore[assignment]
                timeout: float = 10) -> tuple[int, str]:
    """Send ``head`` and then ``body_chunks`` over a raw socket; (status, response)."""
    with socket.create_connection((HOST, srv.http_port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest: what the test wants
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        if b"content-length:" in data.lower():
            length = int(re.search(rb"(?i)content-length: *(\d+)", data).group(1))  # type: ignore[union-attr]
            while len(data.split(b"\r\n\r\n", 1)[1]) < length:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
    text = data.decode(errors="replace")
    return int(text.split(" ", 2)[1]), text


def chunked(payload: bytes, size: int = 65536) -> list[bytes]:
    return [f"{len(payload[i:i + size]):x}\r\n".encode() + payload[i:i + size] + b"\r\n"
            for i in range(0, len(payload), size)]


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(srv: CrewshipServer) -> None:
    token = api_token(srv, srv.admin_key)
    head = (f"POST {API}/crews HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    # 3 MiB offered, no terminating chunk: the answer must come before the body ends.
    status, text = raw_request(srv, head, chunked(b"[" * (3 * 1024 * 1024)))
    assert status == 413
    body = json.loads(text.split("\r\n\r\n", 1)[1])
    assert "too large" in body["error"]
    assert "\n" not in body["error"]
    login = ("POST /dashboard/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
             "Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    assert raw_request(srv, login, chunked(b"token=" + b"x" * 20000))[0] == 413


def test_a_declared_length_over_the_limit_is_refused_before_the_body(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "bounded", check=True)
    app_token = srv.ssh(srv.admin_key, "tokens", "bounded", check=True).stdout.strip()
    head = (f"POST /apps/bounded/kickoff HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {app_token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**12}\r\n\r\n")
    status, text = raw_request(srv, head)                     # no body sent at all
    assert status == 413
    assert "CREWSHIP_MAX_BODY" in text
    bad = (f"POST /apps/bounded/kickoff HTTP/1.1\r\nHost: {HOST}\r\n"
           "Content-Length: ten\r\n\r\n")
    assert raw_request(srv, bad)[0] == 400
    # Kickoff inputs: 300 KiB of JSON is within the body limit, over the inputs limit.
    big = httpx.post(f"{srv.http_url}/apps/bounded/kickoff", timeout=10,
                     headers={"Authorization": f"Bearer {app_token}"},
                     json={"inputs": {"topic": "x" * (300 * 1024)}})
    assert big.status_code == 413
    assert "CREWSHIP_MAX_KICKOFF_INPUTS" in big.json()["message"]
    # A URL that does not even parse is a 400, not a crash (found by tests/e2e/test_fuzz.py).
    unparseable = httpx.post(f"{srv.http_url}/apps/bounded/kickoff", timeout=10,
                             headers={"Authorization": f"Bearer {app_token}"},
                             json={"inputs": {}, "crewWebhookUrl": "http://[::1"})
    assert unparseable.status_code == 400
    assert "crewWebhookUrl" in unparseable.json()["message"]
    with sqlite3.connect(f"file:{srv.data_dir / 'state.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM kickoffs").fetchone()[0] == 0


def test_requests_in_flight_per_token_are_limited(srv: CrewshipServer) -> None:
    token = api_token(srv, srv.admin_key)
    head = (f"POST {API}/crews HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    held = [socket.create_connection((HOST, srv.http_port), timeout=10) for _ in range(2)]
    try:
        for sock in held:               # two requests waiting for the rest of their body
            sock.sendall(head.encode())
        deadline = time.monotonic() + 15
        while True:                     # until the server has taken both in
            third = httpx.get(f"{srv.http_url}{API}/crews", timeout=10,
                              headers={"Authorization": f"Bearer {token}"})
            if third.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert "too many requests in flight" in third.json()["error"]
        other = api_token(srv, srv.admin_key)   # another token is not held back
        assert httpx.get(f"{srv.http_url}{API}/crews", timeout=10,
                         headers={"Authorization": f"Bearer {other}"}).status_code == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        again = httpx.get(f"{srv.http_url}{API}/crews", timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again.status_code == 200


def test_metrics_need_a_token_and_show_only_visible_apps(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "secret-app", check=True)
    gina = srv.add_user("gina")
    srv.ssh(gina, "apps:create", "gina-app", check=True)
    # a request per app, so each has labelled series
    for app in ("secret-app", "gina-app"):
        httpx.get(f"{srv.http_url}/apps/{app}/inputs", timeout=10)
    assert httpx.get(f"{srv.http_url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{srv.http_url}/metrics", timeout=10,
                     headers={"Authorization": "Bearer wrong"}).status_code == 401
    full = httpx.get(f"{srv.http_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {SCRAPE}"})
    assert full.status_code == 200
    assert 'app="secret-app"' in full.text
    assert 'app="gina-app"' in full.text
    mine = httpx.get(f"{srv.http_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {api_token(srv, gina)}"})
    assert mine.status_code == 200
    assert 'app="gina-app"' in mine.text
    assert "secret-app" not in mine.text


def test_the_deployment_page_needs_a_login_with_access(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "paged", check=True)
    uuid = srv.ssh_json(srv.admin_key, "status", "paged")["uuid"]
    url = f"{srv.http_url}/crewai_plus/deployments/{uuid}"
    anon = httpx.get(url, timeout=10)
    assert anon.status_code == 303
    assert anon.headers["location"] == "/dashboard/login"
    hank = srv.add_user("hank")
    as_hank = httpx.get(url, timeout=10, headers={"Authorization": f"Bearer {api_token(srv, hank)}"})
    assert as_hank.status_code == 404
    assert "paged" not in as_hank.text
    admin = api_token(srv, srv.admin_key)
    assert httpx.get(url, timeout=10, headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    with session_client(srv, admin) as browser:
        page = browser.get(f"/crewai_plus/deployments/{uuid}")
        assert page.status_code == 200
        assert "paged" in page.text


def test_starlette_is_pinned_past_its_request_parsing_cves() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    starlette = pins["starlette"].specifier
    # CVE-2024-47874 (0.40.0), CVE-2025-54121 (0.47.2), CVE-2026-54283 (1.3.1): multipart and
    # urlencoded form parsing; CVE-2026-48710 (1.0.1): the Host header.
    for vulnerable in ("0.39.2", "0.47.1", "1.0.0", "1.3.0"):
        assert Version(vulnerable) not in starlette, vulnerable
    import starlette as installed

    assert Version(installed.__version__) in starlette
    assert Version("0.0.25") not in pins["python-multipart"].specifier
