"""Human in the loop end to end (issue 17 item 1, reference C.5): a real classic crew whose
task has ``human_input=True``, pushed over git, kicked off over HTTP, paused in
``PENDING_HUMAN_INPUT``, its humanInputWebhook and task webhook received on 127.0.0.1,
resumed with feedback the fake LLM sees, and the error cases of ``POST /resume``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_deploy import commit_all, configure, new_project, push
from tests.integration.test_runner_human import FLOW
from tests.support.crewapi import TERMINAL, CrewAPI
from tests.support.fakellm import ANSWER_PREFIX, FakeLLM
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAITING = "PENDING_HUMAN_INPUT"
HOOK_TOKEN = "hitl-receiver-secret"  # the humanInputWebhook's own bearer token
NOT_WAITING = {"error": "Invalid Request",
               "message": "Execution is not in pending human input state"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ALLOW_PRIVATE_URLS": "1"}  # the receiver listens on 127.0.0.1
    with shared_envs_server(tmp_path_factory.mktemp("hitl"), env) as server:
        yield server


@pytest.fixture(scope="module")
def api(srv: CrewshipServer, llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> CrewAPI:
    """App ``hitl``: the classic crew, its one task with ``human_input: true``."""
    crew_api = configure(srv, "hitl", llm)
    project = new_project(srv, "classic_crew", tmp_path_factory.mktemp("hitl-project"))
    tasks = project / "src" / "demo_crew" / "config" / "tasks.yaml"
    tasks.write_text(tasks.read_text() + "  human_input: true\n")
    commit_all(srv, project, "the research task asks a human")
    push(srv, project, "hitl")
    return crew_api


def kickoff(api: CrewAPI, rx: Receiver, topic: str, inputs: dict[str, Any] | None = None,
            **extra: Any) -> str:
    resp = api.post("/kickoff", json={
        "inputs": inputs or {"topic": topic, "audience": "otters"}, "meta": {"requestId": topic},
        "humanInputWebhook": {"url": rx.url(f"/hitl/{topic}"), "authentication": {
            "strategy": "bearer", "token": HOOK_TOKEN}}, **extra})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["kickoff_id"])


def resume(api: CrewAPI, kickoff_id: str, **fields: Any) -> httpx.Response:
    body = {"execution_id": kickoff_id, "task_id": "research_task", "human_feedback": "",
            "is_approve": True, **fields}
    return api.post("/resume", json=body)


def test_a_task_waits_for_a_human_is_retried_with_feedback_and_approved(
        srv: CrewshipServer, api: CrewAPI, rx: Receiver, llm: FakeLLM) -> None:
    kickoff_id = kickoff(api, rx, "kelp", taskWebhookUrl=rx.url("/task/kelp"),
                         crewWebhookUrl=rx.url("/crew/kelp"))
    waiting = api.wait(kickoff_id, timeout=180, states=(WAITING, *TERMINAL))
    assert (waiting["state"], waiting["status"]) == (WAITING, "pending_human_input"), waiting
    request = waiting["human_input"]
    assert (request["task_id"], request["round"]) == ("research_task", 1)
    assert request["output"].startswith(ANSWER_PREFIX)
    assert "kelp" in request["output"]

    # The humanInputWebhook (with its own bearer token) and the task webhook hear of it.
    [note] = rx.wait_for("/hitl/kelp")
    assert (note["execution_id"], note["task_id"], note["state"]) == \
        (kickoff_id, "research_task", WAITING)
    assert note["task_output"] == request["output"]
    assert note["meta"] == {"requestId": "kelp"}
    assert rx.authorizations("/hitl/kelp") == [f"Bearer {HOOK_TOKEN}"]
    [task_note] = rx.wait_for("/task/kelp")
    assert (task_note["execution_id"], task_note["task_id"]) == (kickoff_id, "research_task")
    assert rx.authorizations("/task/kelp") == [None]  # the token is the human hook's alone

    # status over SSH shows the waiting kickoff; the history filters on it.
    text = srv.ssh(srv.admin_key, "status", "hitl", check=True).stdout
    assert "1 waiting for human input" in text
    [row] = srv.ssh_json(srv.admin_key, "kickoffs", "hitl", "--state", "waiting")
    assert (row["kickoff_id"], row["state"]) == (kickoff_id, WAITING)

    check_refusals(api, kickoff_id, rx)

    # Not approved: the feedback goes to the agent, the task runs again and asks again.
    # The resume's webhook URLs replace the kickoff's (C.5: they are not carried over).
    asked = len(llm.chat_requests())
    answer = resume(api, kickoff_id, human_feedback="mention PINEAPPLE", is_approve=False,
                    taskWebhookUrl=rx.url("/task/kelp2"), crewWebhookUrl=rx.url("/crew/kelp2"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "retrying",
                             "message": "Task will be retried with your feedback"}
    second = rx.wait_for("/hitl/kelp", count=2, timeout=120)[1]
    assert second["round"] == 2
    assert "PINEAPPLE" in second["task_output"]
    assert any("PINEAPPLE" in str(body["messages"]) for body in llm.chat_requests()[asked:])
    again = api.wait(kickoff_id, states=(WAITING, *TERMINAL))
    assert again["human_input"]["round"] == 2

    answer = resume(api, kickoff_id, human_feedback="good now", is_approve=True,
                    taskWebhookUrl=rx.url("/task/kelp2"), crewWebhookUrl=rx.url("/crew/kelp2"))
    assert answer.json() == {"status": "resumed", "message": "Execution resumed successfully"}
    done = api.wait(kickoff_id, timeout=180)
    assert done["state"] == "SUCCESS", done
    assert "PINEAPPLE" in done["result"]
    assert [(r["round"], r["is_approve"], r["human_feedback"]) for r in done["human_feedback"]] \
        == [(1, False, "mention PINEAPPLE"), (2, True, "good now")]
    [crew] = rx.wait_for("/crew/kelp2")
    assert crew["kickoff_id"] == kickoff_id
    assert "PINEAPPLE" in crew["result"]
    assert rx.bodies("/crew/kelp") == []  # the kickoff's crew webhook was replaced
    assert len(rx.bodies("/task/kelp")) == 1  # and its task webhook: round 1 only
    later = rx.wait_for("/task/kelp2", count=2, timeout=30)
    assert [b.get("round") for b in later if b.get("state") == WAITING] == [2]
    [finished] = [b for b in later if b.get("state") != WAITING]
    assert finished["name"] == "research_task"
    assert "PINEAPPLE" in finished["output"]

    # A finished kickoff is not waiting: 400, as the platform answers.
    late = resume(api, kickoff_id)
    assert (late.status_code, late.json()) == (400, NOT_WAITING)


def check_refusals(api: CrewAPI, kickoff_id: str, rx: Receiver) -> None:
    """Bad resumes: a clear 4xx each, and the kickoff still waits."""
    unknown = resume(api, "00000000-0000-4000-8000-000000000000")
    assert (unknown.status_code, unknown.json()) == \
        (404, {"error": "Not Found", "message": "Execution ID not found"})
    wrong_task = resume(api, kickoff_id, task_id="other_task")
    assert wrong_task.status_code == 404
    assert "research_task" in wrong_task.json()["message"]
    for bad in ({"is_approve": "yes"}, {"human_feedback": 5}, {"execution_id": None},
                {"crewWebhookUrl": "file:///etc/passwd"}):
        resp = resume(api, kickoff_id, **bad)
        assert resp.status_code == 400, (bad, resp.text)
        assert resp.json()["error"] == "Invalid Request"
    assert api.post("/resume", content=b"{not json").status_code == 400
    anonymous = httpx.post(f"{api.base}/resume", json={"execution_id": kickoff_id}, timeout=10)
    assert anonymous.status_code == 401
    wrong = httpx.post(f"{api.base}/resume", json={"execution_id": kickoff_id},
                       headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert wrong.status_code == 401
    refused = api.post("/kickoff", json={"inputs": {"topic": "a", "audience": "b"},
                                         "humanInputWebhook": {"url": "ftp://x/y"}})
    assert refused.status_code == 400
    assert "humanInputWebhook" in refused.json()["message"]
    assert api.get(f"/status/{kickoff_id}").json()["state"] == WAITING
    assert len(rx.bodies("/hitl/kelp")) == 1  # nothing above asked the human again


def test_a_waiting_kickoff_survives_a_daemon_restart_but_not_its_instance(
        srv: CrewshipServer, api: CrewAPI, rx: Receiver) -> None:
    kept = kickoff(api, rx, "tides")
    assert api.wait(kept, timeout=180, states=(WAITING, *TERMINAL))["state"] == WAITING
    rx.wait_for("/hitl/tides")

    # The daemon restarts; the instance (and the paused crew in it) lives on, adopted.
    srv.restart(leave_children=True)
    assert api.wait(kept, states=(WAITING, *TERMINAL))["state"] == WAITING
    # Two answers at once: one is taken, the other is told the kickoff no longer waits.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda text: resume(api, kept, human_feedback=text),
                                ["fine", "also fine"]))
    assert sorted(a.status_code for a in answers) == [200, 400], [a.text for a in answers]
    assert api.wait(kept, timeout=180)["state"] == "SUCCESS"
    assert len(rx.bodies("/hitl/tides")) == 1  # the restart did not ask the human again

    # Stopping a waiting kickoff revokes it ('kickoff --wait' over SSH stops at the wait).
    inputs = shlex.quote(json.dumps({"topic": "reefs", "audience": "crabs"}))  # one argument
    waited = srv.ssh(srv.admin_key, "kickoff", "hitl", inputs, "--wait", check=True, timeout=180)
    shown = json.loads(waited.stdout)
    assert (shown["state"], shown["human_input"]["task_id"]) == (WAITING, "research_task")
    stopped = shown["kickoff_id"]
    assert api.post(f"/stop/{stopped}").status_code == 200
    assert api.wait(stopped)["state"] == "REVOKED"
    assert resume(api, stopped).json() == NOT_WAITING

    # An instance restart ends the crew's paused stack: the kickoff fails with the reason.
    lost = kickoff(api, rx, "dunes")
    assert api.wait(lost, timeout=180, states=(WAITING, *TERMINAL))["state"] == WAITING
    srv.ssh(srv.admin_key, "restart", "hitl", check=True, timeout=300)
    failed = api.wait(lost, timeout=120)
    assert failed["state"] == "FAILURE", failed
    assert "waited for human input" in failed["error"]
    assert "kick it off again" in failed["error"]


def test_the_resume_route_needs_the_apps_own_token(srv: CrewshipServer, api: CrewAPI,
                                                    llm: FakeLLM) -> None:
    """Another app's token does not reach this app's kickoffs (401), and an app's URL never
    resumes another app's kickoff (404)."""
    other = configure(srv, "hitl-other", llm)
    crossed = httpx.post(f"{api.base}/resume", headers=other.headers, timeout=10,
                         json={"execution_id": "x", "task_id": "t", "is_approve": True})
    assert crossed.status_code == 401
    mine = api.get("/kickoffs").json()["kickoffs"][0]["kickoff_id"]
    through_other = resume(other, mine)
    assert (through_other.status_code, through_other.json()) == \
        (404, {"error": "Not Found", "message": "Execution ID not found"})


