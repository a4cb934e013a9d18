"""test_security_sandbox.py's probe crew on the docker runtime: two apps, each a locked-down
container; the crew inside finds the data dir, the other app's files and processes, its
image's root filesystem and its environment out of reach, and still answers.
Needs dockerd and the local base image (``.ci/docker-setup``); fails under CI=true without.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.container import CONTAINER_UID
from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_security_sandbox import deploy, probe_project, targets
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.docker]
APPS = ("dock-probe-a", "dock-probe-b")


def cleanup(client: Any) -> None:
    import docker.errors

    for app in APPS:
        for container in client.containers.list(all=True, filters={"label": f"crewship.app={app}"}):
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        for image in client.images.list(filters={"label": f"crewship.app={app}"}):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def dock() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=120)
    cleanup(client)
    yield client
    cleanup(client)
    client.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dock: Any) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("docker-sandbox"), args=["--runtime", "docker"],
                            env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE})
    server.start()
    yield server
    server.close()


@pytest.mark.timeout(1500)  # two image builds (the dependency layer is cached after the first)
def test_a_crew_container_finds_everything_outside_its_release_refused(
        srv: CrewshipServer, llm: FakeLLM, dock: Any, tmp_path: Path) -> None:
    project = probe_project(srv, tmp_path)
    api = deploy(srv, llm, project, APPS[0])
    deploy(srv, llm, project, APPS[1])
    (srv.data_dir / "homes" / APPS[1]).mkdir(parents=True, exist_ok=True)
    aim = targets(srv, APPS[1])
    before = srv.ssh_json(srv.admin_key, "status", APPS[1])

    done = api.run({"targets": aim, "topic": "containers"}, timeout=300)
    assert done["state"] == "SUCCESS", done
    report = json.loads(done["result"])
    allowed = {k: v for k, v in report["probes"].items() if not v.startswith("refused")}
    assert allowed == {}, f"the container let these through: {allowed}"
    assert report["probes"]["write_env"] == "refused: EROFS"          # /app/.venv
    assert report["probes"]["write_release"] == "refused: EROFS"      # /app
    assert report["probes"]["read_state_db"] == "refused: ENOENT"     # never mounted
    assert report["own"]["home"].startswith("ALLOWED"), report["own"]
    assert report["own"]["tmp"].startswith("ALLOWED"), report["own"]
    assert report["own"]["uid"] == CONTAINER_UID
    assert report["own"]["no_new_privs"] == "1"
    assert int(report["own"]["cap_eff"], 16) == 0
    assert "FAKE-LLM-ANSWER" in report["crew"]

    after = srv.ssh_json(srv.admin_key, "status", APPS[1])
    assert after["instances"][0]["id"] == before["instances"][0]["id"]
    assert after["restarts"] == before["restarts"]
    for container in dock.containers.list(filters={"label": f"crewship.app={APPS[0]}"}):
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        # the one host path a crew container sees: its runner secret, one file, read-only
        assert all(b.endswith(":/run/crewship/secret:ro") for b in host.get("Binds") or []), host
    assert Path(f"/proc/{before['instances'][0]['pid']}").exists()  # the other crew lives
    status = srv.ssh_json(srv.admin_key, "status", APPS[0])
    assert status["sandbox"] is True
    assert "locked-down container" in status["sandbox_note"]
