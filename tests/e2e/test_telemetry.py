"""Telemetry end to end (issue #7): Prometheus metrics, execution history, alerts and
CrewAI's kickoff webhooks, on one real server, a real classic crew and the fake LLM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_deploy import commit_all, configure, instance_pid, new_project, push, wait_until
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root
from tests.support.fakellm import FAIL_MARKER, FakeLLM
from tests.support.receiver import Receiver
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SETTLE = 3.0  # seconds to wait for a second (unwanted) alert before counting
SCRAPE = "telemetry-scrape-token"  # CREWSHIP_METRICS_TOKEN: /metrics needs a token


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
           "CREWSHIP_CRASH_LIMIT": "3", "CREWSHIP_RESTART_DELAY": "0.2",
           "CREWSHIP_ALLOW_PRIVATE_URLS": "1",  # the receivers listen on 127.0.0.1
           "CREWSHIP_METRICS_TOKEN": SCRAPE}
    server = CrewshipServer(tmp_path_factory.mktemp("telemetry"), env=env)
    server.start()
    yield server
    server.close()


def scrape(srv: CrewshipServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(f"{srv.http_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {SCRAPE}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def only(rx: Receiver, path: str, event: str) -> dict[str, Any]:
    """The one alert ``event`` at ``path``: waits for it, then for a second that must not come."""
    rx.wait_for(path, where=lambda b: b["event"] == event)
    time.sleep(SETTLE)
    found = [b for b in rx.bodies(path) if b["event"] == event]
    assert len(found) == 1, found
    return found[0]


def add_alert(srv: CrewshipServer, app: str, url: str, *extra: str) -> None:
    out = srv.ssh(srv.admin_key, "alerts:add", app, url, *extra, check=True).stdout
    assert url in out
    assert [a["url"] for a in srv.ssh_json(srv.admin_key, "alerts", app)] == [url]


def test_metrics_history_and_kickoff_webhooks(srv: CrewshipServer, llm: FakeLLM, rx: Receiver,
                                              tmp_path: Path) -> None:
    before = scrape(srv)
    api = configure(srv, "tele", llm)
    add_alert(srv, "tele", rx.url("/alerts/tele"))
    push(srv, new_project(srv, "classic_crew", tmp_path), "tele")

    # A kickoff with CrewAI's webhook fields: task, step and crew webhooks, meta echoed.
    meta = {"requestId": "req-42", "source": "e2e"}
    resp = api.post("/kickoff", json={
        "inputs": {"topic": "kelp", "audience": "otters"}, "meta": meta,
        "taskWebhookUrl": rx.url("/task"), "stepWebhookUrl": rx.url("/step"),
        "crewWebhookUrl": rx.url("/crew")})
    assert resp.status_code == 200, resp.text
    ok_id = resp.json()["kickoff_id"]
    assert api.wait(ok_id)["state"] == "SUCCESS"
    [crew] = rx.wait_for("/crew")
    assert crew["kickoff_id"] == ok_id
    assert crew["meta"] == meta
    assert "kelp" in crew["result"]
    assert crew["token_usage"]["total_tokens"] > 0
    assert set(crew) >= {"kickoff_id", "result", "result_json", "token_usage", "meta"}
    task = rx.wait_for("/task")[0]
    assert set(task) >= {"description", "name", "expected_output", "summary", "agent", "output",
                         "output_json", "kickoff_id", "meta"}
    assert (task["name"], task["kickoff_id"], task["meta"]) == ("research_task", ok_id, meta)
    assert "kelp" in task["output"]
    step = rx.wait_for("/step")[0]
    assert set(step) >= {"prompt", "thought", "tool", "tool_input", "result", "kickoff_id", "meta"}
    assert (step["kickoff_id"], step["meta"]) == (ok_id, meta)
    assert api.post("/kickoff", json={"inputs": {"topic": "a", "audience": "b"},
                                      "crewWebhookUrl": "file:///etc/passwd"}).status_code == 400

    # A kickoff the LLM fails: FAILURE, and exactly one kickoff_failed alert.
    failed = api.run({"topic": f"{FAIL_MARKER} now", "audience": "nobody"}, timeout=180)
    assert failed["state"] == "FAILURE", failed
    alert = only(rx, "/alerts/tele", "kickoff_failed")
    assert alert["app"] == "tele"
    assert alert["release"] == "v1"
    assert alert["details"]["kickoff_id"] == failed["kickoff_id"]

    check_history(srv, api, ok_id, failed["kickoff_id"])
    check_metrics(srv, before)
    check_log_events(srv)


def check_history(srv: CrewshipServer, api: CrewAPI, ok_id: str, failed_id: str) -> None:
    rows = srv.ssh_json(srv.admin_key, "kickoffs", "tele")
    assert [r["kickoff_id"] for r in rows] == [failed_id, ok_id]
    for row in rows:
        assert set(row) >= {"kickoff_id", "state", "status", "release", "inputs", "meta",
                            "result", "error", "execution_time", "token_usage", "created_at",
                            "started_at", "finished_at"}
    assert rows[1]["meta"] == {"requestId": "req-42", "source": "e2e"}
    assert rows[1]["token_usage"]["total_tokens"] > 0
    [failure] = srv.ssh_json(srv.admin_key, "kickoffs", "tele", "--state", "FAILURE")
    assert failure["kickoff_id"] == failed_id
    assert failure["error"]
    assert len(srv.ssh_json(srv.admin_key, "kickoffs", "tele", "-n", "1")) == 1
    text = srv.ssh(srv.admin_key, "kickoffs", "tele", check=True).stdout
    assert "KICKOFF" in text
    assert "FAILURE" in text
    assert "SUCCESS" in text
    bad = srv.ssh(srv.admin_key, "kickoffs", "tele", "--state", "exploded")
    assert bad.returncode != 0
    assert "unknown state" in bad.stderr

    body = api.get("/kickoffs", params={"state": "SUCCESS"}).json()
    assert [k["kickoff_id"] for k in body["kickoffs"]] == [ok_id]
    assert len(api.get("/kickoffs", params={"limit": 1}).json()["kickoffs"]) == 1
    assert api.get("/kickoffs", params={"limit": "0"}).status_code == 400
    assert CrewAPI(srv.http_url, "tele", "wrong").get("/kickoffs").status_code == 401


def check_metrics(srv: CrewshipServer, before: dict[Any, float]) -> None:
    bad_key = srv.make_key("intruder")
    assert srv.ssh(bad_key, "apps").returncode != 0
    after = scrape(srv)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("crewship_deploys_total", app="tele", kind="push", outcome="succeeded") == 1
    assert grew("crewship_deploy_duration_seconds_count", outcome="succeeded") >= 1
    assert (grew("crewship_build_cache_total", result="hit")
            + grew("crewship_build_cache_total", result="miss")) >= 1
    assert grew("crewship_kickoffs_total", app="tele", outcome="SUCCESS") == 1
    assert grew("crewship_kickoffs_total", app="tele", outcome="FAILURE") == 1
    assert grew("crewship_kickoff_duration_seconds_count", app="tele") == 2
    assert grew("crewship_llm_tokens_total", app="tele", kind="total") > 0
    assert grew("crewship_http_requests_total", method="POST", route="/apps/{app}/kickoff",
                status="200") >= 2
    assert grew("crewship_http_requests_total", method="GET", route="/apps/{app}/kickoffs",
                status="401") == 1
    assert grew("crewship_ssh_auth_failures_total") >= 1
    assert grew("crewship_webhooks_total", kind="crew", outcome="delivered") == 1
    assert value(after, "crewship_instances", app="tele", state="up") == 1
    assert value(after, "crewship_apps", state="running") >= 1


def check_log_events(srv: CrewshipServer) -> None:
    [deploy] = srv.logs("deploy_finished", app="tele")
    assert (deploy["user"], deploy["release"], deploy["outcome"]) == ("admin", 1, "succeeded")
    assert deploy["duration_ms"] > 0
    assert srv.logs("push_received", app="tele", user="admin")
    assert srv.logs("build_finished", app="tele")[0]["duration_ms"] > 0
    changed = srv.logs("config_changed", app="tele")[0]
    assert "OPENAI_API_KEY" in changed["keys"]
    assert srv.logs("kickoff_finished", app="tele", state="FAILURE")
    assert srv.logs("auth_failed")
    assert srv.logs("alert_raised", app="tele", alert="kickoff_failed")
    assert "sk-fake-test-key" not in srv.log_text()   # config values are never logged


def test_a_failed_deploy_raises_one_alert(srv: CrewshipServer, llm: FakeLLM, rx: Receiver,
                                          tmp_path: Path) -> None:
    configure(srv, "broken", llm)
    add_alert(srv, "broken", rx.url("/alerts/broken"), "--events", "deploy_failed,crashed")
    project = new_project(srv, "classic_crew", tmp_path)
    (project / "src/demo_crew/config/tasks.yaml").unlink()
    commit_all(srv, project, "lose the tasks")
    assert "missing_tasks_yaml" in push(srv, project, "broken", check=False)
    alert = only(rx, "/alerts/broken", "deploy_failed")
    assert alert["release"] == "v1"
    assert "missing_tasks_yaml" in alert["message"]
    assert alert["details"]["user"] == "admin"
    metrics = scrape(srv)
    assert value(metrics, "crewship_deploys_total", app="broken", kind="push",
                 outcome="failed") == 1


def test_a_crash_loop_raises_one_alert(srv: CrewshipServer, llm: FakeLLM, rx: Receiver,
                                       tmp_path: Path) -> None:
    configure(srv, "loop", llm)
    add_alert(srv, "loop", rx.url("/alerts/loop"), "--events", "crashed")
    push(srv, new_project(srv, "classic_crew", tmp_path), "loop")
    for crash in range(3):   # CREWSHIP_CRASH_LIMIT=3: the third crash gives up
        pid = instance_pid(srv, "loop")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        if crash < 2:
            wait_until(lambda pid=pid: instance_pid(srv, "loop") not in (None, pid),
                       timeout=90, what=f"restart {crash + 1}")
    wait_until(lambda: srv.ssh_json(srv.admin_key, "status", "loop")["state"] == "crashed",
               timeout=30, what="the app to be crashed")
    alert = only(rx, "/alerts/loop", "crashed")
    assert alert["details"]["crashes"] == 3
    metrics = scrape(srv)
    assert value(metrics, "crewship_app_crash_loops_total", app="loop") == 1
    assert value(metrics, "crewship_instance_crashes_total", app="loop") == 3
    assert value(metrics, "crewship_app_restarts", app="loop") == 2
    assert value(metrics, "crewship_apps", state="crashed") == 1
