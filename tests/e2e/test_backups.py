"""Backups and restore (issue #14), end to end: two live apps (one with two releases) with
kickoff history, a backup taken while a push and kickoffs run, the data dir deleted, a
restore from the restic copy into a new dir, and the next server brings every crew back
with its old tokens, releases, kickoffs, commits and host key. A flipped byte is refused."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from builder.release import remove_tree
from tests.conftest import ServerFactory
from tests.e2e.test_deploy import commit_all, configure, new_project, push, wait_until
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INPUTS = {"topic": "moss", "audience": "gardeners"}
KEPT = ("version", "kind", "commit", "status", "live", "config_digest", "created_at",
        "description")


def flip_byte(path: Path, member: str) -> None:
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def releases(srv: CrewshipServer, app: str) -> list[dict[str, Any]]:
    return [{k: r[k] for k in KEPT} for r in srv.ssh_json(srv.admin_key, "releases", app)]


def kickoffs(srv: CrewshipServer, app: str) -> dict[str, str]:
    return {k["kickoff_id"]: k["state"] for k in srv.ssh_json(srv.admin_key, "kickoffs", app)}


def backup_id(output: str) -> str:
    line = next(ln for ln in output.splitlines() if ln.startswith("=====> backup "))
    return line.split()[2]


def test_backup_during_a_push_restore_into_a_new_dir_brings_every_crew_back(
        tmp_path: Path) -> None:
    password = tmp_path / "restic-password"
    password.write_text("e2e restic password\n")
    restic_env = {"CREWSHIP_BACKUP_RESTIC_REPO": str(tmp_path / "restic"),
                  "CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE": str(password)}
    srv = CrewshipServer(tmp_path / "server", env={
        "CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"), **restic_env})
    with FakeLLM() as llm:
        srv.start()
        try:
            run_scenario(srv, llm, tmp_path)
        finally:
            srv.close()


def run_scenario(srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    # Two live apps: alpha with two releases, beta with one; kickoffs in their history.
    alpha, beta = configure(srv, "alpha", llm), configure(srv, "beta", llm)
    project = new_project(srv, "classic_crew", tmp_path / "alpha")
    alpha_v1 = srv.git(None, "rev-parse", "HEAD", cwd=project).stdout.strip()
    push(srv, project, "alpha")
    tasks = project / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("short briefing", "crisp briefing"))
    alpha_v2 = commit_all(srv, project, "reword")
    assert "=====> alpha v2 is live" in push(srv, project, "alpha")
    beta_project = new_project(srv, "classic_crew", tmp_path / "beta")
    push(srv, beta_project, "beta")
    done = [alpha.run(INPUTS)["state"], alpha.run(INPUTS)["state"], beta.run(INPUTS)["state"]]
    assert done == ["SUCCESS"] * 3
    api_token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    before = {"alpha": releases(srv, "alpha"), "beta": releases(srv, "beta")}
    history = {"alpha": kickoffs(srv, "alpha"), "beta": kickoffs(srv, "beta")}
    fingerprint = srv.host_fingerprint

    # A backup while a push (beta v2) builds and kickoffs of alpha run.
    (beta_project / "NOTES.md").write_text("second release\n")
    beta_v2 = commit_all(srv, beta_project, "notes")
    pusher = threading.Thread(target=push, args=(srv, beta_project, "beta"))
    pusher.start()
    running = [alpha.kickoff(INPUTS) for _ in range(2)]
    srv.wait_for_log("push_received", app="beta", timeout=60)
    made = srv.ssh(srv.admin_key, "backups:create", check=True, timeout=300).stdout
    first = backup_id(made)
    assert "stored in restic:" in made
    pusher.join(timeout=300)
    assert all(alpha.wait(k)["state"] == "SUCCESS" for k in running)

    # A second, quiet backup with one flipped byte: refused by verify and by restore.
    second = backup_id(srv.ssh(srv.admin_key, "backups:create", check=True, timeout=300).stdout)
    listed = srv.ssh_json(srv.admin_key, "backups")   # (an automatic one may be there too)
    assert {first, second} <= {b["id"] for b in listed}
    assert all(b["restic_snapshot"] for b in listed)
    assert all(b["apps"] == ["alpha", "beta"] for b in listed)
    damaged = srv.data_dir / "backups" / f"crewship-backup-{second}.tar"
    copy = tmp_path / "damaged.tar"
    flip_byte(damaged, "state.db")
    shutil.copy(damaged, copy)
    refused = srv.ssh(srv.admin_key, "backups:verify", second)
    assert refused.returncode != 0
    assert "does not match" in refused.stderr + refused.stdout
    assert "is intact" in srv.ssh(srv.admin_key, "backups:verify", first, check=True).stdout
    bad = srv.cli("restore", str(copy), "--data-dir", str(tmp_path / "never"), check=False)
    assert bad.returncode != 0
    assert "does not match" in bad.stderr
    assert not (tmp_path / "never").exists()
    snapshot = next(b["restic_snapshot"] for b in listed if b["id"] == first)

    # The disk is lost: the server and its crews stop, the data dir goes.
    srv.stop()
    remove_tree(srv.data_dir)
    srv.data_dir = tmp_path / "restored"
    out = srv.cli("restore", snapshot[:8], "--data-dir", str(srv.data_dir), timeout=300).stdout
    assert f"restored backup {first}" in out
    assert "rebuilds and starts alpha, beta" in out
    srv.start()
    for app in ("alpha", "beta"):
        srv.wait_for_log("app_rebuilt", app=app, timeout=300, since_start=True)
    check_restored(srv, before, history, api_token, fingerprint)
    assert "crisp briefing" in alpha.run(INPUTS)["result"]
    assert beta.run(INPUTS)["state"] == "SUCCESS"
    head = clone_head(srv, "alpha", tmp_path / "clone-alpha")
    assert head == alpha_v2 != alpha_v1
    assert clone_head(srv, "beta", tmp_path / "clone-beta") in {beta_v2, before["beta"][0]["commit"]}


def check_restored(srv: CrewshipServer, before: dict[str, list[dict[str, Any]]],
                   history: dict[str, dict[str, str]], api_token: str, fingerprint: str) -> None:
    assert srv.host_fingerprint == fingerprint
    assert releases(srv, "alpha") == before["alpha"]
    beta = releases(srv, "beta")   # v2 was building during the backup: live or failed
    assert (beta[-1]["version"], beta[-1]["commit"]) == \
        (before["beta"][0]["version"], before["beta"][0]["commit"])
    assert [r for r in beta if r["live"]]
    for app, old in history.items():
        restored = kickoffs(srv, app)
        assert {k: restored.get(k) for k in old} == old
    for app in ("alpha", "beta"):
        status = srv.ssh_json(srv.admin_key, "status", app)
        assert status["state"] == "running"
        assert status["release"] == next(r["version"] for r in releases(srv, app) if r["live"])
    resp = httpx.get(f"{srv.http_url}/crewai_plus/api/v1/crews",
                     headers={"Authorization": f"Bearer {api_token}"}, timeout=30)
    assert resp.status_code == 200
    assert {c["name"] for c in resp.json()} >= {"alpha", "beta"}


def clone_head(srv: CrewshipServer, app: str, dest: Path) -> str:
    srv.git(srv.admin_key, "clone", "-q", srv.git_url(app), str(dest), cwd=dest.parent)
    return subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()


def test_automatic_backups_keep_the_newest_and_a_failure_raises_one_alert(
        server_factory: ServerFactory, tmp_path: Path) -> None:
    password = tmp_path / "restic-password"
    password.write_text("schedule password\n")
    srv = server_factory(env={"CREWSHIP_BACKUP_INTERVAL": "1s", "CREWSHIP_BACKUP_KEEP": "2",
                              "CREWSHIP_BACKUP_RESTIC_REPO": str(tmp_path / "restic"),
                              "CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE": str(password),
                              "CREWSHIP_ALLOW_PRIVATE_URLS": "1"})  # the receiver is on 127.0.0.1
    with Receiver() as rx:
        srv.ssh(srv.admin_key, "apps:create", "ops", check=True)
        srv.ssh(srv.admin_key, "alerts:add", "ops", rx.url("/alerts"), "--events",
                "backup_failed", check=True)
        wait_until(lambda: len(srv.logs("backup_created", trigger="automatic")) >= 3,
                   timeout=120, what="three automatic backups")
        listed = srv.ssh_json(srv.admin_key, "backups")
        assert len(listed) == 2
        assert all(b["trigger"] == "automatic" and b["restic_snapshot"] for b in listed)

        password.unlink()   # the off-machine copy now fails, again and again
        wait_until(lambda: len(srv.logs("backup_failed")) >= 3, timeout=120,
                   what="three failed backups")
        alerts = rx.wait_for("/alerts", count=1)
        assert alerts[0]["event"] == "backup_failed"
        assert "restic" in alerts[0]["message"]
        text = srv.ssh(srv.admin_key, "backups", check=True).stdout
        assert "last backup FAILED" in text
        page = dashboard_home(srv)
        assert "last good backup" in page
        assert "the last backup failed at" in page

        password.write_text("schedule password\n")
        failed = len(srv.logs("backup_failed"))
        created = len(srv.logs("backup_created"))
        wait_until(lambda: len(srv.logs("backup_created")) > created, timeout=120,
                   what="a backup after the fix")
        assert len(rx.bodies("/alerts")) == 1   # one alert for the whole run of failures
        assert len(srv.logs("backup_failed")) >= failed
        assert "FAILED" not in srv.ssh(srv.admin_key, "backups", check=True).stdout


def dashboard_home(srv: CrewshipServer) -> str:
    """The dashboard's apps page as the admin sees it (logged in with an API token)."""
    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    with httpx.Client(base_url=srv.http_url, timeout=30) as client:
        client.post("/dashboard/login", data={"token": token})
        resp = client.get("/", headers={"Accept": "text/html"})
        assert resp.status_code == 200
        return resp.text


