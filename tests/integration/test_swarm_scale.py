"""Scaling a swarm app changes its replicas and nothing else (runtime/swarmwatch.py
``_update(keep=True)``), on the real swarm. The SDK's ``fetch_current_spec`` sent the task
template back with Docker's defaults filled in, and Swarm took that for a new template: a
scale-up from 1 to 2 replaced the running task too (one needless restart of a serving
crew, and in the e2e test a kill aimed at a task that was already on its way out)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.swarm import SwarmSupervisor
from runtime.swarmspec import LABEL_APP, LABEL_SERVER
from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_deploy import wait_until
from tests.support.swarmcleanup import swarm_supervisor

pytestmark = pytest.mark.docker
APP = "scale-demo"


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[SwarmSupervisor]:
    with swarm_supervisor(tmp_path, APP) as supervisor:
        yield supervisor


def running(client: Any, service: str) -> set[str]:
    tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
    return {t["ID"] for t in tasks if t["Status"]["State"] == "running"}


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
    wait_until(lambda: len(running(client, st.service)) == 1, 120, "the first task")
    (first,) = running(client, st.service)
    stored = client.api.inspect_service(st.service)["Spec"]

    asyncio.run(sup._set_replicas(st, 2))

    wait_until(lambda: len(running(client, st.service)) == 2, 120, "two running tasks")
    both = running(client, st.service)
    assert first in both  # not replaced: the scale-up only added a task
    after = client.api.inspect_service(st.service)["Spec"]
    assert after["Mode"] == {"Replicated": {"Replicas": 2}}
    assert after["TaskTemplate"] == stored["TaskTemplate"]
    assert {k: v for k, v in after.items() if k != "Mode"} == \
        {k: v for k, v in stored.items() if k != "Mode"}
