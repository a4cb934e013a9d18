"""The in-crew runner (runtime/runner.py) against real crewAI projects and a fake LLM.

Each test crew in tests/fixtures/ gets a real uv environment (cached, see
tests/support/crewenv.py); the runner runs as a child process with that interpreter,
exactly as the supervisor starts it, its output appended to a log file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.release import copy_runner
from runtime.runner.signing import SIGNATURE_HEADER, sign
from tests.support import crewenv
from tests.support.fakellm import ANSWER_PREFIX, FakeLLM

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).resolve().parents[2] / "runtime" / "runner"
INSTANCE = "v1.1"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[v1\.1\] ")
HEALTH_TIMEOUT = 90.0
SECRET = b"a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"  # each runner's channel secret, on its stdin
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")

FIXTURES: dict[str, dict[str, Any]] = {
    "classic_crew": {
        "args": ["--kind", "crew", "--package", "demo_crew"],
        "inputs": ["audience", "topic"],
        "optional": {},
        "kickoff": {"topic": "quantum kittens", "audience": "platform engineers"},
        "missing": {"topic": "quantum kittens"},
    },
    "json_crew": {
        "args": ["--kind", "json_crew", "--definition", "crew.jsonc"],
        "inputs": ["topic"],  # audience has a default in crew.jsonc
        "optional": {"audience": "developers"},
        "kickoff": {"topic": "quantum kittens"},
        "missing": {"audience": "SREs"},
    },
    "flow": {
        "args": ["--kind", "flow", "--package", "demo_flow"],
        "inputs": [],  # BriefingState.topic has a default ("")
        "optional": {"topic": ""},
        "kickoff": {"topic": "quantum kittens"},
        "missing": {"topic": ""},  # the flow's first step refuses an empty topic
    },
    "declarative_flow": {
        "args": ["--kind", "declarative_flow", "--definition", "src/demo_decl/flow.yaml"],
        "inputs": [],  # the dict state's topic has a default in flow.yaml
        "optional": {"topic": "AI agents"},
        "kickoff": {"topic": "quantum kittens"},
        "missing": None,  # state.topic has a default: nothing is ever missing
    },
    "entrypoint": {
        "fixture": "classic_crew",  # [tool.crewship] entrypoint = "demo_crew.crew:DemoCrew"
        "args": ["--kind", "entrypoint", "--entrypoint", "demo_crew.crew:DemoCrew"],
        "inputs": ["audience", "topic"],
        "optional": {},
        "kickoff": {"topic": "quantum kittens", "audience": "platform engineers"},
        "missing": {"audience": "SREs"},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = 60.0,
    secret: bytes | None = SECRET,
) -> tuple[int, dict[str, Any]]:
    """A request signed as the daemon signs it (``secret=None``: unsigned)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {} if secret is None else {SIGNATURE_HEADER: sign(secret, method, path, data or b"")}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class RunnerProcess:
    """One runner child process laid out like a release: <dir>/crewship_runner/ + app."""

    def __init__(
        self, project: Path, python: Path, args: list[str], llm: FakeLLM, wrap: list[str] | None = None
    ) -> None:
        release = project.parent
        self.script = release / "crewship_runner"
        if not self.script.exists():
            copy_runner(RUNNER, self.script)
        self.log = release / f"app-{time.monotonic_ns()}.log"
        self.port = free_port()
        home = release / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            **llm.env(),
        }
        argv = [
            *(wrap or []),
            str(python),
            str(self.script),
            "--app-dir",
            str(project),
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--instance",
            INSTANCE,
        ]
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                argv, cwd=project, env=env, stdin=subprocess.PIPE, stdout=fd, stderr=fd
            )
        finally:
            os.close(fd)
        assert self.proc.stdin is not None
        self.proc.stdin.write(SECRET + b"\n")
        self.proc.stdin.close()
        self.started = time.monotonic()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"runner exited {self.proc.returncode}:\n{self.output()}")
            try:
                status, body = call(self.port, "GET", "/healthz", timeout=2)
            except OSError:
                time.sleep(0.2)
                continue
            if status == 200:
                return body
            time.sleep(0.2)
        pytest.fail(f"runner not healthy after {HEALTH_TIMEOUT}s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def run_to_end(port: int, kickoff_id: str, inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /runs (202 at once), long-poll the run to its end, acknowledge it."""
    status, body = call(port, "POST", "/runs", {"kickoff_id": kickoff_id, "inputs": inputs})
    assert status == 202, body
    while body.get("state") not in TERMINAL:
        status, body = call(port, "GET", f"/runs/{kickoff_id}?wait=20")
    assert call(port, "POST", f"/runs/{kickoff_id}/ack")[0] == 200
    return status, body


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def env_for(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``env_for(name)`` -> (project_dir, env_python), built once per fixture name."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            started = time.monotonic()
            built[name] = crewenv.prepare(name, tmp_path_factory.mktemp(name))
            print(f"env for {name} ready in {time.monotonic() - started:.1f}s")
        return built[name]

    return get


@pytest.fixture
def start_runner(env_for: Any, llm: FakeLLM) -> Iterator[Any]:
    started: list[RunnerProcess] = []

    def start(name: str, args: list[str] | None = None, wrap: list[str] | None = None) -> RunnerProcess:
        spec = FIXTURES.get(name, {})
        project, python = env_for(spec.get("fixture", name))
        runner = RunnerProcess(project, python, args or spec["args"], llm, wrap)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.kill()


def stop_cleanly(runner: RunnerProcess) -> None:
    """SIGTERM: the runner exits 0, every line it wrote stamped and tagged."""
    runner.proc.send_signal(signal.SIGTERM)
    try:
        assert runner.proc.wait(timeout=30) == 0, runner.output()
    except subprocess.TimeoutExpired:
        pytest.fail(f"runner still running 30 s after SIGTERM:\n{runner.output()[-3000:]}")
    lines = [line for line in runner.output().splitlines() if line]
    assert all(LINE.match(line) for line in lines), [ln for ln in lines if not LINE.match(ln)]


@pytest.fixture(scope="module")
def serving(env_for: Any, llm: FakeLLM) -> Iterator[Any]:
    """``serving(name)``: one healthy runner per fixture for the module's tests that leave it
    serving (a cold start is 4-5 s of CPU); at the end each stops cleanly on SIGTERM."""
    started: dict[str, RunnerProcess] = {}

    def get(name: str) -> RunnerProcess:
        if name not in started:
            spec = FIXTURES[name]
            project, python = env_for(spec.get("fixture", name))
            runner = RunnerProcess(project, python, spec["args"], llm)
            started[name] = runner
            runner.wait_healthy()
            print(f"{name}: healthy {time.monotonic() - runner.started:.1f}s after start")
        return started[name]

    yield get
    try:
        for runner in started.values():
            stop_cleanly(runner)
    finally:
        for runner in started.values():
            runner.kill()


@pytest.mark.parametrize("name", list(FIXTURES))
def test_runner_serves_kickoffs(name: str, serving: Any, llm: FakeLLM) -> None:
    spec = FIXTURES[name]
    runner = serving(name)
    status, health = call(runner.port, "GET", "/healthz")
    assert status == 200, health
    assert health["status"] == "ok"
    assert health["inputs"] == spec["inputs"]
    described = {"inputs": spec["inputs"], "optional_inputs": spec["optional"], "flow": "flow" in name}
    assert call(runner.port, "GET", "/inputs") == (200, described)

    status, body = run_to_end(runner.port, "k-ok", spec["kickoff"])
    assert status == 200
    assert body["state"] == "SUCCESS", body
    assert ANSWER_PREFIX in body["result"]
    for value in spec["kickoff"].values():
        assert value in body["result"]
    assert body["token_usage"]["total_tokens"] > 0
    assert body["execution_time"] >= 0
    if "crew" in name or name == "entrypoint":
        assert [t["task_id"] for t in body["tasks"]] == ["research_task"]
        assert ANSWER_PREFIX in body["tasks"][0]["output"]
    assert call(runner.port, "GET", "/runs/k-ok")[0] == 404  # acknowledged: forgotten
    assert any(spec["kickoff"]["topic"] in json.dumps(r) for r in llm.chat_requests())

    if spec["missing"] is not None:
        status, body = run_to_end(runner.port, "k-bad", spec["missing"])
        assert status == 200
        assert body["state"] == "FAILURE"
        assert body["error"].startswith("ValueError: ")

    text = runner.output()
    assert all(LINE.match(line) for line in text.splitlines() if line)
    assert f"listening on 127.0.0.1:{runner.port}" in text
    assert re.search(r"kickoff k-ok finished SUCCESS in \d+\.\ds", text)
    assert "sk-fake-test-key" not in text


def test_runner_rejects_bad_requests(serving: Any) -> None:
    runner = serving("classic_crew")
    assert call(runner.port, "POST", "/runs", raw=b"{not json")[0] == 400
    assert call(runner.port, "POST", "/runs", {"inputs": ["a"]})[0] == 400
    assert call(runner.port, "GET", "/nowhere")[0] == 404
    assert call(runner.port, "GET", "/runs/unknown") == (
        404,
        {
            "state": "NOT FOUND",
            "error": "Execution not found",
            "message": "No execution found with ID: unknown",
        },
    )
    assert call(runner.port, "POST", "/runs/unknown/stop")[0] == 404


def _kickoff_in_thread(port: int, kickoff_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def post() -> None:
        try:
            result["reply"] = run_to_end(port, kickoff_id, inputs)
        except OSError as exc:  # the runner died: the test's own assertions report it
            result["reply"] = (0, {"error": repr(exc)})

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def _wait_running(port: int, kickoff_id: str) -> dict[str, Any]:
    """The run's status once its crew is built and its first task is under way."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = call(port, "GET", f"/runs/{kickoff_id}")
        if status == 200 and body["state"] == "RUNNING" and body["current_task"]:
            return body
        time.sleep(0.1)
    pytest.fail(f"{kickoff_id} never showed as RUNNING")


def test_stop_revokes_a_running_kickoff(serving: Any, llm: FakeLLM) -> None:
    runner = serving("classic_crew")
    llm.delay = 5.0
    try:
        pending = _kickoff_in_thread(runner.port, "k-stop", FIXTURES["classic_crew"]["kickoff"])
        progress = _wait_running(runner.port, "k-stop")
        assert progress["progress"] == {"completed_tasks": 0, "total_tasks": 1}
        assert progress["current_task"] == "research_task"
        stopped_at = time.monotonic()
        assert call(runner.port, "POST", "/runs/k-stop/stop") == (
            200,
            {"kickoff_id": "k-stop", "state": "REVOKED"},
        )
        pending["thread"].join(timeout=10)
        assert time.monotonic() - stopped_at < 3
        assert pending["reply"][1]["state"] == "REVOKED"
        assert call(runner.port, "POST", "/runs/k-stop/stop")[0] == 404  # acknowledged: forgotten
    finally:
        llm.delay = 0.0


def test_stop_revokes_a_running_flow(serving: Any, llm: FakeLLM) -> None:
    """A flow has no task callbacks to stop at: it is REVOKED at once, its late result is
    discarded, and the runner can still be acknowledged and serve the next run."""
    runner = serving("flow")
    asked = len(llm.chat_requests())
    llm.delay = 5.0
    try:
        pending = _kickoff_in_thread(runner.port, "k-flow", FIXTURES["flow"]["kickoff"])
        deadline = time.monotonic() + 30
        while len(llm.chat_requests()) == asked and time.monotonic() < deadline:
            time.sleep(0.1)  # the flow's first LLM call is under way
        assert call(runner.port, "POST", "/runs/k-flow/stop") == (
            200,
            {"kickoff_id": "k-flow", "state": "REVOKED"},
        )
        pending["thread"].join(timeout=10)
        assert pending["reply"][1]["state"] == "REVOKED"
    finally:
        llm.delay = 0.0
    assert run_to_end(runner.port, "k-after", FIXTURES["flow"]["kickoff"])[1]["state"] == "SUCCESS"


def test_sigterm_lets_running_kickoffs_finish(start_runner: Any, llm: FakeLLM) -> None:
    runner = start_runner("classic_crew")
    runner.wait_healthy()
    llm.delay = 3.0
    try:
        pending = _kickoff_in_thread(runner.port, "k-drain", FIXTURES["classic_crew"]["kickoff"])
        _wait_running(runner.port, "k-drain")
        runner.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, _ = call(runner.port, "POST", "/runs", {"kickoff_id": "k-late", "inputs": {}})
        assert status == 503
        assert call(runner.port, "GET", "/healthz")[0] == 503
        pending["thread"].join(timeout=60)
        assert pending["reply"][1]["state"] == "SUCCESS"
        assert runner.proc.wait(timeout=30) == 0
    finally:
        llm.delay = 0.0
    assert "SIGTERM received: draining 1 running kickoff(s)" in runner.output()


def test_load_failure_exits_nonzero_with_traceback(start_runner: Any) -> None:
    runner = start_runner("classic_crew", ["--kind", "crew", "--package", "no_such_pkg"])
    assert runner.proc.wait(timeout=60) != 0
    output = runner.output()
    assert "ModuleNotFoundError: No module named 'no_such_pkg'" in output
    assert all(LINE.match(line) for line in output.splitlines() if line)


def test_runner_records_task_and_step_webhooks_for_the_daemon(serving: Any) -> None:
    """The runner never gets a webhook URL: it numbers the bodies, the daemon fetches them."""
    spec = FIXTURES["classic_crew"]
    runner = serving("classic_crew")
    status, body = call(runner.port, "POST", "/runs", {
        "kickoff_id": "k-hooks", "inputs": spec["kickoff"], "meta": {"requestId": "r-1"},
        "webhooks": {"task": True, "step": True}})
    assert status == 202, body
    while body.get("state") not in TERMINAL:
        status, body = call(runner.port, "GET", "/runs/k-hooks?wait=20&after=0")
    assert body["state"] == "SUCCESS", body
    events = body["webhook_events"]
    assert {e["kind"] for e in events} == {"task", "step"}
    assert all(e["body"]["kickoff_id"] == "k-hooks" for e in events)
    assert all(e["body"]["meta"] == {"requestId": "r-1"} for e in events)
    task = next(e["body"] for e in events if e["kind"] == "task")
    assert task["name"] == "research_task"
    assert call(runner.port, "GET", "/runs/k-hooks?after=1")[1]["webhook_events"] == events[1:]
    assert "webhook_events" not in call(runner.port, "GET", "/runs/k-hooks")[1]
    assert call(runner.port, "POST", "/runs/k-hooks/ack")[0] == 200  # else SIGTERM waits for it


def test_flow_whose_fields_all_have_defaults_runs_with_no_inputs(serving: Any) -> None:
    runner = serving("declarative_flow")
    status, body = run_to_end(runner.port, "k-empty", {})
    assert (status, body["state"]) == (200, "SUCCESS"), body
    assert "AI agents" in body["result"]  # the default from flow.yaml reached the LLM


PERSIST_ARGS = ["--kind", "flow", "--package", "persist_flow"]


def _count(port: int, kickoff_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    status, body = run_to_end(port, kickoff_id, inputs)
    assert (status, body["state"]) == (200, "SUCCESS"), body
    return dict(body["result_json"])


def test_persisted_flow_state_is_restored_by_kickoff_id(start_runner: Any) -> None:
    """restoreFromStateId (the daemon sends it as RESTORE_KEY) forks, inputs.id resumes."""
    restore = "crewship_restore_from_state_id"
    runner = start_runner("persist_flow", PERSIST_ARGS)
    assert runner.wait_healthy()["inputs"] == []
    first, second, resumed, fresh = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
    assert _count(runner.port, first, {}) == {"count": 1, "notes": ["plain"], "state_id": first}
    forked = _count(runner.port, second, {restore: first, "note": "again"})
    assert forked == {"count": 2, "notes": ["plain", "again"], "state_id": second}
    again = _count(runner.port, resumed, {"id": first})  # deprecated: resume under the same id
    assert again == {"count": 2, "notes": ["plain", "plain"], "state_id": first}
    unknown = _count(runner.port, fresh, {restore: "11111111-1111-4111-8111-111111111111"})
    assert unknown["count"] == 1  # an unknown state id: a fresh run, no error
    triggered = _count(runner.port, "k-trigger", {"crewai_trigger_payload": {"note": "mail"}})
    assert triggered["notes"] == ["trigger:mail"]

    runner.kill()  # the state is on disk in the app's HOME: a new process restores it
    home = runner.script.parent / "home"
    assert list(home.glob(".local/share/*/flow_states.db"))
    restarted = start_runner("persist_flow", PERSIST_ARGS)
    restarted.wait_healthy()
    after = _count(restarted.port, "k-after", {restore: second})
    assert (after["count"], after["notes"]) == (3, ["plain", "again", "again"])


def test_crew_gets_the_trigger_payload_in_its_first_task(serving: Any, llm: FakeLLM) -> None:
    runner = serving("classic_crew")
    inputs = {**FIXTURES["classic_crew"]["kickoff"], "crewai_trigger_payload": {"ticket": "T-4242"}}
    status, body = run_to_end(runner.port, "k-trig", inputs)
    assert (status, body["state"]) == (200, "SUCCESS"), body
    prompts = [json.dumps(r) for r in llm.chat_requests()]
    assert any("Trigger Payload: {'ticket': 'T-4242'}" in p for p in prompts)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (Debian's bubblewrap)")
def test_a_crew_writes_beside_its_read_only_project_into_its_home(start_runner: Any, env_for: Any) -> None:
    """Under a sandbox the release is read-only: files a crew writes relative to its working
    directory (the scaffolds' report.md, output/post.md) land in $HOME/work instead."""
    project, _ = env_for("persist_flow")
    home = project.parent / "home"
    home.mkdir(exist_ok=True)
    read_only = ["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--bind", str(home), str(home)]
    runner = start_runner("persist_flow", PERSIST_ARGS, [*read_only, "--dev", "/dev", "--proc", "/proc"])
    runner.wait_healthy()
    assert _count(runner.port, "k-ro", {"note": "ro"})["count"] == 1
    assert (home / "work/output/count.txt").read_text().startswith("persist_flow ")
    assert (home / "work/pyproject.toml").resolve() == project / "pyproject.toml"
    assert not (project / "output").exists()
