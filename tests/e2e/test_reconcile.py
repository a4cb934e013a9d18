"""Startup reconciliation (issue 12 item 4): a daemon killed with SIGKILL mid-deploy
or with a crashed app comes back with nothing half-done, nothing orphaned and
nothing silently restarted. Real daemon, real git over OpenSSH, a real crew."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_deploy import commit_all, configure, instance_pid, new_project, push
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, descendants

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A crew that takes SLOW_IMPORT seconds to import (read from the app's config).
SLOW = "import os as _os, time as _time\n_time.sleep(float(_os.environ.get('SLOW_IMPORT', '0')))\n"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
           "CREWSHIP_HEALTH_TIMEOUT": "120", "CREWSHIP_CRASH_LIMIT": "1"}
    server = CrewshipServer(tmp_path / "srv", env=env)
    server.start()
    yield server
    server.close()


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def kill9(srv: CrewshipServer) -> list[int]:
    """SIGKILL the daemon alone (its crews live on in their own sessions)."""
    family = descendants(srv.pid)
    assert srv.proc is not None
    os.kill(srv.pid, signal.SIGKILL)
    srv.proc.wait(10)
    srv.proc = None
    srv._leftovers.update(family)  # close() kills whatever is still left
    return family


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def slow_project(srv: CrewshipServer, tmp_path: Path) -> Path:
    project = new_project(srv, "classic_crew", tmp_path)
    crew_py = project / "src/demo_crew/crew.py"
    crew_py.write_text(SLOW + crew_py.read_text())
    commit_all(srv, project, "a crew whose import time is set by config")
    return project


def mentioning(path: Path) -> list[int]:
    """Pids of live processes whose command line names ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(path).encode() in arg for arg in argv) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def ref_head(srv: CrewshipServer, project: Path) -> str:
    return srv.git(None, "rev-parse", "HEAD", cwd=project).stdout.strip()


def new_instances(srv: CrewshipServer, old_pid: int) -> list[int]:
    return [int(e["pid"]) for e in srv.logs("instance_started", since_start=True)
            if e["app"] in ("live", "first") and e["pid"] != old_pid]