def test_a_flow_asks_for_feedback_and_is_resumed(srv: CrewshipServer, llm: FakeLLM,
                                                 rx: Receiver, tmp_path: Path) -> None:
    """A flow's ``@human_feedback`` method waits the same way; its task id is the method."""
    flow_api = configure(srv, "hitl-flow", llm)
    project = new_project(srv, "flow", tmp_path)
    (project / "src" / "demo_flow" / "main.py").write_text(FLOW)
    commit_all(srv, project, "a flow that asks for feedback")
    push(srv, project, "hitl-flow")
    kickoff_id = kickoff(flow_api, rx, "sandbars", {"topic": "sandbars"})
    waiting = flow_api.wait(kickoff_id, timeout=180, states=(WAITING, *TERMINAL))
    assert waiting["state"] == WAITING, waiting
    assert waiting["human_input"]["task_id"] == "draft"
    [note] = rx.wait_for("/hitl/sandbars")
    assert (note["task_id"], note["task_output"]) == ("draft", "a draft about sandbars")
    assert resume(flow_api, kickoff_id, task_id="research_task").status_code == 404
    answer = resume(flow_api, kickoff_id, task_id="draft", human_feedback="ship it")
    assert answer.json()["status"] == "resumed"
    done = flow_api.wait(kickoff_id, timeout=120)
    assert done["state"] == "SUCCESS", done
    assert done["result"] == "published after feedback: ship it"
