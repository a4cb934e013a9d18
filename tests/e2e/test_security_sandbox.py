"""A deployed crew reaches nothing but its own release (issue 10, DESIGN.md section 5).

Two apps run the classic test crew behind a ``[tool.crewship] entrypoint`` that first
probes the sandbox from inside (read state.db, the SSH host key, the other app's home
and log, the repos; write into its environment and its release; signal the other app's
processes) and then runs the real crew against the fake LLM. Every probe must be
refused, the crew must still answer, and the other app must not notice a thing.
``--insecure-no-sandbox`` is the only way out, and it shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crewapi import CrewAPI
from tests.support.crewenv import locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import REPO_ROOT, CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROBE = '''\
"""Sandbox probes, then the real crew (tests/e2e/test_security_sandbox.py)."""
import errno
import json
import os
import signal
import sys
from pathlib import Path


def _try(action):
    try:
        detail = action()
    except OSError as exc:
        return "refused: " + errno.errorcode.get(exc.errno or 0, str(exc))
    return "ALLOWED: " + repr(detail)[:80]


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    return None


def run(inputs):
    t = inputs["targets"]
    import crewai

    probes = {
        "read_state_db": lambda: Path(t["state_db"]).read_bytes()[:16],
        "list_data_dir": lambda: os.listdir(t["data_dir"]),
        "read_host_key": lambda: Path(t["host_key"]).read_bytes()[:16],
        "read_other_home": lambda: Path(t["other_home_file"]).read_text(),
        "list_other_home": lambda: os.listdir(Path(t["other_home_file"]).parent),
        "read_other_log": lambda: Path(t["other_log"]).read_text()[:40],
        "list_repos": lambda: os.listdir(t["repos"]),
        "read_other_release": lambda: os.listdir(t["other_release"]),
        "write_env": lambda: Path(sys.prefix, "probe-write").write_text("x"),
        "write_site_packages": lambda: Path(crewai.__file__).with_name("probe.py").write_text("x"),
        "write_release": lambda: Path(__file__).with_name("probe_write.py").write_text("x"),
    }
    for pid in t["other_pids"]:
        probes[f"signal_{pid}"] = lambda pid=pid: os.kill(pid, signal.SIGTERM)
    own = {
        "home": _try(lambda: Path(os.environ["HOME"], "probe.txt").write_text("ok")),
        "tmp": _try(lambda: Path("/tmp/probe.txt").write_text("ok")),
        "uid": os.getuid(),
        "user": __import__("getpass").getuser(),
        "no_new_privs": _status("NoNewPrivs"),
        "cap_eff": _status("CapEff"),
    }
    results = {name: _try(action) for name, action in probes.items()}
    from demo_crew.crew import DemoCrew

    output = DemoCrew().crew().kickoff(inputs={"topic": inputs["topic"], "audience": "probes"})
    return json.dumps({"probes": results, "own": own, "crew": output.raw})


run.inputs = ["targets", "topic"]
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def probe_project(srv: CrewshipServer, tmp_path: Path) -> Path:
    """The classic test crew (same uv.lock, so the same environment) + the probe entrypoint."""
    project = locked_copy("classic_crew", tmp_path)
    (project / "src/demo_crew/probe.py").write_text(PROBE)
    with (project / "pyproject.toml").open("a") as f:
        f.write('\n[tool.crewship]\nentrypoint = "demo_crew.probe:run"\n')
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", "probe crew", cwd=project)
    return project


def deploy(srv: CrewshipServer, llm: FakeLLM, project: Path, app: str) -> CrewAPI:
    srv.ssh(srv.admin_key, "apps:create", app, check=True)
    srv.ssh(srv.admin_key, "config:set", app, *[f"{k}={v}" for k, v in llm.env().items()],
            check=True)
    out = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False)
    assert out.returncode == 0, out.stderr
    token = srv.ssh(srv.admin_key, "tokens", app, check=True).stdout.strip()
    return CrewAPI(srv.http_url, app, token)


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (outer bwrap, the namespace's init, the crew)."""
    found, todo = [pid], [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def sandbox_pids(pid: int) -> list[int]:
    """The processes that make an instance's sandbox: a cold start's ``family`` (outer
    bwrap, the namespace's init, the crew); for an instance forked from its app's
    preloaded parent, the namespace's init, the parent and the instance."""
    parent = parent_of(pid)
    if "preload" in Path(f"/proc/{parent}/cmdline").read_bytes().decode().split("\0"):
        return [parent_of(parent), parent, pid]
    return family(pid)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def targets(srv: CrewshipServer, other: str) -> dict[str, Any]:
    data = srv.data_dir.resolve()
    other_home = data / "homes" / other
    secret = other_home / "secret.txt"
    secret.write_text("the other app's secret\n")
    secret.chmod(0o644)  # readable by anyone: only the sandbox may hide it
    status = srv.ssh_json(srv.admin_key, "status", other)
    pid = int(status["instances"][0]["pid"])
    host_key = sorted(p for p in (data / "host_keys").iterdir() if p.is_file())[0]
    return {"data_dir": str(data), "state_db": str(data / "state.db"),
            "host_key": str(host_key), "other_home_file": str(secret),
            "other_log": str(data / "logs" / other / "app.log"),
            "repos": str(data / "repos"), "other_release": str(data / "releases" / other),
            "other_pids": sandbox_pids(pid)}


@pytest.fixture(scope="module")
def probes(srv: CrewshipServer, llm: FakeLLM,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, CrewAPI]:
    """probe-a and probe-b, live on ``srv``: their crew API clients."""
    project = probe_project(srv, tmp_path_factory.mktemp("probe"))
    return {app: deploy(srv, llm, project, app) for app in ("probe-a", "probe-b")}


def test_a_crew_finds_everything_outside_its_release_refused_and_still_answers(
        srv: CrewshipServer, probes: dict[str, CrewAPI]) -> None:
    api = probes["probe-a"]
    before = srv.ssh_json(srv.admin_key, "status", "probe-b")
    aim = targets(srv, "probe-b")
    assert len(aim["other_pids"]) == 3, aim   # see sandbox_pids

    done = api.run({"targets": aim, "topic": "walls"})
    assert done["state"] == "SUCCESS", done
    report = json.loads(done["result"])
    # The data dir's path exists in the sandbox only as the skeleton of its own mounts.
    listing = report["probes"].pop("list_data_dir")
    if os.geteuid() == 0:  # under its own uid the crew cannot even list that skeleton
        assert listing.startswith("refused"), listing
    if not listing.startswith("refused"):
        for hidden in ("state.db", "host_keys", "repos", "logs", "instances", "run"):
            assert hidden not in listing, listing
    allowed = {k: v for k, v in report["probes"].items() if not v.startswith("refused")}
    assert allowed == {}, f"the sandbox let these through: {allowed}"
    assert len(report["probes"]) == 10 + 3
    # ... and the crew itself worked: its own HOME and /tmp, the real crew on the fake LLM
    assert report["own"]["home"].startswith("ALLOWED"), report["own"]
    assert report["own"]["tmp"].startswith("ALLOWED"), report["own"]
    assert report["own"]["no_new_privs"] == "1"
    assert int(report["own"]["cap_eff"], 16) == 0
    assert "FAKE-LLM-ANSWER" in report["crew"]
    assert "walls" in report["crew"]

    # the other app did not notice: same instance, same pid, healthy, secret intact
    time.sleep(1)
    after = srv.ssh_json(srv.admin_key, "status", "probe-b")
    assert after["instances"][0]["pid"] == before["instances"][0]["pid"]
    assert after["restarts"] == before["restarts"]
    assert after["state"] == "running"
    assert Path(aim["other_home_file"]).read_text() == "the other app's secret\n"
    assert not (Path(aim["state_db"]).parent / "probe-write").exists()

    if os.geteuid() == 0:  # each app under its own uid; its HOME is that uid's alone
        a_pid = int(srv.ssh_json(srv.admin_key, "status", "probe-a")["instances"][0]["pid"])
        a_uid, b_uid = uid_of(sandbox_pids(a_pid)[-1]), uid_of(aim["other_pids"][-1])
        assert report["own"]["uid"] == a_uid
        assert report["own"]["user"] == "crew-probe-a"
        assert a_uid >= 200_000
        assert b_uid >= 200_000
        assert a_uid != b_uid
        home = srv.data_dir / "homes" / "probe-a"
        assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (a_uid, 0o700)
        assert (home / "probe.txt").read_text() == "ok"

    status = srv.ssh_json(srv.admin_key, "status", "probe-a")
    assert status["sandbox"] is True
    assert "bubblewrap" in status["sandbox_note"]
    assert banner_line(srv, "  sandbox bubblewrap")


def banner_line(srv: CrewshipServer, needle: str, timeout: float = 10.0) -> str:
    """The start banner's line holding ``needle`` (the banner follows server_started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in srv.log_text().splitlines() if needle in line]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no banner line with {needle!r}:\n{srv.log_text()[-2000:]}")


def test_insecure_no_sandbox_is_the_only_way_out_and_it_shows(tmp_path: Path) -> None:
    with CrewshipServer(tmp_path, args=["--insecure-no-sandbox"]) as srv:
        srv.ssh(srv.admin_key, "apps:create", "bare", check=True)
        status = srv.ssh_json(srv.admin_key, "status", "bare")
        assert status["sandbox"] is False
        assert "OFF (--insecure-no-sandbox)" in status["sandbox_note"]
        text = srv.ssh(srv.admin_key, "status", "bare", check=True).stdout
        assert "sandbox:" in text
        assert "unsandboxed" in text
        assert banner_line(srv, "WARNING: sandbox OFF")
        assert srv.logs("sandbox_disabled")
    # the same through the environment
    with CrewshipServer(tmp_path / "env", env={"CREWSHIP_INSECURE_NO_SANDBOX": "1"}) as srv:
        srv.ssh(srv.admin_key, "apps:create", "bare", check=True)
        assert srv.ssh_json(srv.admin_key, "status", "bare")["sandbox"] is False
    # without either, the same server is sandboxed
    with CrewshipServer(tmp_path / "default") as srv:
        srv.ssh(srv.admin_key, "apps:create", "bare", check=True)
        assert srv.ssh_json(srv.admin_key, "status", "bare")["sandbox"] is True
        assert "WARNING" not in banner_line(srv, "  sandbox bubblewrap")


def test_sandboxed_crews_are_adopted_after_a_daemon_restart_and_retired_whole(
        srv: CrewshipServer, probes: dict[str, CrewAPI]) -> None:
    status = srv.ssh_json(srv.admin_key, "status", "probe-a")
    old = sandbox_pids(int(status["instances"][0]["pid"]))
    assert len(old) == 3, old          # see sandbox_pids
    forked = "preload" in Path(f"/proc/{old[1]}/cmdline").read_text()
    kept = old[:2]
    if forked:  # the app's preloaded parent and its sandbox stay for the next instance
        old = old[2:]
    srv.restart(leave_children=True)   # no --die-with-parent: the crews stay up
    adopted = srv.ssh_json(srv.admin_key, "status", "probe-a")
    assert adopted["instances"][0]["pid"] == status["instances"][0]["pid"]
    assert "adopted 1 running instance(s)" in srv.ssh(
        srv.admin_key, "logs", "probe-a", "-n", "200", check=True).stdout
    api = probes["probe-a"]
    done = api.run({"targets": targets(srv, "probe-b"), "topic": "adopted"})
    assert done["state"] == "SUCCESS", done

    # a restart retires the adopted instance: SIGTERM reaches the crew inside its sandbox
    srv.ssh(srv.admin_key, "restart", "probe-a", check=True)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in old) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in old), "the old sandbox lingers"
    if forked:  # the new instance was forked by the same parent, in the same sandbox
        new = srv.ssh_json(srv.admin_key, "status", "probe-a")["instances"][0]["pid"]
        assert sandbox_pids(int(new))[:2] == kept
    assert api.run({"targets": targets(srv, "probe-b"), "topic": "again"})["state"] == "SUCCESS"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="hiding bwrap needs root (a private mount namespace)")
def test_where_bubblewrap_cannot_run_the_server_refuses_to_start(tmp_path: Path) -> None:
    """bwrap replaced by /bin/false in a private mount namespace: one line, the fix."""
    srv = CrewshipServer(tmp_path)
    hide_and_serve = (
        "import os, subprocess, sys; "
        "subprocess.run(['mount', '--bind', '/bin/false', '/usr/bin/bwrap'], check=True); "
        "os.execv(sys.executable, [sys.executable, '-m', 'crewship.cli', 'server'])")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           "-c", hide_and_serve], env=srv.env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "cannot sandbox crews: bubblewrap failed" in errors[0]
    assert "apt-get install bubblewrap" in errors[0]
    assert "--insecure-no-sandbox" in errors[0]
    assert "crewship is running" not in done.stderr
