"""test_resources.py on the docker runtime: usage from the container stats API, and a
container killed by the kernel over its memory limit (``OOMKilled``) reported as
``memory_exceeded``, not as a plain crash. Needs dockerd and the local base image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_docker_runtime import docker_client
from tests.e2e.test_resources import BALLAST, MB, within
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import locked_copy
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.docker]
APP = "dock-greedy"


def cleanup(client: Any) -> None:
    import docker.errors

    for container in client.containers.list(all=True, filters={"label": f"crewship.app={APP}"}):
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
    for image in client.images.list(filters={"label": f"crewship.app={APP}"}):
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(image.id, force=True)
    with contextlib.suppress(docker.errors.DockerException):  # the dependency stage stays
        client.images.prune(filters={"dangling": True, "label": "crewship.managed"})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    client = docker_client()
    cleanup(client)
    server = CrewshipServer(tmp_path_factory.mktemp("resources-docker"),
                            args=["--runtime", "docker"],
                            env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE,
                                 "CREWSHIP_RESTART_DELAY": "0.5", "CREWSHIP_USAGE_INTERVAL": "1"})
    server.start()
    yield server
    server.close()
    cleanup(client)
    client.close()


def test_a_container_over_its_memory_limit_is_reported_as_memory_exceeded(
        srv: CrewshipServer, tmp_path: Path) -> None:
    project = locked_copy("classic_crew", tmp_path)
    (project / "src/demo_crew/ballast.py").write_text(BALLAST)
    with (project / "pyproject.toml").open("a") as f:
        f.write('\n[tool.crewship]\nentrypoint = "demo_crew.ballast:run"\n')
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", "ballast crew", cwd=project)
    srv.ssh(srv.admin_key, "apps:create", APP, check=True)
    srv.ssh(srv.admin_key, "config:set", APP, "BALLAST_MB=100", check=True)
    srv.ssh(srv.admin_key, "ps:limits", APP, "--memory", "600m", check=True)
    out = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False,
                  timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert srv.ssh_json(srv.admin_key, "ps:limits", APP)["enforced_by"].startswith("docker")

    def sampled() -> dict[str, Any] | None:
        inst = srv.ssh_json(srv.admin_key, "status", APP)["instances"][0]
        return inst if (inst["memory_bytes"] or 0) >= 100 * MB else None
    inst = within(20, sampled)
    assert inst["memory_bytes"] < 600 * MB
    assert inst["threads"] >= 1

    token = srv.ssh(srv.admin_key, "tokens", APP, check=True).stdout.strip()
    CrewAPI(srv.http_url, APP, token).kickoff({"mb": 900, "hold": 60})
    events = within(60, lambda: srv.ssh_json(srv.admin_key, "status", APP)["memory_exceeded"])
    assert events[0]["instance"] == inst["id"]
    assert events[0]["reason"] == "memory_exceeded"
    log = srv.ssh(srv.admin_key, "logs", APP, "-n", "200", check=True).stdout
    assert "memory_exceeded" in log
