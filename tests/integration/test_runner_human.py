"""Human input in the runner (runtime/runner/human.py): a real crew with ``human_input=True``
and a real flow with ``@human_feedback``, each paused and resumed over the signed channel."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_runner import TERMINAL, RunnerProcess, call
from tests.support import crewenv
from tests.support.fakellm import ANSWER_PREFIX, FakeLLM

pytestmark = pytest.mark.slow

FLOW = '''
from pydantic import BaseModel

from crewai.flow import Flow, human_feedback, listen, start


class ReviewState(BaseModel):
    topic: str = "kelp"


class ReviewFlow(Flow[ReviewState]):
    @start()
    @human_feedback(message="Is this draft good?")
    def draft(self):
        return f"a draft about {self.state.topic}"

    @listen(draft)
    def publish(self, result):
        return f"published after feedback: {result.feedback}"
'''


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def human_crew(base: Path) -> tuple[Path, Path]:
    project, python = crewenv.prepare("classic_crew", base)
    tasks = project / "src" / "demo_crew" / "config" / "tasks.yaml"
    tasks.write_text(tasks.read_text() + "  human_input: true\n")
    return project, python


@pytest.fixture(scope="module")
def crew_runner(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> Iterator[RunnerProcess]:
    """One runner for the crew tests (a cold start is 4-5 s of CPU); the last stops it."""
    project, python = human_crew(tmp_path_factory.mktemp("human"))
    runner = RunnerProcess(project, python, ["--kind", "crew", "--package", "demo_crew"], llm)
    yield runner
    runner.kill()


def wait_state(port: int, kickoff_id: str, states: tuple[str, ...], version: int = -1,
               timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = call(port, "GET", f"/runs/{kickoff_id}?wait=5&human={version}")
        assert status == 200, body
        if body["state"] in states:
            return body
        assert time.monotonic() < deadline, body


def test_a_human_input_task_waits_is_retried_with_feedback_then_approved(
        crew_runner: RunnerProcess, llm: FakeLLM) -> None:
    crew_runner.wait_healthy()
    port = crew_runner.port
    llm.delay = 2.0  # the crew's first answer takes a while: the resume below comes first
    try:
        status, body = call(port, "POST", "/runs", {
            "kickoff_id": "k-h", "inputs": {"topic": "kelp", "audience": "otters"}})
        assert status == 202, body
        early = call(port, "POST", "/runs/k-h/resume",
                     {"task_id": "research_task", "human_feedback": "x", "is_approve": True})
    finally:
        llm.delay = 0.0
    assert early == (400, {"error": "Invalid Request",
                           "message": "Execution is not in pending human input state"})
    waiting = wait_state(port, "k-h", ("PENDING_HUMAN_INPUT", *TERMINAL))
    assert waiting["state"] == "PENDING_HUMAN_INPUT", waiting
    request = waiting["human_input"]
    assert (request["task_id"], request["round"], request["kind"]) == ("research_task", 1, "task")
    assert "kelp" in request["output"]
    assert request["output"].startswith(ANSWER_PREFIX)

    # Bad answers change nothing; an unsigned or wrongly signed one gets 401.
    approve = {"task_id": "research_task", "human_feedback": "", "is_approve": True}
    assert call(port, "POST", "/runs/k-h/resume", approve, secret=None)[0] == 401
    assert call(port, "POST", "/runs/k-h/resume", approve, secret=b"x" * 32)[0] == 401
    assert call(port, "POST", "/runs/k-h/resume", {"task_id": "research_task"})[0] == 400
    assert call(port, "POST", "/runs/k-h/resume", raw=b"{not json")[0] == 400
    wrong = call(port, "POST", "/runs/k-h/resume",
                 {"task_id": "other_task", "human_feedback": "", "is_approve": True})
    assert wrong[0] == 404, wrong
    assert call(port, "POST", "/runs/nope/resume",
                {"task_id": "research_task", "is_approve": True})[0] == 404
    stale = call(port, "POST", "/runs/k-h/resume",
                 {"task_id": "research_task", "is_approve": True, "round": 7})
    assert stale[0] == 400, stale
    assert call(port, "GET", "/runs/k-h")[1]["state"] == "PENDING_HUMAN_INPUT"

    # Reject with feedback: the agent gets it and answers again, then asks again.
    asked = len(llm.chat_requests())
    reply = call(port, "POST", "/runs/k-h/resume",
                 {"task_id": "research_task", "human_feedback": "mention PINEAPPLE",
                  "is_approve": False, "round": 1})
    assert reply == (200, {"status": "retrying",
                           "message": "Task will be retried with your feedback"})
    again = wait_state(port, "k-h", ("PENDING_HUMAN_INPUT", *TERMINAL),
                       version=waiting["human_version"] + 1)
    assert again["state"] == "PENDING_HUMAN_INPUT", again
    assert again["human_input"]["round"] == 2
    assert "PINEAPPLE" in again["human_input"]["output"]
    assert any("PINEAPPLE" in str(r["messages"]) for r in llm.chat_requests()[asked:])

    reply = call(port, "POST", "/runs/k-h/resume",
                 {"task_id": "research_task", "human_feedback": "good", "is_approve": True})
    assert reply == (200, {"status": "resumed", "message": "Execution resumed successfully"})
    done = wait_state(port, "k-h", TERMINAL)
    assert done["state"] == "SUCCESS", done
    assert "PINEAPPLE" in done["result"]
    assert call(port, "POST", "/runs/k-h/resume",
                {"task_id": "research_task", "is_approve": True})[0] == 400
    assert call(port, "POST", "/runs/k-h/ack")[0] == 200


def test_sigterm_fails_a_waiting_kickoff_with_the_reason(crew_runner: RunnerProcess) -> None:
    crew_runner.wait_healthy()
    port = crew_runner.port
    call(port, "POST", "/runs", {"kickoff_id": "k-t", "inputs": {"topic": "a", "audience": "b"}})
    assert wait_state(port, "k-t", ("PENDING_HUMAN_INPUT", *TERMINAL))["state"] == \
        "PENDING_HUMAN_INPUT"
    crew_runner.proc.send_signal(signal.SIGTERM)
    done = wait_state(port, "k-t", TERMINAL, timeout=30)
    assert done["state"] == "FAILURE"
    assert "waited for human input" in done["error"]
    assert call(port, "POST", "/runs/k-t/ack")[0] == 200
    assert crew_runner.proc.wait(timeout=30) == 0


def test_a_flow_asks_for_feedback_and_gets_it(tmp_path: Path, llm: FakeLLM) -> None:
    project, python = crewenv.prepare("flow", tmp_path)
    (project / "src" / "demo_flow" / "main.py").write_text(FLOW)
    runner = RunnerProcess(project, python, ["--kind", "flow", "--package", "demo_flow"], llm)
    try:
        runner.wait_healthy()
        port = runner.port
        call(port, "POST", "/runs", {"kickoff_id": "k-f", "inputs": {"topic": "tides"}})
        waiting = wait_state(port, "k-f", ("PENDING_HUMAN_INPUT", *TERMINAL))
        assert waiting["state"] == "PENDING_HUMAN_INPUT", waiting
        assert waiting["human_input"]["task_id"] == "draft"
        assert waiting["human_input"]["kind"] == "flow"
        assert waiting["human_input"]["output"] == "a draft about tides"
        reply = call(port, "POST", "/runs/k-f/resume",
                     {"task_id": "draft", "human_feedback": "ship it", "is_approve": True})
        assert reply[0] == 200, reply
        done = wait_state(port, "k-f", TERMINAL)
        assert done["state"] == "SUCCESS", done
        assert done["result"] == "published after feedback: ship it"
    finally:
        runner.kill()
