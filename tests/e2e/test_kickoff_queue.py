"""Kickoffs are queued, not refused (issue 12 item 1), with a real crew on the fake LLM.

One server with tight limits (1 run per instance, 2 queued, an 8 s deadline) walks the
whole life of a queue: PENDING while the instance is busy, 429 with ``Retry-After`` when
full, stop of a PENDING kickoff, the deadline, ``GET /`` telling the truth, kickoffs
accepted during a crash restart, and a crashed app refusing with the reason.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_deploy import configure, instance_pid, new_project, push, wait_until
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INPUTS = {"topic": "queues", "audience": "operators"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("queue"), env={
        "CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
        "CREWSHIP_KICKOFF_CONCURRENCY": "1", "CREWSHIP_KICKOFF_QUEUE": "2",
        "CREWSHIP_KICKOFF_TIMEOUT": "8", "CREWSHIP_CRASH_LIMIT": "2"})
    server.start()
    yield server
    server.close()


def _state(api: CrewAPI, kickoff_id: str) -> str:
    return str(api.get(f"/status/{kickoff_id}").json()["state"])


def test_kickoffs_queue_time_out_stop_and_survive_a_crash_restart(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    api = configure(srv, "queued", llm)
    push(srv, new_project(srv, "classic_crew", tmp_path), "queued")
    assert api.run(INPUTS)["state"] == "SUCCESS"

    # 1. one run at a time: the next two wait PENDING, the fourth finds the queue full.
    llm.delay = 30.0
    try:
        first = api.kickoff(INPUTS)
        api.wait(first, timeout=30, states=("RUNNING",))
        second, third = api.kickoff(INPUTS), api.kickoff(INPUTS)
        assert _state(api, second) == _state(api, third) == "PENDING"
        full = api.post("/kickoff", json={"inputs": INPUTS})
        assert full.status_code == 429, full.text
        assert full.headers["Retry-After"].isdigit()
        assert "queue is full" in full.json()["message"]
        facts = httpx.get(f"{api.base}/", headers={**api.headers, "Accept": "application/json"},
                          timeout=30).json()
        assert facts["healthy_instances"] == 1
        assert facts["queued"] == 2
        assert facts["running"] == 1

        # 2. stop of a PENDING kickoff: REVOKED at once, it never runs anywhere.
        assert api.post(f"/stop/{third}").json()["status"] == "stopped"
        stopped = api.wait(third, timeout=5)
        assert stopped["state"] == "REVOKED"
        assert stopped["instance"] is None

        # 3. the deadline: FAILURE "timed out after 8 s", and the next one runs.
        timed_out = api.wait(first, timeout=30)
        assert timed_out["state"] == "FAILURE"
        assert timed_out["error"] == "timed out after 8 s"
        api.wait(second, timeout=30, states=("RUNNING",))
        assert api.post(f"/stop/{second}").json()["status"] == "stopped"
        assert api.wait(second, timeout=10)["state"] == "REVOKED"
    finally:
        llm.delay = 0.0

    # 4. kill -9 of the instance: kickoffs are accepted during the restart, then run.
    pid = instance_pid(srv, "queued")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    during = api.post("/kickoff", json={"inputs": INPUTS})
    assert during.status_code == 200, during.text
    assert api.wait(during.json()["kickoff_id"], timeout=90)["state"] == "SUCCESS"

    # 5. a second crash (CREWSHIP_CRASH_LIMIT=2): crashed; new kickoffs get 503 and why,
    #    queued ones fail with the reason.
    wait_until(lambda: instance_pid(srv, "queued") not in (None, pid), timeout=60,
               what="the restarted instance")
    llm.delay = 30.0
    try:
        busy = api.kickoff(INPUTS)
        api.wait(busy, timeout=30, states=("RUNNING",))
        waiting = api.kickoff(INPUTS)
        again = instance_pid(srv, "queued")
        assert again is not None
        os.kill(again, signal.SIGKILL)
        wait_until(lambda: srv.ssh_json(srv.admin_key, "status", "queued")["state"] == "crashed",
                   timeout=30, what="the crashed state")
        refused = api.post("/kickoff", json={"inputs": INPUTS})
        assert refused.status_code == 503
        assert "crashed" in refused.json()["message"]
        assert api.get("/").status_code == 503
        failed = api.wait(waiting, timeout=10)
        assert failed["state"] == "FAILURE"
        assert "crashed" in failed["error"]
        assert api.wait(busy, timeout=10)["state"] == "FAILURE"
    finally:
        llm.delay = 0.0
    time.sleep(0)  # nothing left running: the module's server closes everything
