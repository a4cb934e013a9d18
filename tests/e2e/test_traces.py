"""Execution traces and event streaming end to end (issue 17 item 2, issue 18 item 3): a
real server, a real classic crew against the fake LLM, a receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_deploy import configure, new_project, push
from tests.support.crewapi import CrewAPI
from tests.support.fakellm import FakeLLM
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = "traced"
INPUTS = {"topic": "kelp", "audience": "otters"}
META = {"requestId": "req-7"}
WANTED = ["crew_kickoff_started", "task_started", "llm_call_started", "llm_call_completed",
          "task_completed", "crew_kickoff_completed"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ALLOW_PRIVATE_URLS": "1"}  # the receiver listens on 127.0.0.1
    with shared_envs_server(tmp_path_factory.mktemp("traces"), env) as server:
        yield server


@pytest.fixture(scope="module")
def api(srv: CrewshipServer, llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> CrewAPI:
    crew = configure(srv, APP, llm)
    push(srv, new_project(srv, "classic_crew", tmp_path_factory.mktemp("project")), APP)
    return crew


def _kickoff(api: CrewAPI, webhooks: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"inputs": INPUTS, "meta": META}
    if webhooks is not None:
        body["webhooks"] = webhooks
    resp = api.post("/kickoff", json=body)
    assert resp.status_code == 200, resp.text
    kickoff_id = str(resp.json()["kickoff_id"])
    assert api.wait(kickoff_id, timeout=180)["state"] == "SUCCESS"
    return kickoff_id


def _types(bodies: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for b in bodies for e in b["events"]]


def _check_order(types: list[str]) -> None:
    assert types[:2] == ["crew_kickoff_started", "task_started"]
    assert types[-2:] == ["task_completed", "crew_kickoff_completed"]
    calls = types[2:-2]
    assert calls
    assert calls == ["llm_call_started", "llm_call_completed"] * (len(calls) // 2)


def test_streamed_events_reach_the_receiver_in_order(api: CrewAPI, rx: Receiver) -> None:
    kickoff_id = _kickoff(api, {"events": WANTED, "url": rx.url("/batched"),
                                "authentication": {"strategy": "bearer", "token": "t0k-1"}})
    rx.wait_for("/batched", where=lambda b: "crew_kickoff_completed" in _types([b]))
    bodies = rx.bodies("/batched")
    _check_order(_types(bodies))
    assert len(bodies) < len(_types(bodies))  # batched: several events per POST
    assert all((b["kickoff_id"], b["meta"]) == (kickoff_id, META) for b in bodies)
    assert set(rx.authorizations("/batched")) == {"Bearer t0k-1"}
    event = bodies[0]["events"][0]
    assert set(event) == {"id", "execution_id", "timestamp", "type", "data"}
    assert event["execution_id"] == kickoff_id
    started = next(e for b in bodies for e in b["events"] if e["type"] == "llm_call_started")
    assert "kelp" in str(started["data"]["messages"])

    realtime = _kickoff(api, {"events": WANTED, "url": rx.url("/realtime"), "realtime": True,
                              "authentication": {"strategy": "basic", "username": "ann",
                                                 "password": "pw"}})
    rx.wait_for("/realtime", where=lambda b: "crew_kickoff_completed" in _types([b]))
    bodies = rx.bodies("/realtime")
    assert all(len(b["events"]) == 1 for b in bodies)  # one POST per event
    _check_order(_types(bodies))
    assert all(b["kickoff_id"] == realtime for b in bodies)
    basic = "Basic " + base64.b64encode(b"ann:pw").decode()
    assert set(rx.authorizations("/realtime")) == {basic}


def test_the_trace_has_every_step_with_times_and_tokens(srv: CrewshipServer,
                                                        api: CrewAPI) -> None:
    kickoff_id = _kickoff(api)
    resp = api.get(f"/kickoffs/{kickoff_id}/trace")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["kickoff_id"], body["state"]) == (kickoff_id, "SUCCESS")
    spans = body["spans"]
    kinds = [s["kind"] for s in spans]
    assert kinds[:3] == ["crew", "task", "agent"]
    assert set(kinds[3:]) == {"llm"}
    crew, task, agent, first_llm = spans[:4]
    assert (task["parent"], agent["parent"], first_llm["parent"]) == (crew["id"], task["id"],
                                                                     agent["id"])
    assert task["name"] == "research_task"
    assert all(s["status"] == "ok" and s["end"] >= s["start"] > 0 for s in spans)
    assert crew["tokens"]["total"] == sum(s["tokens"]["total"] for s in spans[3:]) > 0
    status = api.get(f"/status/{kickoff_id}").json()
    assert crew["tokens"]["total"] == status["token_usage"]["total_tokens"]
    assert "kelp" in first_llm["input"]
    assert "kelp" in first_llm["output"]

    assert httpx.get(f"{srv.http_url}/apps/{APP}/kickoffs/{kickoff_id}/trace",
                     timeout=10).status_code == 401
    assert api.get("/kickoffs/no-such-kickoff/trace").status_code == 404

    assert srv.ssh_json(srv.admin_key, "kickoffs", APP, "--trace", kickoff_id) == spans
    text = srv.ssh(srv.admin_key, "kickoffs", APP, "--trace", kickoff_id, check=True).stdout
    lines = text.splitlines()
    assert kickoff_id in lines[0]
    assert lines[1].split()[2:4] == ["crew", crew["name"]]
    assert "  task research_task" in lines[2]
    assert "    agent " in lines[3]
    assert all("      llm " in line for line in lines[4:])
    assert f"{crew['tokens']['total']} tok" in lines[1]
    missing = srv.ssh(srv.admin_key, "kickoffs", APP, "--trace", "no-such-kickoff")
    assert missing.returncode != 0
    assert "no-such-kickoff" in missing.stderr
    stranger = srv.add_user("stranger")  # no access to the app: it does not exist for them
    refused = srv.ssh(stranger, "kickoffs", APP, "--trace", kickoff_id)
    assert refused.returncode != 0
    assert "not found" in refused.stderr
    assert kickoff_id not in refused.stdout


def test_bad_webhooks_fields_are_refused_and_nothing_runs(srv: CrewshipServer, api: CrewAPI,
                                                          rx: Receiver) -> None:
    before = len(srv.ssh_json(srv.admin_key, "kickoffs", APP, "-n", "1000"))
    url = rx.url("/never")
    cases: list[tuple[Any, int, str]] = [
        ("yes please", 400, "must be a JSON object"),
        ({"url": url}, 400, "webhooks.events"),
        ({"events": [], "url": url}, 422, "is empty"),
        ({"events": ["Not An Event"], "url": url}, 422, "no crewAI event name"),
        ({"events": ["task_completed"]}, 400, "webhooks.url"),
        ({"events": ["task_completed"], "url": "file:///etc/passwd"}, 400, "http"),
        ({"events": ["task_completed"], "url": f"{srv.http_url}/apps"}, 400, "itself"),
        ({"events": ["task_completed"], "url": url, "realtime": "yes"}, 400, "true or false"),
        ({"events": ["task_completed"], "url": url, "authentication": {"strategy": "jwt"}},
         422, "'bearer' or 'basic'"),
        ({"events": ["task_completed"], "url": url, "authentication": {"strategy": "bearer"}},
         422, "token"),
    ]
    for webhooks, code, words in cases:
        resp = api.post("/kickoff", json={"inputs": INPUTS, "webhooks": webhooks})
        assert resp.status_code == code, (webhooks, resp.text)
        assert words in resp.json()["message"], (webhooks, resp.text)
    assert len(srv.ssh_json(srv.admin_key, "kickoffs", APP, "-n", "1000")) == before
    assert rx.attempts("/never") == []


def test_a_running_kickoffs_trace_has_the_spans_so_far(srv: CrewshipServer, api: CrewAPI,
                                                       llm: FakeLLM) -> None:
    llm.delay = 4.0
    try:
        kickoff_id = api.kickoff(INPUTS)
        deadline = time.monotonic() + 60
        while True:
            body = api.get(f"/kickoffs/{kickoff_id}/trace").json()
            running = [s for s in body["spans"] if s["status"] == "running"]
            if body["state"] == "RUNNING" and any(s["kind"] == "llm" for s in running):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        assert [s["kind"] for s in running] == ["crew", "task", "agent", "llm"]
        assert all(s["end"] is None for s in running)
        text = srv.ssh(srv.admin_key, "kickoffs", APP, "--trace", kickoff_id, check=True).stdout
        assert "(RUNNING)" in text.splitlines()[0]
        assert "running" in text
    finally:
        llm.delay = 0.0
    assert api.wait(kickoff_id, timeout=180)["state"] == "SUCCESS"
    spans = api.get(f"/kickoffs/{kickoff_id}/trace").json()["spans"]
    assert all(s["status"] == "ok" for s in spans)
