"""Preloaded crew runtimes (issue 15): instances forked from a parent that imported crewai
once, inside the app's sandbox, behave like cold ones and survive kill -9 of either side."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crewapi import CrewAPI
from tests.support.crewenv import locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.sandboxes import kill_preload_sandboxes
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
APP = "forked"
INPUTS = {"topic": "preloading", "audience": "operators"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("preload")) as server:
        try:
            yield server
        finally:
            server.close()
            kill_preload_sandboxes(server.data_dir)


def wait_until(predicate: Callable[[], object], timeout: float = 90.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def up_pid(srv: CrewshipServer) -> int | None:
    status = srv.ssh_json(srv.admin_key, "status", APP)
    pids = [int(i["pid"]) for i in status["instances"] if i["state"] == "up"]
    return pids[0] if pids else None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def push_code(srv: CrewshipServer, project: Path, marker: str) -> str:
    tasks = project / "src/demo_crew/config/tasks.yaml"
    text = tasks.read_text()
    start = text.index("Write a ")
    end = text.index(" briefing")
    tasks.write_text(text[:start] + f"Write a {marker}" + text[end:])
    srv.git(None, "commit", "-q", "-am", marker, cwd=project)
    result = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False)
    assert result.returncode == 0, result.stderr
    assert "Installing dependencies (cache hit)" in result.stderr, result.stderr
    return result.stderr


def test_forked_instances_serve_pick_up_new_code_and_survive_kill_9(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    srv.ssh(srv.admin_key, "apps:create", APP, check=True)
    srv.ssh(srv.admin_key, "config:set", APP, *[f"{k}={v}" for k, v in llm.env().items()],
            check=True)
    api = CrewAPI(srv.http_url, APP, srv.ssh(srv.admin_key, "tokens", APP, check=True).stdout.strip())
    project = locked_copy("classic_crew", tmp_path)
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", "initial", cwd=project)
    first = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False)
    assert first.returncode == 0, first.stderr

    # 1. the instance is a child of the app's preloaded parent, which runs in the sandbox
    pid = up_pid(srv)
    assert pid is not None
    parent = parent_of(pid)
    assert "preload" in cmdline(parent), cmdline(parent)
    assert srv.logs("preload_started")
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "200", check=True).stdout
    assert "preloaded runtime ready" in logs, logs
    assert "[preload] preload: imported crewai" in logs, logs
    assert "[v1.1] loading crew" in logs, logs   # its own output, tagged as a cold start's
    done = api.run(INPUTS)
    assert done["state"] == "SUCCESS", done
    assert "Write a short briefing about preloading" in done["result"]

    # 2. a code-only push forks the new release from the same parent and serves its code
    push_code(srv, project, "NEWCODE-2")
    pid2 = up_pid(srv)
    assert pid2 is not None
    assert pid2 != pid
    assert parent_of(pid2) == parent
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "200", check=True).stdout
    assert "/v2/app" in next(line for line in logs.splitlines() if "[v2.1] loading" in line)
    done = api.run(INPUTS)
    assert done["state"] == "SUCCESS", done
    assert "Write a NEWCODE-2 briefing" in done["result"], done["result"]

    # ... and so does a config change: config values never reach the parent
    srv.ssh(srv.admin_key, "config:set", APP, "PRELOAD_TEST=1", check=True)
    pid2 = up_pid(srv)
    assert pid2 is not None
    assert parent_of(pid2) == parent
    done = api.run(INPUTS)
    assert done["state"] == "SUCCESS", done
    assert b"PRELOAD_TEST" not in Path(f"/proc/{parent}/environ").read_bytes()

    # 3. kill -9 of the parent: the instance keeps serving, a new parent is started
    os.kill(parent, signal.SIGKILL)
    wait_until(lambda: len(srv.logs("preload_started")) >= 2, what="a new preloaded parent")
    assert up_pid(srv) == pid2
    done = api.run(INPUTS)
    assert done["state"] == "SUCCESS", done

    # 4. kill -9 of the instance: the supervisor restarts it, forked from the new parent
    os.kill(pid2, signal.SIGKILL)
    wait_until(lambda: up_pid(srv) not in (None, pid2), what="a restarted instance")
    pid3 = up_pid(srv)
    assert pid3 is not None
    new_parent = parent_of(pid3)
    assert new_parent != parent
    assert "preload" in cmdline(new_parent)
    done = api.run(INPUTS)
    assert done["state"] == "SUCCESS", done
    assert "Write a NEWCODE-2 briefing" in done["result"]
    logs = system_lines(srv)
    assert "v3.1 exited (status unknown), restarting" in logs, logs  # its parent was gone

    # 5. a daemon restart adopts the forked instance and its parent; a crash then forks again
    srv.restart(leave_children=True)
    wait_until(lambda: up_pid(srv) == pid3, what="the forked instance adopted")
    assert api.run(INPUTS)["state"] == "SUCCESS"
    os.kill(pid3, signal.SIGKILL)
    wait_until(lambda: up_pid(srv) not in (None, pid3), what="a restart after adoption")
    pid4 = up_pid(srv)
    assert pid4 is not None
    assert parent_of(pid4) == new_parent
    assert api.run(INPUTS)["state"] == "SUCCESS"
    logs = system_lines(srv)
    assert "v3.1 exited with status -9, restarting" in logs, logs  # its parent's report

    # 6. what the parent was made with changes (here the server's TZ, passed to crews; a new
    # uv.lock or crewship does the same): the instance is adopted as it is, the next one
    # comes from a new parent, and the old parent, its last instance gone, exits
    srv.extra_env["TZ"] = "Etc/UTC"
    srv.restart(leave_children=True)
    wait_until(lambda: up_pid(srv) == pid4, what="the instance adopted again")
    os.kill(pid4, signal.SIGKILL)
    wait_until(lambda: up_pid(srv) not in (None, pid4), what="an instance of the new parent")
    pid5 = up_pid(srv)
    assert pid5 is not None
    assert parent_of(pid5) != new_parent
    assert "preload" in cmdline(parent_of(pid5))
    wait_until(lambda: not Path(f"/proc/{new_parent}").exists()
               or Path(f"/proc/{new_parent}/stat").read_text().split()[2] == "Z",
               what="the retired parent to exit")
    assert api.run(INPUTS)["state"] == "SUCCESS"


def system_lines(srv: CrewshipServer) -> str:
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "5000", check=True).stdout
    return "\n".join(line for line in logs.splitlines() if "[system]" in line)


SELF = '''\
"""What an instance sees of itself (tests/e2e/test_preload.py)."""
import getpass
import json
import json
import os
import sys


def run(inputs):
    from demo_crew.crew import DemoCrew

    output = DemoCrew().crew().kickoff(inputs={"topic": "self", "audience": "tests"})
    return json.dumps({"env": dict(os.environ), "path": sys.path[:3], "cwd": os.getcwd(),
                       "user": getpass.getuser(), "stdin": os.readlink("/proc/self/fd/0"),
                       "session": os.getsid(0) == os.getpid(), "crew": output.raw})


run.inputs = []
'''


def seen_from_inside(srv: CrewshipServer, llm: FakeLLM, project: Path) -> dict[str, Any]:
    """Deploy the self-describing entrypoint as ``self`` and run it once; paths under the
    server's data dir read ``DATA``."""
    srv.ssh(srv.admin_key, "apps:create", "self", check=True)
    srv.ssh(srv.admin_key, "config:set", "self", *[f"{k}={v}" for k, v in llm.env().items()],
            check=True)
    token = srv.ssh(srv.admin_key, "tokens", "self", check=True).stdout.strip()
    out = srv.git(srv.admin_key, "push", srv.git_url("self"), "main", cwd=project, check=False)
    assert out.returncode == 0, out.stderr
    done = CrewAPI(srv.http_url, "self", token).run({})
    assert done["state"] == "SUCCESS", done
    text = done["result"].replace(str(srv.data_dir), "DATA")
    return dict(json.loads(text))


