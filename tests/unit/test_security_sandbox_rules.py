"""The sandbox's rules as data: the bwrap argv, the refusal when bwrap cannot run, the
``--insecure-no-sandbox`` setting, and each app's own uid (real SQLite, no daemon)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from crewship import config
from crewship.cli import build_parser
from crewship.errors import InvalidInputError
from crewship.store.accounts import Accounts
from crewship.store.apps import SANDBOX_UID_BASE, AppStore
from crewship.store.state import Database
from runtime.backend import InstanceSpec
from runtime.sandbox import Sandbox, SandboxUnavailableError


def spec(tmp_path: Path, uid: int | None = 200_123) -> InstanceSpec:
    data = tmp_path / "data"
    release, env, home = data / "releases/a/v1", data / "envs/abc", data / "homes/a"
    return InstanceSpec("a", 1, 1, [sys.executable, "-c", "pass"], {"HOME": str(home)},
                        release / "app", 4321, readonly=(release, env), home=home, uid=uid)


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_bwrap_argv_mounts_only_the_release_env_and_home(tmp_path: Path) -> None:
    s = spec(tmp_path)
    argv = Sandbox().launch(s, info_fd=9).argv
    data = tmp_path / "data"
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-pid", "--unshare-ipc", "--new-session"):
        assert flag in argv
    assert "--die-with-parent" not in argv  # instances outlive the daemon, to be adopted
    assert "--share-net" not in argv
    assert "--unshare-net" not in argv
    assert pairs(argv, "--ro-bind").count(str(data / "releases/a/v1")) == 1
    assert str(data / "envs/abc") in pairs(argv, "--ro-bind")
    assert pairs(argv, "--bind") == [str(data / "homes/a")]   # the only writable host dir
    mounted = pairs(argv, "--ro-bind") + pairs(argv, "--bind")
    assert str(data) not in mounted
    assert "/" not in mounted
    assert not any(p.startswith(str(data / "state.db")) or "/repos" in p or "/logs" in p
                   or "/host_keys" in p for p in mounted)
    assert argv[argv.index("--info-fd") + 1] == "9"
    tail = argv[argv.index("--") + 1:]
    assert tail[-3:] == [sys.executable, "-c", "pass"]
    if os.geteuid() == 0:
        assert tail[0] == "/usr/bin/setpriv"
        assert "--reuid=200123" in tail
        assert "--regid=200123" in tail
        assert "--no-new-privs" in tail
        assert "--bounding-set=-all" in tail
        assert pairs(argv, "--setenv") == ["USER", "LOGNAME"]   # getpass.getuser() works


def test_without_bubblewrap_the_sandbox_refuses_with_the_reason_and_the_fix(
        tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailableError) as missing:
        Sandbox(bwrap=str(tmp_path / "no-bwrap")).check()
    message = str(missing.value)
    assert "not found" in message
    assert "apt-get install bubblewrap" in message
    assert "--insecure-no-sandbox" in message
    assert "\n" not in message


def test_insecure_no_sandbox_comes_from_the_flag_or_the_environment() -> None:
    assert config.from_env({}).sandboxed is True
    assert config.from_env({"CREWSHIP_INSECURE_NO_SANDBOX": "1"}).sandboxed is False
    assert config.from_env({"CREWSHIP_INSECURE_NO_SANDBOX": "0"}).sandboxed is True
    with pytest.raises(InvalidInputError, match="CREWSHIP_INSECURE_NO_SANDBOX"):
        config.from_env({"CREWSHIP_INSECURE_NO_SANDBOX": "maybe"})
    args = build_parser().parse_args(["server", "--insecure-no-sandbox"])
    settings = config.from_env({}, insecure_no_sandbox=args.insecure_no_sandbox)
    assert settings.sandboxed is False
    assert "OFF (--insecure-no-sandbox)" in settings.sandbox_note
    unset = build_parser().parse_args(["server"]).insecure_no_sandbox
    assert config.from_env({"CREWSHIP_INSECURE_NO_SANDBOX": "1"},
                           insecure_no_sandbox=unset).sandboxed is False
    # docker containers are locked down whatever the flag says
    assert config.from_env({}, runtime="docker", insecure_no_sandbox=True).sandboxed is True


def test_each_app_gets_its_own_uid_once(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    try:
        owner = Accounts(db).ensure_user("owner")
        apps = AppStore(db)
        a, b = apps.create("app-a", owner.id), apps.create("app-b", owner.id)
        uid_a, uid_b = apps.sandbox_uid(a), apps.sandbox_uid(b)
        assert uid_a > SANDBOX_UID_BASE
        assert uid_b > SANDBOX_UID_BASE
        assert uid_a != uid_b
        assert apps.sandbox_uid(a) == uid_a      # recorded, not recomputed
        again = Database(tmp_path / "state.db")
        assert AppStore(again).sandbox_uid(b) == uid_b
        again.close()
    finally:
        db.close()


def test_the_dashboard_says_when_crews_run_unsandboxed() -> None:
    from crewship.api import dashboard_html as html

    note = config.from_env({}, insecure_no_sandbox=True).sandbox_note
    row = {"app": "demo", "state": "running", "release": "v1", "url": "http://x/apps/demo",
           "restarts": 0, "scale": 1, "sandbox": False, "sandbox_note": note}
    page = html.render("apps.html", html.apps_context([row]))
    assert 'id="sandbox-warning"' in page
    assert "OFF (--insecure-no-sandbox)" in page
    window = {"count": 0, "failed": 0, "p50": None, "p95": None, "buckets": []}
    app = html.app_context({**row, "uuid": "u", "instances": []}, [], [], window, [], [])
    assert "unsandboxed" in html.render("app.html", app)
    safe = {**row, "sandbox": True, "sandbox_note": config.from_env({}).sandbox_note}
    assert "sandbox-warning" not in html.render("apps.html", html.apps_context([safe]))
