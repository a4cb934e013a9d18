"""Push to live (issue #3): a real crewai crew, pushed with git over OpenSSH, served by
the daemon's crew API and supervised, against a fake OpenAI-compatible LLM."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root, locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("deploy")) as server:
        yield server


def configure(srv: CrewshipServer, app: str, llm: FakeLLM) -> CrewAPI:
    srv.ssh(srv.admin_key, "apps:create", app, check=True)
    pairs = [f"{k}={v}" for k, v in llm.env().items()]
    out = srv.ssh(srv.admin_key, "config:set", app, *pairs, check=True)
    assert "applies on the next deploy" in out.stdout
    token = srv.ssh(srv.admin_key, "tokens", app, check=True).stdout.strip()
    return CrewAPI(srv.http_url, app, token)


def push(srv: CrewshipServer, project: Path, app: str, *, check: bool = True) -> str:
    result = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stderr


def commit_all(srv: CrewshipServer, project: Path, message: str) -> str:
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", message, cwd=project)
    return srv.git(None, "rev-parse", "HEAD", cwd=project).stdout.strip()


def new_project(srv: CrewshipServer, fixture: str, tmp_path: Path) -> Path:
    project = locked_copy(fixture, tmp_path)
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    commit_all(srv, project, "initial")
    return project


def instance_pid(srv: CrewshipServer, app: str) -> int | None:
    """The pid of the app's first healthy instance, or None while none is up."""
    status = srv.ssh_json(srv.admin_key, "status", app)
    pids = [i["pid"] for i in status["instances"] if i["state"] == "up"]
    return int(pids[0]) if pids else None


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """What a follower printed until ``needle`` appeared; then the follower is stopped."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if needle in line:
                    break
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return "".join(seen)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_classic_crew_push_to_live_redeploy_broken_push_and_crash(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    api = configure(srv, "demo", llm)
    project = new_project(srv, "classic_crew", tmp_path)

    # 1. push: validated, installed, started, health-checked, live.
    out = push(srv, project, "demo")
    for line in ("-----> Validating", "-----> Installing dependencies",
                 "-----> Starting v1", "-----> Health check passed", "=====> demo v1 is live at"):
        assert line in out, out
    assert "sk-fake-test-key" not in out  # config values never reach build output

    # 2. the crew API: health, inputs, kickoff with inputs -> SUCCESS from the fake LLM.
    assert api.get("/").text == "Healthy"
    assert sorted(api.get("/inputs").json()["inputs"]) == ["audience", "topic"]
    done = api.run({"topic": "quantum tea", "audience": "otters"})
    assert done["state"] == "SUCCESS", done
    assert done["status"] == "completed"
    assert "FAKE-LLM-ANSWER" in done["result"]
    assert "quantum tea" in done["result"]
    assert "otters" in done["result"]
    assert done["tasks"]
    assert done["tasks"][0]["task_id"] == "research_task"
    assert done["token_usage"]["total_tokens"] > 0

    # 3. a code-only push redeploys without reinstalling anything, while `logs -t`
    #    keeps following across the redeploy.
    follower = subprocess.Popen([*srv.ssh_argv(srv.admin_key), "logs", "demo", "-t", "-n", "1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    env_dirs = {p.name: p.stat().st_ino for p in (cache_root() / "server-envs").iterdir()}
    tasks = project / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("short briefing", "crisp briefing"))
    second = commit_all(srv, project, "reword the task")
    out = push(srv, project, "demo")
    assert "Installing dependencies (cache hit)" in out, out
    assert "Installed" not in out
    assert "Bytecode compiled" not in out
    assert "=====> demo v2 is live" in out
    assert {p.name: p.stat().st_ino for p in (cache_root() / "server-envs").iterdir()} == env_dirs
    assert "crisp briefing" in api.run({"topic": "a", "audience": "b"})["result"]
    followed = read_until(follower, "[v2.1]", timeout=30)
    assert "[system] deploy v2" in followed, followed

    # 4. a broken crew fails the push by name; the ref goes back; v2 keeps serving.
    tasks.unlink()
    commit_all(srv, project, "lose the tasks")
    out = push(srv, project, "demo", check=False)
    assert "missing_tasks_yaml" in out, out
    assert "failed to push" in out or "error" in out
    head = srv.git(None, "--git-dir", str(srv.repo_path("demo")), "rev-parse", "main",
                   cwd=project).stdout.strip()
    assert head == second
    assert srv.ssh_json(srv.admin_key, "status", "demo")["release"] == "v2"
    assert api.run({"topic": "still", "audience": "here"})["state"] == "SUCCESS"

    # 4b. a crew that crashes when it starts fails the health check; the pusher sees why.
    srv.git(None, "checkout", second, "--", "src/demo_crew/config/tasks.yaml", cwd=project)
    crew_py = project / "src/demo_crew/crew.py"
    crew_py.write_text('raise RuntimeError("boom at import")\n' + crew_py.read_text())
    commit_all(srv, project, "crash at start")
    out = push(srv, project, "demo", check=False)
    assert "health check failed" in out, out
    assert "RuntimeError: boom at import" in out
    assert srv.ssh_json(srv.admin_key, "status", "demo")["release"] == "v2"

    # 5. kill -9 of the crew: a running kickoff ends FAILURE, the app comes back healthy.
    pid = instance_pid(srv, "demo")
    assert pid is not None
    llm.delay = 30
    try:
        running = api.kickoff({"topic": "slow", "audience": "snails"})
        api.wait(running, timeout=60, states=("RUNNING",))
        os.kill(pid, signal.SIGKILL)
        failed = api.wait(running, timeout=30)
    finally:
        llm.delay = 0
    assert failed["state"] == "FAILURE", failed
    assert "during the run" in failed["error"]
    wait_until(lambda: instance_pid(srv, "demo") not in (None, pid)
               and api.get("/").status_code == 200,
               timeout=90, what="the crew to come back")
    assert api.run({"topic": "back", "audience": "again"})["state"] == "SUCCESS"
    assert srv.ssh_json(srv.admin_key, "status", "demo")["restarts"] >= 1
    logs = srv.ssh(srv.admin_key, "logs", "demo", "-n", "400", check=True).stdout
    assert "[system]" in logs
    assert "[v2.1]" in logs


def test_crew_api_rejects_bad_requests_and_runs_nothing(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    api = configure(srv, "strict", llm)
    project = new_project(srv, "classic_crew", tmp_path)
    push(srv, project, "strict")
    before = len(llm.chat_requests())

    missing = api.post("/kickoff", json={"inputs": {"topic": "only"}})
    assert missing.status_code == 422
    assert missing.json()["details"]["missing_inputs"] == ["audience"]
    assert api.post("/kickoff", content=b"{not json").status_code == 400
    assert api.post("/kickoff", json={"inputs": ["a"]}).status_code == 400
    anon = CrewAPI(srv.http_url, "strict", "wrong-token")
    assert anon.post("/kickoff", json={"inputs": {}}).status_code == 401
    assert anon.get("/inputs").status_code == 401
    assert api.get("/status/00000000-0000-0000-0000-000000000000").status_code == 404
    assert len(llm.chat_requests()) == before


@pytest.mark.parametrize(("fixture", "inputs"), [
    ("json_crew", {"topic": "moss", "audience": "gardeners"}),
    ("flow", {"topic": "tides"}),
])
def test_json_crew_and_flow_deploy_and_answer(srv: CrewshipServer, llm: FakeLLM, tmp_path: Path,
                                              fixture: str, inputs: dict[str, str]) -> None:
    app = fixture.replace("_", "-")
    api = configure(srv, app, llm)
    project = new_project(srv, fixture, tmp_path)
    out = push(srv, project, app)
    assert f"=====> {app} v1 is live" in out
    done = api.run(inputs)
    assert done["state"] == "SUCCESS", done
    assert "FAKE-LLM-ANSWER" in done["result"]
    assert next(iter(inputs.values())) in done["result"]