def ref_of(srv: CrewshipServer, app: str) -> str | None:
    result = subprocess.run(["git", "-C", str(srv.repo_path(app)), "rev-parse", "--verify",
                             "-q", "refs/heads/main"], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or None


def pushes(srv: CrewshipServer, app: str) -> list[tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(srv.data_dir / "state.db") as db:
        rows = db.execute("SELECT new_sha, outcome FROM pushes JOIN apps ON apps.id = app_id "
                          "WHERE apps.name = ? ORDER BY pushes.id", (app,)).fetchall()
    return [(str(r[0]), r[1]) for r in rows]


def test_kill9_during_health_check_reverts_the_push_and_stops_its_instances(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    # "live": v1 serving at commit A; then a push of B that hangs in its health check.
    configure(srv, "live", llm)
    project = slow_project(srv, tmp_path / "live")
    commit_a = ref_head(srv, project)
    push(srv, project, "live")
    v1_pid = instance_pid(srv, "live")
    assert v1_pid is not None
    srv.ssh(srv.admin_key, "config:set", "live", "SLOW_IMPORT=300", "--no-restart", check=True)
    (project / "NOTES.md").write_text("second\n")
    commit_b = commit_all(srv, project, "second")
    # "first": a first deploy (no live release yet) that hangs in its health check.
    configure(srv, "first", llm)
    srv.ssh(srv.admin_key, "config:set", "first", "SLOW_IMPORT=300", check=True)
    first = slow_project(srv, tmp_path / "first")
    commit_f = ref_head(srv, first)

    pushers = [subprocess.Popen(["git", "push", srv.git_url(app), "main"], cwd=path,
                                env=srv.git_env(srv.admin_key), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for app, path in (("live", project), ("first", first))]
    try:
        wait_until(lambda: len(new_instances(srv, v1_pid)) == 2, 120,
                   "both deploys to start their instances")
        starting = new_instances(srv, v1_pid)
        kill9(srv)
    finally:
        for pusher in pushers:
            pusher.wait(60)
    assert all(p.returncode != 0 for p in pushers)
    assert all(alive(pid) for pid in starting)  # the half-deployed instances outlived it

    srv.start()
    # the interrupted instances are stopped (their log relays end with them); the live
    # one is adopted, not restarted
    wait_until(lambda: not any(alive(pid) for pid in starting), 30, "orphans to stop")
    wait_until(lambda: not mentioning(srv.data_dir / "logs" / "first"), 30,
               "the first app's log relay to end")
    assert instance_pid(srv, "live") == v1_pid
    # branches are back where the live release is, the pushes are recorded as failed
    assert ref_of(srv, "live") == commit_a
    assert ref_of(srv, "first") is None
    assert pushes(srv, "live")[-1] == (commit_b, "failed")
    assert pushes(srv, "first") == [(commit_f, "failed")]
    # nothing half-made is left: no scratch trees, no release dir of the killed builds
    tmp = srv.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    assert not (srv.data_dir / "releases" / "first" / "v1").exists()
    assert not (srv.data_dir / "releases" / "live" / "v2").exists()
    releases = srv.ssh_json(srv.admin_key, "releases", "live")
    assert releases[0]["status"] == "failed"
    assert "server stopped" in releases[0]["error"]

    # pushing the same commits again deploys them
    srv.ssh(srv.admin_key, "config:set", "live", "SLOW_IMPORT=0", "--no-restart", check=True)
    srv.ssh(srv.admin_key, "config:set", "first", "SLOW_IMPORT=0", check=True)
    out = push(srv, project, "live")
    assert "live v3 is live" in out, out
    assert ref_of(srv, "live") == commit_b
    out = push(srv, first, "first")
    assert "first v2 is live" in out, out


def test_a_crashed_app_stays_crashed_across_kill9_and_scale_0_reads_stopped(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    configure(srv, "loop", llm)
    push(srv, new_project(srv, "classic_crew", tmp_path / "loop"), "loop")
    pid = instance_pid(srv, "loop")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # CREWSHIP_CRASH_LIMIT=1: the first crash gives up
    wait_until(lambda: srv.ssh_json(srv.admin_key, "status", "loop")["state"] == "crashed",
               30, "the app to be crashed")
    configure(srv, "idle", llm)
    push(srv, new_project(srv, "classic_crew", tmp_path / "idle"), "idle")
    srv.ssh(srv.admin_key, "ps:scale", "idle", "0", check=True)

    kill9(srv)
    srv.start()
    srv.wait_for_log("server_started", since_start=True)
    time.sleep(2)  # a silent restart would have started an instance by now
    status = srv.ssh_json(srv.admin_key, "status", "loop")
    assert status["state"] == "crashed", status
    assert not [i for i in status["instances"] if i["state"] == "up"]
    assert not srv.logs("instance_started", since_start=True, app="loop")
    assert srv.ssh_json(srv.admin_key, "status", "idle")["state"] == "stopped"

    # a restart clears it, and that survives the next daemon restart too
    srv.ssh(srv.admin_key, "restart", "loop", check=True)
    assert instance_pid(srv, "loop") is not None
    srv.restart(leave_children=True)
    assert srv.ssh_json(srv.admin_key, "status", "loop")["state"] == "running"


def test_destroy_waits_for_a_running_deploy_then_leaves_nothing_running(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    configure(srv, "doomed", llm)
    srv.ssh(srv.admin_key, "config:set", "doomed", "SLOW_IMPORT=4", check=True)
    project = slow_project(srv, tmp_path / "doomed")
    pusher = subprocess.Popen(["git", "push", srv.git_url("doomed"), "main"], cwd=project,
                              env=srv.git_env(srv.admin_key), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    srv.wait_for_log("instance_started", app="doomed", timeout=120, since_start=True)
    destroy = srv.ssh(srv.admin_key, "apps:destroy", "doomed", "--force")
    _, err = pusher.communicate(timeout=120)
    assert pusher.returncode == 0, err         # the deploy was not cut off under it ...
    assert destroy.returncode == 0, destroy.stderr
    destroyed = srv.logs("app_destroyed", since_start=True)[0]["timestamp"]
    live = srv.logs("deploy_finished", since_start=True, app="doomed")[0]["timestamp"]
    assert live < destroyed                    # ... destroy ran after it
    wait_until(lambda: not mentioning(srv.data_dir / "releases" / "doomed"), 30,
               "the destroyed app's instance to stop")
    assert not (srv.data_dir / "releases" / "doomed").exists()
