"""Security: nothing on 127.0.0.1 runs a crew or reads its inputs without the instance's
secret (issue 10 item 3), with a real crew pushed to a real daemon, under the process and
the docker runtime."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.container import SECRET_MOUNT
from runtime.runner.signing import SIGNATURE_HEADER, sign
from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_deploy import configure, new_project
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("channel")) as server:
        yield server


def test_a_direct_request_to_a_runner_without_the_secret_gets_401_and_leaves_no_trace(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    refuses_without_the_secret(srv, llm, tmp_path, "guarded")


@pytest.mark.docker
def test_a_container_runner_refuses_requests_without_the_secret_it_got_as_a_file(
        llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    import docker

    client = docker.from_env(timeout=120)
    server = CrewshipServer(tmp_path_factory.mktemp("channel-docker"), args=["--runtime", "docker"],
                            env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE})
    try:
        server.start()
        instance = refuses_without_the_secret(server, llm, tmp_path, "guarded-dock")
        (container,) = client.containers.list(filters={"label": "crewship.app=guarded-dock"})
        secret = (server.data_dir / "secrets" / instance["id"]).read_text()
        attrs = json.dumps(container.attrs)
        assert secret not in attrs  # not in Env, Cmd, Args or labels
        assert f"--secret-file {SECRET_MOUNT}" in " ".join(container.attrs["Args"])
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == SECRET_MOUNT]
        assert mount["RW"] is False
    finally:
        server.close()
        _remove(client, "guarded-dock")
        client.close()


def _remove(client: Any, app: str) -> None:
    import docker.errors

    for container in client.containers.list(all=True, filters={"label": f"crewship.app={app}"}):
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
    for image in client.images.list(filters={"label": f"crewship.app={app}"}):
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(image.id, force=True)


def refuses_without_the_secret(srv: CrewshipServer, llm: FakeLLM, tmp_path: Path,
                               app: str) -> dict[str, Any]:
    """Unsigned, wrongly signed and malformed requests to the app's runner all get 401,
    prove nothing and run nothing; the crew API still works. Returns the instance."""
    api = configure(srv, app, llm)
    project = new_project(srv, "classic_crew", tmp_path)
    pushed = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False,
                     timeout=900)  # a cold image build (docker) downloads every wheel
    assert pushed.returncode == 0, pushed.stderr
    (instance,) = srv.ssh_json(srv.admin_key, "status", app)["instances"]
    runner = f"http://127.0.0.1:{instance['port']}"
    before = len(llm.chat_requests())
    body = json.dumps({"kickoff_id": "sneaky", "inputs": {"topic": "x", "audience": "y"}})
    wrong = b"not-the-instance-secret-0123456789"
    attempts = [
        httpx.post(f"{runner}/runs", content=body),
        httpx.post(f"{runner}/runs", content=body,
                   headers={SIGNATURE_HEADER: sign(wrong, "POST", "/runs", body.encode())}),
        httpx.post(f"{runner}/runs", content=body, headers={SIGNATURE_HEADER: "1:2:3"}),
        httpx.get(f"{runner}/inputs"),
        httpx.get(f"{runner}/runs"),
        httpx.get(f"{runner}/runs/sneaky"),
        httpx.get(f"{runner}/healthz"),
    ]
    assert [r.status_code for r in attempts] == [401] * len(attempts)
    assert all("X-Crewship-Proof" not in r.headers for r in attempts)
    assert len(llm.chat_requests()) == before  # the crew never ran
    assert api.get("/kickoffs").json()["kickoffs"] == []  # and no trace in the history
    secret_dir = srv.data_dir / "secrets"
    assert secret_dir.stat().st_mode & 0o777 == 0o700
    secret = (secret_dir / instance["id"]).read_text()
    assert secret not in (srv.data_dir / "logs" / app / "app.log").read_text()
    assert secret not in srv.log_text()
    assert api.run({"topic": "the front door", "audience": "still works"})["state"] == "SUCCESS"
    return dict(instance)
