"""Security suite, outbound URLs (issue 11 item 1): what the daemon refuses to send to.

Refusals of non-loopback addresses are tested in the check itself with a resolver passed
in (no lookup, no connection: tests never send traffic beyond 127.0.0.1). The pinned
transport, git's transport guard and the 400/one-line errors run for real on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from crewship.config import Layout, Settings, from_env
from crewship.errors import InvalidInputError
from crewship.model import AccessLevel
from crewship.service import sources
from crewship.service.notify import Deliverer
from crewship.service.platform import Platform
from crewship.service.runhooks import WebhookRelay
from crewship.store.state import Database
from crewship.urls import (
    CloneURL,
    Policy,
    URLRefusedError,
    check_url,
    masked,
    parse_clone_url,
)
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer


def resolving(*addresses: str, calls: list[str] | None = None) -> Policy:
    """A policy whose resolver answers ``addresses`` for any name (and records the names)."""
    def resolver(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return list(addresses)
    return Policy(resolver=resolver)


# ------------------------------------------------------------ the check itself
@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.9", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("fc00::5", "private"), ("fd12:3456::1", "private"), ("100.64.0.1", "CGNAT"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("::ffff:10.0.0.1", "private"), ("198.18.0.1", "private"),
])
def test_webhook_targets_resolving_to_internal_addresses_are_refused(address: str,
                                                                     reason: str) -> None:
    with pytest.raises(URLRefusedError, match=reason) as caught:
        check_url("https://hooks.example.com/in", "taskWebhookUrl", resolving(address))
    message = str(caught.value)
    assert message.startswith("taskWebhookUrl resolves to")
    assert "CREWSHIP_ALLOW_PRIVATE_URLS=1" in message
    assert "\n" not in message


def test_one_internal_address_among_public_ones_is_refused() -> None:
    with pytest.raises(URLRefusedError, match="private"):
        check_url("http://hooks.example.com/", "crewWebhookUrl",
                  resolving("93.184.216.34", "10.0.0.7"))


def test_a_public_target_is_checked_once_and_pinned_to_its_address() -> None:
    calls: list[str] = []
    target = check_url("https://hooks.example.com:8443/x?k=secret", "the alert URL",
                       resolving("93.184.216.34", calls=calls))
    assert (target.host, target.port, target.address) == ("hooks.example.com", 8443,
                                                          "93.184.216.34")
    assert calls == ["hooks.example.com"]


def test_private_targets_pass_only_when_the_operator_allows_them() -> None:
    allowed = Policy(allow_private=True, resolver=lambda host, port: ["10.0.0.5"])
    assert check_url("http://build-box.lan/hook", "stepWebhookUrl", allowed).address == "10.0.0.5"
    assert Settings(allow_private_urls=True).url_policy().allow_private
    assert not Settings().url_policy().allow_private


def test_the_settings_that_relax_the_checks_are_flags() -> None:
    relaxed = from_env({"CREWSHIP_ALLOW_PRIVATE_URLS": "1", "CREWSHIP_ALLOW_LOCAL_CLONE": "true"})
    assert (relaxed.allow_private_urls, relaxed.allow_local_clone) == (True, True)
    assert not from_env({"CREWSHIP_ALLOW_PRIVATE_URLS": "0"}).allow_private_urls
    with pytest.raises(InvalidInputError, match="CREWSHIP_ALLOW_LOCAL_CLONE='maybe'"):
        from_env({"CREWSHIP_ALLOW_LOCAL_CLONE": "maybe"})


def test_the_servers_own_ports_are_refused_even_when_private_targets_are_allowed() -> None:
    policy = Settings(http_port=8123, ssh_port=2299, allow_private_urls=True).url_policy()
    for port in (8123, 2299):
        with pytest.raises(URLRefusedError, match="this crewship server itself"):
            check_url(f"http://127.0.0.1:{port}/apps/demo/kickoff", "crewWebhookUrl", policy)
    assert check_url("http://127.0.0.1:9/x", "crewWebhookUrl", policy).port == 9


def test_an_unresolvable_host_and_bad_syntax_are_refused() -> None:
    with pytest.raises(URLRefusedError, match="cannot resolve host"):
        check_url("https://nowhere.invalid/", "the alert URL", resolving())
    for bad in ("file:///etc/passwd", "gopher://x/", "http:///nohost", "https://a b/",
                "http://host:99999999/"):
        with pytest.raises(InvalidInputError, match="the alert URL"):
            check_url(bad, "the alert URL", resolving("93.184.216.34"))


def test_alert_urls_are_masked_for_non_admins() -> None:
    assert masked("https://hooks.slack.com/services/T0/B0/SECRET") == "https://hooks.slack.com/..."
    assert masked("http://10.0.0.1:8080/?token=x") == "http://10.0.0.1:8080/..."
    assert masked("https://example.com") == "https://example.com/"


# -------------------------------------------------------------- clone URLs
@pytest.mark.parametrize(("url", "kind", "host"), [
    ("https://git.example.com/acme/crew.git", "https", "git.example.com"),
    ("http://git.example.com:8080/crew.git", "http", "git.example.com"),
    ("ssh://git@git.example.com:2222/acme/crew.git", "ssh", "git.example.com"),
    ("git@github.com:acme/crew.git", "ssh", "github.com"),
])
def test_clone_urls_accepted_by_syntax(url: str, kind: str, host: str) -> None:
    parsed = parse_clone_url(url, allow_local=False)
    assert (parsed.kind, parsed.scheme, parsed.host) == ("remote", kind, host)


@pytest.mark.parametrize("url", ["git://git.example.com/crew.git", "ext::sh", "ftp://x/y",
                                 "ext::sh -c touch% /tmp/pwned", "host:path/no-user",
                                 "https:///nohost.git", ""])
def test_clone_urls_of_other_transports_are_refused(url: str) -> None:
    with pytest.raises(URLRefusedError):
        parse_clone_url(url, allow_local=True)


def test_local_clone_paths_are_refused_without_probing_the_file_system(tmp_path: Path) -> None:
    existing, missing = tmp_path, tmp_path / "no-such-dir"
    messages = []
    for path in (str(existing), str(missing), f"file://{existing}", f"file://{missing}"):
        with pytest.raises(URLRefusedError) as caught:
            parse_clone_url(path, allow_local=False)
        messages.append(str(caught.value).replace(str(missing), str(existing)))
    assert messages[0] == messages[1]
    assert messages[2] == messages[3]
    assert "CREWSHIP_ALLOW_LOCAL_CLONE=1" in messages[0]
    assert parse_clone_url(str(existing), allow_local=True).kind == "local"


def test_clone_urls_to_internal_addresses_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    for url in ("https://10.0.0.8/acme/crew.git", "git@192.168.0.2:acme/crew.git",
                "ssh://git@169.254.169.254/crew.git", "http://127.0.0.1:9/crew.git"):
        with pytest.raises(sources.CloneURLError, match="refused"):
            sources.classify_clone_url(url, settings, tmp_path)
    own = sources.classify_clone_url(settings.git_url("demo"), settings, tmp_path)
    assert own.own_app == "demo"


def test_a_remote_clone_is_pinned_to_the_checked_address() -> None:
    https = CloneURL("remote", "https://git.example.com/acme/crew.git", "https",
                     "git.example.com", 443, "/acme/crew.git")
    url, options = sources._pinned(https, "93.184.216.34")
    assert url == https.url
    assert options == ("-c", "http.curloptResolve=git.example.com:443:93.184.216.34")
    scp = parse_clone_url("git@github.com:acme/crew.git", allow_local=False)
    assert sources._pinned(scp, "140.82.112.3") == ("git@140.82.112.3:acme/crew.git", ())


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=30).stdout


def test_gits_own_transport_cannot_reach_a_local_path_on_a_remote_fetch(tmp_path: Path) -> None:
    """What a remote fetch runs with: the file transport is refused by git itself."""
    source = tmp_path / "private"
    source.mkdir()
    _git("init", "-q", "-b", "main", cwd=source)
    (source / "secret.txt").write_text("operator's private code\n")
    _git("add", "-A", cwd=source)
    _git("commit", "-q", "-m", "private", cwd=source)
    bare = tmp_path / "app.git"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    sneaky = sources.CloneTarget(f"file://{source}", None, "https://git.example.com/x.git")
    with pytest.raises(sources.CloneURLError, match="not allowed"):
        asyncio.run(sources.fetch_head(bare, sneaky))
    allowed = sources.CloneTarget(str(source), None, str(source), local=True)
    head = asyncio.run(sources.fetch_head(bare, allowed))
    assert head == _git("rev-parse", "HEAD", cwd=source).strip()


class _Redirector(BaseHTTPRequestHandler):
    """A 'git server' that answers every request with a redirect (to itself, elsewhere)."""

    target = ""
    hits: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_remote_fetch_follows_no_redirect(tmp_path: Path) -> None:
    bare = tmp_path / "app.git"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    _Redirector.target = (f"http://127.0.0.1:{server.server_address[1]}/elsewhere.git"
                          "/info/refs?service=git-upload-pack")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/crew.git"
        with pytest.raises(sources.CloneURLError, match="cannot fetch"):
            asyncio.run(sources.fetch_head(bare, sources.CloneTarget(url, None, url)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert len(_Redirector.hits) == 1  # asked once, the redirect not followed


# --------------------------------------------------------- pinned deliveries
def test_deliveries_connect_to_the_checked_address_with_the_original_host() -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    async def deliver(rx: Receiver) -> list[bool]:
        outcomes: list[bool] = []
        deliverer = Deliverer(Policy(allow_private=True, resolver=resolver), attempts=1)
        deliverer.post(f"http://hooks.example.com:{rx.port}/in", {"n": 1}, what="test",
                       done=outcomes.append)
        await deliverer.drain(10)
        await deliverer.aclose()
        return outcomes

    with Receiver() as rx:
        assert asyncio.run(deliver(rx)) == [True]
        assert rx.bodies("/in") == [{"n": 1}]
        assert rx.host_headers() == [f"hooks.example.com:{rx.port}"]
    assert calls == ["hooks.example.com"]


def test_a_refused_delivery_is_never_attempted_or_retried() -> None:
    calls: list[str] = []

    async def deliver() -> list[bool]:
        outcomes: list[bool] = []
        deliverer = Deliverer(resolving("10.20.30.40", calls=calls), attempts=5, base_delay=5)
        deliverer.post("http://internal.example.com/hook", {}, what="test", done=outcomes.append)
        await deliverer.drain(10)
        await deliverer.aclose()
        return outcomes

    assert asyncio.run(deliver()) == [False]
    assert calls == ["internal.example.com"]


def test_task_and_step_webhooks_are_relayed_once_each_to_the_daemons_deliverer() -> None:
    """The runner records bodies; the daemon relays each once (polls, then the final reply)."""
    due: list[object] = []
    relay = WebhookRelay("demo", "k-1", {"task": "https://hooks.example.com/t"}, due.append)
    events = [{"kind": "task", "body": {"n": n}} for n in range(4)]
    relay.take(events[:2], start=0)         # a poll with after=0
    relay.take(events[1:3], start=1)        # an overlapping poll
    relay.take(events, start=0)             # the final reply: all of them
    relay.take([{"kind": "step", "body": {}}, "junk"], start=4)   # no step URL; junk ignored
    assert [(e.kind, e.url, e.body) for e in due] == [  # type: ignore[attr-defined]
        ("task", "https://hooks.example.com/t", {"n": n}) for n in range(4)]
    assert relay.seen == 6


# --------------------------------------------------------- alert receivers
@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    yield Platform(Settings(data_dir=layout.root, allow_private_urls=True), layout, db)
    db.close()


def test_alert_urls_are_shown_in_full_only_to_app_admins(platform: Platform) -> None:
    owner = platform.accounts.ensure_user("owner")
    app = platform.apps_store.create("demo", owner.id)
    dev, reader = platform.accounts.ensure_user("dev"), platform.accounts.ensure_user("reader")
    platform.apps_store.set_grant(app, dev.id, AccessLevel.DEPLOY)
    platform.apps_store.set_grant(app, reader.id, AccessLevel.READ)
    url = "http://127.0.0.1:9/hooks/T0/SECRET-PATH"
    added = platform.monitoring.add_alert(dev, "demo", url)
    assert [a.url for a in platform.monitoring.alert_receivers(owner, "demo")] == [url]
    for caller in (dev, reader):
        shown = platform.monitoring.alert_receivers(caller, "demo")
        assert [a.url for a in shown] == ["http://127.0.0.1:9/..."]
    removed = platform.monitoring.remove_alert(dev, "demo", added.id)
    assert "SECRET" not in removed.url


# ------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("urls"))  # private URLs NOT allowed
    server.start()
    server.ssh(server.admin_key, "apps:create", "demo", check=True)
    yield server
    server.close()


def test_kickoff_webhooks_to_internal_targets_are_a_400_with_the_reason(
        srv: CrewshipServer) -> None:
    token = srv.ssh(srv.admin_key, "tokens", "demo", check=True).stdout.strip()
    cases = {
        "taskWebhookUrl": ("http://10.0.0.1/x", "taskWebhookUrl resolves to a private address"),
        "stepWebhookUrl": ("http://127.0.0.1:9/s", "stepWebhookUrl resolves to a loopback"),
        "crewWebhookUrl": ("http://169.254.169.254/latest/meta-data",
                           "crewWebhookUrl resolves to a link-local address"),
    }
    with httpx.Client(base_url=f"{srv.http_url}/apps/demo", timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        for field, (url, reason) in cases.items():
            resp = api.post("/kickoff", json={"inputs": {}, field: url})
            assert resp.status_code == 400, resp.text
            assert reason in resp.json()["message"]
            assert "CREWSHIP_ALLOW_PRIVATE_URLS=1" in resp.json()["message"]
        own = api.post("/kickoff", json={"inputs": {},
                                         "crewWebhookUrl": f"{srv.http_url}/apps/demo/kickoff"})
        assert own.status_code == 400
        human = api.post("/kickoff", json={"inputs": {}, "humanInputWebhook": {
            "url": "http://10.0.0.1/hitl", "authentication": {"strategy": "bearer",
                                                              "token": "t"}}})
        assert human.status_code == 400, human.text
        assert "humanInputWebhook.url resolves to a private address" in human.json()["message"]
        assert api.get("/kickoffs").json()["kickoffs"] == []
        resumed = api.post("/resume", json={  # a resume's webhook URLs are checked the same
            "execution_id": "k", "task_id": "t", "human_feedback": "", "is_approve": True,
            "taskWebhookUrl": "http://127.0.0.1:9/t"})
        assert resumed.status_code == 400, resumed.text
        assert "taskWebhookUrl resolves to a loopback" in resumed.json()["message"]


def test_alerts_add_refuses_internal_targets_with_one_line(srv: CrewshipServer) -> None:
    for url, reason in (("http://169.254.169.254/", "link-local"),
                        ("http://127.0.0.1:9/alerts", "loopback"),
                        ("https://192.168.10.1/hook", "private"),
                        ("file:///etc/passwd", "http:// or https://")):
        out = srv.ssh(srv.admin_key, "alerts:add", "demo", url)
        assert out.returncode != 0
        assert reason in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert srv.ssh_json(srv.admin_key, "alerts", "demo", "--json") == []


def test_plus_api_clone_urls_refused_the_same_whether_a_path_exists(
        srv: CrewshipServer) -> None:
    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    messages = []
    with httpx.Client(base_url=srv.http_url, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        for path in ("/etc", "/no/such/dir", "file:///etc", "file:///no/such/dir"):
            resp = api.post("/crewai_plus/api/v1/crews",
                            json={"deploy": {"name": "sneaky_crew", "repo_clone_url": path}})
            assert resp.status_code == 422
            messages.append(resp.json()["repo_clone_url"][0].replace("/no/such/dir", "/etc"))
        internal = api.post("/crewai_plus/api/v1/crews", json={"deploy": {
            "name": "sneaky_crew", "repo_clone_url": "https://10.0.0.3/acme/crew.git"}})
        assert internal.status_code == 422
        assert "private address" in internal.json()["repo_clone_url"][0]
    assert messages[0] == messages[1]
    assert messages[2] == messages[3]
    assert "CREWSHIP_ALLOW_LOCAL_CLONE=1" in messages[0]
    assert "sneaky" not in srv.ssh(srv.admin_key, "apps").stdout


def test_local_clone_paths_work_only_when_the_operator_allows_them(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    project = tmp_path_factory.mktemp("local-project")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "local_crew"\nversion = "0.1.0"\n'
        'dependencies = ["crewai==1.15.30"]\n\n[tool.crewai]\ntype = "crew"\n')
    (project / "src/local_crew").mkdir(parents=True)
    (project / "src/local_crew/__init__.py").write_text("")
    _git("init", "-q", "-b", "main", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-q", "-m", "local", cwd=project)
    head = _git("rev-parse", "HEAD", cwd=project).strip()
    with CrewshipServer(tmp_path_factory.mktemp("local-clone"),
                        env={"CREWSHIP_ALLOW_LOCAL_CLONE": "1"}) as srv:
        token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
        with httpx.Client(base_url=f"{srv.http_url}/crewai_plus/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            inside = api.post("/crews", json={"deploy": {
                "name": "local_crew", "repo_clone_url": str(srv.data_dir / "repos")}})
            assert inside.status_code == 422
            assert "inside crewship's data directory" in inside.json()["repo_clone_url"][0]
            created = api.post("/crews", json={"deploy": {
                "name": "local_crew", "repo_clone_url": f"file://{project}"}})
            assert created.status_code == 201, created.text
        fetched = _git("--git-dir", str(srv.repo_path("local-crew")), "rev-parse", "main",
                       cwd=srv.root).strip()
        assert fetched == head
        remembered = (srv.repo_path("local-crew") / "config").read_text()
        assert "cloneUrl = fernet:" in remembered  # a clone URL may carry a token: sealed
        assert str(project) not in remembered
