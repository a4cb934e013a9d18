"""``HumanLoop`` (crewship/service/human.py) on real SQLite and a real runner with a real
crew: an answer crewship acknowledged (200) while the runner could not hear it is stored,
and sent again the next time the kickoff's driver sees the run still wait for it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout
from crewship.errors import InvalidInputError, NotFoundError
from crewship.events import HumanInputDue
from crewship.service.human import WAITING, HumanLoop
from crewship.store.apps import AppStore
from crewship.store.state import Database, now
from runtime.channel import RunnerClient
from runtime.events import Endpoint
from runtime.process import ProcessBackend
from runtime.supervisor import Supervisor
from tests.integration.test_runner import INSTANCE, SECRET, RunnerProcess, call
from tests.integration.test_runner_human import human_crew, llm, wait_state  # noqa: F401
from tests.support.fakellm import FakeLLM

pytestmark = pytest.mark.slow

HOOK = {"url": "https://hooks.example/hitl",
        "authentication": {"strategy": "basic", "username": "ann", "password": "pw"}}


def test_an_accepted_answer_the_runner_missed_is_sent_again(tmp_path: Path,
                                                            llm: FakeLLM) -> None:  # noqa: F811
    project, python = human_crew(tmp_path / "crew")
    runner = RunnerProcess(project, python, ["--kind", "crew", "--package", "demo_crew"], llm)
    try:
        runner.wait_healthy()
        asyncio.run(_scenario(tmp_path, runner.port))
    finally:
        runner.kill()


async def _scenario(tmp_path: Path, port: int) -> None:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    db.execute("INSERT INTO users (name, is_admin, created_at) VALUES ('root', 1, ?)", now())
    app = AppStore(db).create("demo", 1)
    db.execute("INSERT INTO kickoffs (id, app_id, state, instance, inputs_json, human_webhook,"
               " created_at) VALUES ('k-1', ?, 'RUNNING', ?, '{}', ?, ?)",
               app.id, INSTANCE, db.sealer.seal(json.dumps(HOOK)), now())
    told: list[Any] = []
    rehooked: list[Any] = []
    # The supervisor knows no instance of "demo": as after a daemon restart before adoption,
    # POST /resume cannot reach the runner and only stores the answer.
    supervisor = Supervisor(ProcessBackend(layout), layout)
    client = RunnerClient()
    loop = HumanLoop(db, supervisor, client, told.append,
                     lambda kickoff_id, urls: rehooked.append((kickoff_id, urls)))
    endpoint = Endpoint(INSTANCE, "127.0.0.1", port, SECRET.decode())
    try:
        status, _ = call(port, "POST", "/runs", {"kickoff_id": "k-1", "inputs": {
            "topic": "kelp", "audience": "otters"}})
        assert status == 202
        waiting = wait_state(port, "k-1", (WAITING, "SUCCESS", "FAILURE"))
        assert waiting["state"] == WAITING

        await loop.waiting("demo", "k-1", endpoint, waiting["human_input"])
        await loop.waiting("demo", "k-1", endpoint, waiting["human_input"])  # told once
        [due] = told
        assert isinstance(due, HumanInputDue)
        assert (due.url, due.body["task_id"], due.body["execution_id"]) == \
            (HOOK["url"], "research_task", "k-1")
        assert due.headers == {"Authorization": "Basic YW5uOnB3"}
        assert "pw" not in repr(due)
        row = db.one("SELECT state, human_webhook FROM kickoffs WHERE id = 'k-1'")
        assert row is not None
        assert row["state"] == WAITING
        assert "hooks.example" not in row["human_webhook"]  # sealed at rest

        with pytest.raises(NotFoundError, match="Execution ID not found"):
            await loop.resume(app.id + 1, "demo", {"execution_id": "k-1", "task_id": "x",
                                                   "is_approve": True}, {})
        answer = await loop.resume(app.id, "demo", {
            "execution_id": "k-1", "task_id": "research_task", "human_feedback": "fine",
            "is_approve": True}, {"crew": "https://hooks.example/crew"})
        assert answer["status"] == "resumed"
        assert rehooked == [("k-1", {})]
        with pytest.raises(InvalidInputError, match="not in pending human input state"):
            await loop.resume(app.id, "demo", {"execution_id": "k-1", "task_id": "research_task",
                                               "is_approve": True}, {})
        # The runner never heard it: the run still waits on round 1.
        assert call(port, "GET", "/runs/k-1")[1]["state"] == WAITING

        # The driver's next look: the stored answer goes again; nobody is asked twice.
        await loop.waiting("demo", "k-1", endpoint, waiting["human_input"])
        done = wait_state(port, "k-1", ("SUCCESS", "FAILURE"))
        assert done["state"] == "SUCCESS", done
        assert len(told) == 1
        stored = db.one("SELECT human_json, webhooks_json FROM kickoffs WHERE id = 'k-1'")
        assert stored is not None
        assert [(r["round"], r["is_approve"]) for r in json.loads(stored["human_json"])["rounds"]] \
            == [(1, True)]
        assert json.loads(stored["webhooks_json"]) == {"crew": "https://hooks.example/crew"}
    finally:
        await client.aclose()