def test_crewship_backup_beside_a_running_server_and_bad_input(server: CrewshipServer,
                                                               tmp_path: Path) -> None:
    server.ssh(server.admin_key, "apps:create", "solo", check=True)
    out = server.cli("backup", "--data-dir", str(server.data_dir)).stdout
    assert "1 app(s)" in out
    listed = server.ssh_json(server.admin_key, "backups")
    assert len(listed) == 1
    assert listed[0]["apps"] == ["solo"]
    assert listed[0]["id"] in out
    verified = server.ssh(server.admin_key, "backups:verify", check=True).stdout
    assert f"backup {listed[0]['id']} is intact" in verified
    assert server.ssh_json(server.admin_key, "backups")[0]["verified_at"]

    for args, message in [
        (("backup", "--data-dir", str(tmp_path / "nothing")), "is not a crewship data dir"),
        (("restore", "nope.tar", "--data-dir", str(tmp_path / "new")), "no such archive"),
        (("restore", "abcdef12", "--data-dir", str(tmp_path / "new")),
         "set CREWSHIP_BACKUP_RESTIC_REPO"),
        (("restore", str(server.data_dir / "backups" / f"crewship-backup-{listed[0]['id']}.tar"),
          "--data-dir", str(server.data_dir)), "is not empty"),
    ]:
        result = server.cli(*args, check=False)
        assert result.returncode == 1
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "nothing").exists()