def test_a_forked_instance_sees_what_a_cold_one_sees(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    project = locked_copy("classic_crew", tmp_path)
    (project / "src/demo_crew/whoami.py").write_text(SELF)
    with (project / "pyproject.toml").open("a") as f:
        f.write('\n[tool.crewship]\nentrypoint = "demo_crew.whoami:run"\n')
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", "whoami", cwd=project)

    forked = seen_from_inside(srv, llm, project)
    pid = int(srv.ssh_json(srv.admin_key, "status", "self")["instances"][0]["pid"])
    assert "preload" in cmdline(parent_of(pid))
    with shared_envs_server(tmp_path_factory.mktemp("cold"),  # the same settings, cold
                            env={**srv.extra_env, "CREWSHIP_PRELOAD": "0"}) as cold_srv:
        cold = seen_from_inside(cold_srv, llm, project)
        pid = int(cold_srv.ssh_json(cold_srv.admin_key, "status", "self")["instances"][0]["pid"])
        assert "preload" not in cmdline(pid)
    assert "FAKE-LLM-ANSWER" in str(forked.pop("crew"))
    assert "FAKE-LLM-ANSWER" in str(cold.pop("crew"))
    differ = {k: (forked["env"].get(k), cold["env"].get(k))
              for k in {*forked["env"], *cold["env"]} if forked["env"].get(k) != cold["env"].get(k)}
    assert not differ, differ
    assert forked == cold  # environment, sys.path, cwd, user, stdin, session
    assert forked["env"]["HOME"] == "DATA/homes/self"
    assert "OPENBLAS_NUM_THREADS" not in forked["env"]  # the parent's own setting stays the parent's
