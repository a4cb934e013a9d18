"""Scaling a swarm app changes its replicas and nothing else (runtime/swarmwatch.py
``_update(keep=True)``), on the real swarm. The SDK's ``fetch_current_spec`` sent the task
template back with Docker's defaults filled in, and Swarm took that for a new template: a
scale-up from 1 to 2 replaced the running task too (one needless restart of a serving
crew, and in the e2e test a kill aimed at a task that was already on its way out)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout
from runtime.registry import Registry
from runtime.swarm import SwarmSupervisor
from runtime.swarmspec import LABEL_APP, LABEL_SERVER
from tests.conftest import DOCKER_BASE_IMAGE

pytestmark = pytest.mark.docker
APP = "scale-demo"


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[SwarmSupervisor]:
    import docker

    client = docker.from_env(timeout=60)
    if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
        pytest.fail("this dockerd is not a swarm manager: run .ci/docker-setup", pytrace=False)
    layout = Layout(tmp_path / "data")
    layout.ensure()
    supervisor = SwarmSupervisor(layout, Registry("127.0.0.1:1"), client=client)
    yield supervisor
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_service(supervisor._app(APP).service)
    deadline = time.monotonic() + 60
    while client.api.containers(all=True, filters={"label": f"{LABEL_APP}={APP}"}) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    client.close()


def running(client: Any, service: str) -> set[str]:
    tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
    return {t["ID"] for t in tasks if t["Status"]["State"] == "running"}


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_scaling_up_keeps_the_running_task_and_its_spec(sup: SwarmSupervisor) -> None:
    client = sup._client
    assert client is not None
    st = sup._app(APP)
    labels = {LABEL_APP: APP, LABEL_SERVER: sup.server}
    template = {"ContainerSpec": {"Image": DOCKER_BASE_IMAGE, "Command": ["sleep", "3600"],
                                  "Labels": labels},
                "Networks": [{"Target": "host"}],
                "RestartPolicy": {"Condition": "any", "Delay": 500_000_000}}
    client.api.create_service(template, name=st.service, labels=labels,
                              mode={"Replicated": {"Replicas": 1}},
                              update_config={"Parallelism": 1, "Order": "start-first"})
    (first,) = wait_for("the first task", lambda: running(client, st.service))
    stored = client.api.inspect_service(st.service)["Spec"]

    asyncio.run(sup._set_replicas(st, 2))

    both = wait_for("two running tasks", lambda: (found := running(client, st.service))
                    and len(found) == 2 and found)
    assert first in both  # not replaced: the scale-up only added a task
    after = client.api.inspect_service(st.service)["Spec"]
    assert after["Mode"] == {"Replicated": {"Replicas": 2}}
    assert after["TaskTemplate"] == stored["TaskTemplate"]
    assert {k: v for k, v in after.items() if k != "Mode"} == \
        {k: v for k, v in stored.items() if k != "Mode"}
