"""The swarm runtime's cleanup of rollout secrets (runtime/swarm.py ``_forget_unused``) on the
real swarm: Docker refuses to remove a secret only while the service's current spec names
it, so the cleanup itself must spare the secret of the spec a rollback returns to
(``PreviousSpec``). Seen in CI: an older rollout's delayed cleanup ran while a broken
release rolled back and deleted the live release's secret; its tasks kept running, and
no kickoff reached them again. Services here have 0 replicas: no container is started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.swarm import SwarmSupervisor, secrets_named
from runtime.swarmspec import LABEL_APP, LABEL_SERVER
from tests.conftest import DOCKER_BASE_IMAGE
from tests.support.swarmcleanup import swarm_supervisor

pytestmark = pytest.mark.docker
APP = "secrets-demo"


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[SwarmSupervisor]:
    with swarm_supervisor(tmp_path, APP) as supervisor:
        yield supervisor


def template(secret: dict[str, str]) -> dict[str, Any]:
    return {"ContainerSpec": {"Image": DOCKER_BASE_IMAGE, "Command": ["sleep", "3600"],
                              "Secrets": [{"File": {"Name": "crewship", "UID": "0", "GID": "0",
                                                    "Mode": 0o400},
                                           "SecretID": secret["ID"],
                                           "SecretName": secret["Name"]}]}}


def test_the_cleanup_spares_the_secrets_of_the_current_and_the_rollback_spec(
        sup: SwarmSupervisor) -> None:
    client = sup._client
    assert client is not None
    st = sup._app(APP)
    labels = {LABEL_APP: APP, LABEL_SERVER: sup.server}

    def secret(n: int) -> dict[str, str]:
        name = f"{st.service}-v{n}-test"
        created = client.api.create_secret(name, f"secret {n}".encode(), labels=labels)
        sup._secrets.put(name, f"secret {n}")
        return {"ID": created["ID"], "Name": name}

    def update(made: dict[str, str]) -> None:
        svc = client.api.inspect_service(st.service)
        client.api.update_service(svc["ID"], svc["Version"]["Index"], template(made),
                                  name=st.service, mode=mode, labels=labels)

    def left() -> set[str]:
        return {s["Spec"]["Name"] for s in client.api.secrets(
            filters={"label": f"{LABEL_APP}={APP}"})}

    mode = {"Replicated": {"Replicas": 0}}
    v1, v2, stray = secret(1), secret(2), secret(9)
    client.api.create_service(template(v1), name=st.service, mode=mode, labels=labels)
    update(v2)  # v2 is current, v1 the spec a rollback returns to
    assert secrets_named(client.api.inspect_service(st.service)) == {v1["Name"], v2["Name"]}
    asyncio.run(sup._forget_unused(st, keep=""))
    assert left() == {v1["Name"], v2["Name"]}, left()  # the stray one, named by nothing, went
    assert sup._secrets.get(v1["Name"]) == "secret 1"  # the rollback target's, kept
    assert sup._secrets.get(v2["Name"]) == "secret 2"
    assert sup._secrets.get(stray["Name"]) is None

    v3 = secret(3)
    update(v3)  # v3 current, v2 previous: v1 is named by no spec and no task
    asyncio.run(sup._forget_unused(st, keep=""))
    assert left() == {v2["Name"], v3["Name"]}, left()
    assert sup._secrets.get(v1["Name"]) is None
    assert sup._secrets.get(v3["Name"]) == "secret 3"


def test_secrets_named_reads_both_specs_and_tolerates_a_missing_service() -> None:
    assert secrets_named(None) == set()
    svc = {"Spec": {"TaskTemplate": {"ContainerSpec": {"Secrets": [{"SecretName": "b"}]}}},
           "PreviousSpec": {"TaskTemplate": {"ContainerSpec": {"Secrets": [{"SecretName": "a"}]}}}}
    assert secrets_named(svc) == {"a", "b"}
    assert secrets_named({"Spec": {"TaskTemplate": {"ContainerSpec": {}}}}) == set()
