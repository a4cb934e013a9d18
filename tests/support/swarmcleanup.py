"""Removing what a swarm test or benchmark made, by app label, from a shared dockerd.

The swarm runtime labels everything it creates for an app ``crewship.app=<app>``: the
service (and so its task containers), the rollout secrets, the images it built. A test
(tests/e2e/test_swarm_runtime.py) or benchmark (bench/swarm.py) calls
``remove_swarm_apps`` before it starts (leftovers of an interrupted run) and after it
ends. Only its own apps' labels are touched, never the swarm itself: other helpers'
containers run on the same dockerd.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.swarm import SwarmSupervisor


def remove_swarm_apps(client: Any, apps: Iterable[str], wait: float = 60.0) -> None:
    """Remove the services, containers, secrets and images of ``apps``, then the dangling
    layers crewship's builds left (registry pushes and rebuilds untag them).

    A service's tasks drain before its containers go: up to ``wait`` seconds, then what
    is left is removed by force (a secret stays in use while a container mounts it)."""
    import docker.errors

    for app in apps:
        label = f"crewship.app={app}"
        for service in client.api.services(filters={"label": label}):
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_service(service["ID"])
        deadline = time.monotonic() + wait
        # the low-level list: no inspect per container (one that goes meanwhile is a 404)
        while client.api.containers(all=True, filters={"label": label}) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        for container in client.api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_container(container["Id"], force=True)
        for secret in client.api.secrets(filters={"label": label}):
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_secret(secret["ID"])
        for image in client.images.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image.id, force=True)
    with contextlib.suppress(docker.errors.DockerException):
        client.images.prune(filters={"dangling": True, "label": "crewship.managed"})


@contextlib.contextmanager
def swarm_supervisor(root: Path, app: str) -> Iterator[SwarmSupervisor]:
    """A ``SwarmSupervisor`` on this machine's swarm (data under ``root``, no registry) for
    tests that drive its methods on ``app``; everything of ``app`` is removed afterwards."""
    import docker
    import pytest

    from crewship.config import Layout
    from runtime.registry import Registry
    from runtime.swarm import SwarmSupervisor

    client = docker.from_env(timeout=60)
    try:
        if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
            pytest.fail("this dockerd is not a swarm manager: run .ci/docker-setup",
                        pytrace=False)
        layout = Layout(root / "data")
        layout.ensure()
        try:
            yield SwarmSupervisor(layout, Registry("127.0.0.1:1"), client=client)
        finally:
            remove_swarm_apps(client, [app])
    finally:
        client.close()
