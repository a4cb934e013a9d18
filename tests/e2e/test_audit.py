"""The audit trail (issue 19): who did what, from the real SSH client, never a secret value."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from tests.e2e.test_accounts import error_line
from tests.support.server import CrewshipServer, key_fingerprint

pytestmark = pytest.mark.e2e

SECRET = "hunter2-do-not-log-me"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("audit"))
    server.start()
    yield server
    server.close()


def test_the_audit_lists_a_config_set_with_its_user_and_never_its_value(
        srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "ledger", check=True)
    srv.ssh(srv.admin_key, "config:set", "ledger", f"PAYMENT_KEY={SECRET}", check=True)
    bob = srv.add_user("bob")
    srv.ssh(srv.admin_key, "access:add", "ledger", "bob", "admin", check=True)
    srv.ssh(bob, "config:unset", "ledger", "PAYMENT_KEY", check=True)
    srv.ssh(bob, "ps:scale", "ledger", "2", check=True)
    stranger = srv.make_key("stranger")
    assert srv.ssh(stranger, "whoami").returncode != 0      # a failed authentication

    trail = srv.ssh_json(srv.admin_key, "audit", "-n", "100")
    config = [e for e in trail if e["action"] == "config:set"]
    assert len(config) == 1, trail
    assert config[0]["user"] == "admin"
    assert config[0]["app"] == "ledger"
    assert config[0]["outcome"] == "ok"
    assert config[0]["summary"] == "set PAYMENT_KEY"
    assert config[0]["credential"] == f"key {key_fingerprint(srv.admin_key)}"
    unset = next(e for e in trail if e["action"] == "config:unset")
    assert (unset["user"], unset["credential"]) == ("bob", f"key {key_fingerprint(bob)}")
    actions = [e["action"] for e in reversed(trail)]
    for expected in ("apps:create", "config:set", "keys:add", "access:add", "config:unset",
                     "ps:scale", "auth_failed"):
        assert expected in actions, actions
    refused = next(e for e in trail if e["action"] == "auth_failed")
    assert refused["credential"] == f"key {key_fingerprint(stranger)}"
    assert refused["user"] is None
    # never the value: not in the trail, not in the text, not in the database file
    assert SECRET not in json.dumps(trail)
    text = srv.ssh(srv.admin_key, "audit", "--app", "ledger", check=True).stdout
    assert "set PAYMENT_KEY" in text
    assert SECRET not in text
    with closing(sqlite3.connect(srv.data_dir / "state.db")) as db:
        dump = repr(db.execute("SELECT * FROM audit").fetchall())
    assert "PAYMENT_KEY" in dump
    assert SECRET not in dump


def test_an_apps_admins_read_its_audit_and_nothing_else(srv: CrewshipServer) -> None:
    carol = srv.add_user("carol")
    srv.ssh(carol, "apps:create", "carols", check=True)
    srv.ssh(carol, "ps:scale", "carols", "3", check=True)
    mine = srv.ssh_json(carol, "audit", "carols")
    assert [e["action"] for e in mine] == ["ps:scale", "apps:create"]
    assert {e["app"] for e in mine} == {"carols"}
    assert "only an admin" in error_line(srv.ssh(carol, "audit"))
    assert "not found" in error_line(srv.ssh(carol, "audit", "ledger"))
    by_carol = srv.ssh_json(srv.admin_key, "audit", "--user", "carol")
    assert {e["user"] for e in by_carol} == {"carol"}
    failed = srv.ssh(carol, "ps:scale", "carols", "99")
    assert failed.returncode != 0
    assert srv.ssh_json(carol, "audit", "carols", "-n", "1")[0]["outcome"] == "failed"


def test_dashboard_logins_and_api_tokens_are_audited_by_token_id(srv: CrewshipServer) -> None:
    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    token_id = srv.ssh_json(srv.admin_key, "api-tokens")[-1]["id"]
    good = httpx.post(f"{srv.http_url}/dashboard/login", data={"token": token}, timeout=10)
    assert good.status_code == 303
    bad = httpx.post(f"{srv.http_url}/dashboard/login", data={"token": "csu_nope"}, timeout=10)
    assert bad.status_code == 401
    trail = srv.ssh_json(srv.admin_key, "audit", "-n", "5")
    login = next(e for e in trail if e["action"] == "dashboard:login")
    assert (login["user"], login["credential"]) == ("admin", f"token {token_id}")
    refused = next(e for e in trail if e["action"] == "auth_failed")
    assert refused["summary"].startswith("dashboard login refused")
    assert "csu_nope" not in json.dumps(trail)
    assert token not in json.dumps(trail)
    created = next(e for e in trail if e["action"] == "api-tokens:create")
    assert created["user"] == "admin"
