"""A ``@persist`` flow's state through the crew API (issue 18 items 2 and 4).

The flow (tests/fixtures/persist_flow) counts its runs in its persisted state. Its state
id is the kickoff id; ``restoreFromStateId`` forks a past run's state, across a restart
and a new release, from the app's own HOME; ``crewai_trigger_payload`` reaches its start
method.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_deploy import configure, new_project, push
from tests.support.crewapi import CrewAPI
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = "counter"
UNKNOWN = "11111111-1111-4111-8111-111111111111"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("flowstate")) as server:
        yield server


def counted(api: CrewAPI, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    resp = api.post("/kickoff", json=body)
    assert resp.status_code == 200, resp.text
    kickoff_id = str(resp.json()["kickoff_id"])
    done = api.wait(kickoff_id)
    assert done["state"] == "SUCCESS", done
    return kickoff_id, dict(done["result_json"])


def wait_healthy(api: CrewAPI, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while api.get("/").status_code != 200:
        assert time.monotonic() < deadline, "the app did not come back"
        time.sleep(0.5)


def test_persisted_state_is_forked_by_kickoff_id_across_restart_and_release(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    api = configure(srv, APP, llm)
    push(srv, new_project(srv, "persist_flow", tmp_path), APP)
    assert api.get("/inputs").json() == {
        "inputs": [], "optional_inputs": {"count": 0, "notes": [], "note": "plain"}}

    first, state = counted(api, {})
    assert state == {"count": 1, "notes": ["plain"], "state_id": first}
    second, state = counted(api, {"inputs": {"note": "two"}, "restoreFromStateId": first})
    assert state == {"count": 2, "notes": ["plain", "two"], "state_id": second}
    _, state = counted(api, {"inputs": {}, "restoreFromStateId": UNKNOWN})
    assert state["count"] == 1  # an unknown state id: a fresh run, no error
    _, state = counted(api, {"inputs": {"id": first}})  # deprecated: resumes under that id
    assert (state["count"], state["state_id"]) == (2, first)
    _, state = counted(api, {"crewai_trigger_payload": {"note": "mail"}})
    assert state["notes"] == ["trigger:mail"]

    bad = api.post("/kickoff", json={"inputs": {"id": "test 1"}})
    assert bad.status_code == 422
    assert bad.json() == {"error": "Validation Error",
                          "message": "'inputs.id' must be a valid UUID when provided; got 'test 1'."}
    assert api.post("/kickoff", json={"restoreFromStateId": "nope"}).status_code == 422
    reserved = api.post("/kickoff", json={"inputs": {"crewship_restore_from_state_id": first}})
    assert reserved.status_code == 400
    streaming = api.post("/kickoff", json={"webhooks": {"events": ["flow_started"], "url": "x"}})
    assert streaming.status_code == 400  # event streaming: tests/e2e/test_traces.py
    assert "webhooks.url" in streaming.json()["message"]

    # the state lives in the app's own HOME, so a restart and a new release still see it
    home = srv.data_dir / "homes" / APP
    assert list(home.glob(".local/share/*/flow_states.db"))
    assert (home / "work/output/count.txt").read_text() == "persist_flow 1\n"  # the last run's
    srv.ssh(srv.admin_key, "restart", APP, check=True)
    wait_healthy(api)
    third, state = counted(api, {"inputs": {"note": "three"}, "restoreFromStateId": second})
    assert state["notes"] == ["plain", "two", "three"]
    before = srv.ssh_json(srv.admin_key, "status", APP)["release"]
    srv.ssh(srv.admin_key, "config:set", APP, "EXTRA=1", check=True)  # a new release
    assert srv.ssh_json(srv.admin_key, "status", APP)["release"] != before
    wait_healthy(api)
    _, state = counted(api, {"inputs": {"note": "four"}, "restoreFromStateId": third})
    assert (state["count"], state["notes"][-1]) == (4, "four")
