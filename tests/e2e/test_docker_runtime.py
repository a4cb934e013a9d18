"""Push to live on the docker runtime (issue #5): test_deploy.py's scenario with every
release an image and every instance a container (host networking, 127.0.0.1 only),
against the fake LLM. Needs dockerd and the local base image (``.ci/docker-setup``);
without them the test skips, and fails under CI=true (tests/conftest.py).

Everything the test makes is removed afterwards by label: containers and images with
``crewship.app=<one of the apps here>``, then dangling crewship layers. The dependency stage
is kept for the next build of the same lock (tests/support/dockercache.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_deploy import commit_all, configure, new_project, wait_until
from tests.support.dockercache import keep_dependency_layers
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.docker]
APP = "dock-demo"
APPS = (APP,)


def docker_client() -> Any:
    import docker

    return docker.from_env(timeout=120)


def cleanup(client: Any) -> None:
    """Every container and image of the test's apps, then dangling crewship layers (the
    venv and dependency stages are tagged first: they stay for the next build)."""
    import docker.errors

    keep_dependency_layers(client)

    for app in APPS:
        for container in client.containers.list(all=True, filters={"label": f"crewship.app={app}"}):
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        for image in client.images.list(filters={"label": f"crewship.app={app}"}):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image.id, force=True)
    with contextlib.suppress(docker.errors.DockerException):
        client.images.prune(filters={"dangling": True, "label": "crewship.managed"})


@pytest.fixture(scope="module")
def dock() -> Iterator[Any]:
    client = docker_client()
    cleanup(client)
    yield client
    cleanup(client)
    client.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dock: Any) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("docker"), args=["--runtime", "docker"],
                            env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE,
                                 "CREWSHIP_RESTART_DELAY": "0.5"})
    server.start()
    yield server
    server.close()


def push(srv: CrewshipServer, project: Path, app: str, *, check: bool = True) -> str:
    """``git push``; a full image build downloads every wheel, so allow it 10 minutes."""
    result = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False,
                     timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stderr


def running(dock: Any, app: str = APP) -> list[Any]:
    return list(dock.containers.list(filters={"label": f"crewship.app={app}",
                                              "status": "running"}))


def only_container(dock: Any, release: int) -> Any:
    """The app's one running container, of ``release`` (waits for retired ones to go)."""
    def settled() -> bool:
        found = running(dock)
        return len(found) == 1 and found[0].labels["crewship.release"] == str(release)
    wait_until(settled, timeout=90, what=f"exactly one container of v{release}")
    return running(dock)[0]


def timed(fn: Callable[[], str]) -> tuple[str, float]:
    started = time.monotonic()
    out = fn()
    return out, time.monotonic() - started


@pytest.mark.timeout(1200)  # the first build downloads ~400 MB of wheels inside the build
def test_docker_push_to_live_code_push_broken_push_kill_and_daemon_restart(
        srv: CrewshipServer, llm: FakeLLM, dock: Any, tmp_path: Path) -> None:
    api = configure(srv, APP, llm)
    project = new_project(srv, "classic_crew", tmp_path)

    # 1. push: validated, image built, container started, health-checked, live.
    out, _ = timed(lambda: push(srv, project, APP))
    for line in ("-----> Validating", "-----> Building image crewship/dock-demo:v1",
                 "-----> Starting v1", "-----> Health check passed",
                 "=====> dock-demo v1 is live at"):
        assert line in out, out
    assert "sk-fake-test-key" not in out  # config values never reach build output
    first = only_container(dock, 1)
    assert first.attrs["HostConfig"]["NetworkMode"] == "host"
    assert first.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    assert first.attrs["Config"]["User"] == "10001:10001"
    image = dock.images.get(first.image.id)
    assert image.labels["crewship.app"] == APP
    assert image.labels["crewship.release"] == "1"
    assert len(image.labels["crewship.commit"]) == 40

    # 2. the crew API through the container: kickoff with inputs -> SUCCESS from the fake LLM.
    assert api.get("/").text == "Healthy"
    done = api.run({"topic": "quantum tea", "audience": "otters"})
    assert done["state"] == "SUCCESS", done
    assert "FAKE-LLM-ANSWER" in done["result"]
    assert "quantum tea" in done["result"]
    assert "otters" in done["result"]

    # 3. a code-only push rebuilds only the code layer.
    tasks = project / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("short briefing", "crisp briefing"))
    second = commit_all(srv, project, "reword the task")
    out, _ = timed(lambda: push(srv, project, APP))
    assert "dependency layer cached" in out, out
    assert "Installed" not in out
    assert "=====> dock-demo v2 is live" in out
    # (its speed is measured in bench/image.py, never asserted: tests do not fail on timings)
    v2 = only_container(dock, 2)
    assert "crisp briefing" in api.run({"topic": "a", "audience": "b"})["result"]

    # 4. broken pushes fail and the v2 container keeps serving: a layout error (before any
    #    build) and a crew that cannot start (its container fails the health check).
    tasks.unlink()
    commit_all(srv, project, "lose the tasks")
    out = push(srv, project, APP, check=False)
    assert "missing_tasks_yaml" in out, out
    srv.git(None, "revert", "--no-edit", "HEAD", cwd=project)
    crew_py = project / "src/demo_crew/crew.py"
    crew_py.write_text(crew_py.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    commit_all(srv, project, "break the crew")
    out = push(srv, project, APP, check=False)
    assert "health check failed" in out, out
    assert "v4.1 exited" in out, out
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "200", check=True).stdout
    assert "[v4.1] RuntimeError: broken on purpose" in logs, logs
    head = srv.git(None, "--git-dir", str(srv.repo_path(APP)), "rev-parse", "main",
                   cwd=project).stdout.strip()
    assert head == second
    assert only_container(dock, 2).id == v2.id
    assert srv.ssh_json(srv.admin_key, "status", APP)["release"] == "v2"
    assert api.run({"topic": "still", "audience": "here"})["state"] == "SUCCESS"

    # 5. docker kill of the crew's container: the supervisor starts a new one, healthy.
    dock.api.kill(v2.id, "SIGKILL")
    wait_until(lambda: any(c.id != v2.id for c in running(dock))
               and api.get("/").status_code == 200, timeout=120,
               what="a new container to take over")
    replaced = only_container(dock, 2)
    assert replaced.id != v2.id
    assert api.run({"topic": "back", "audience": "again"})["state"] == "SUCCESS"
    assert srv.ssh_json(srv.admin_key, "status", APP)["restarts"] >= 1

    # 6. daemon restart: the running container is adopted, not duplicated.
    srv.restart()
    srv.wait_for_log("server_started", since_start=True)
    wait_until(lambda: srv.ssh_json(srv.admin_key, "status", APP)["state"] == "running",
               timeout=60, what="the app to be running again")
    assert [c.id for c in running(dock)] == [replaced.id]
    assert api.run({"topic": "adopted", "audience": "crew"})["state"] == "SUCCESS"
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "400", check=True).stdout
    assert "adopted 1 running instance(s) of v2" in logs
    assert "[v2.1]" in logs

    # 7. per-app limits: stored, applied to the containers of the restart they cause.
    out = srv.ssh(srv.admin_key, "ps:limits", APP, "--memory", "768m", "--cpus", "1",
                  check=True).stdout
    assert "memory:   768m" in out, out
    status = srv.ssh_json(srv.admin_key, "status", APP)
    assert status["release"] == "v5"  # the restart that applied the limits (v3, v4 failed)
    limited = only_container(dock, 5)
    assert limited.attrs["HostConfig"]["Memory"] == 768 * 1024 * 1024
    assert limited.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert api.run({"topic": "limited", "audience": "crew"})["state"] == "SUCCESS"


def test_limits_are_refused_with_bad_values(srv: CrewshipServer) -> None:
    srv.ssh(srv.admin_key, "apps:create", "dock-limits", check=True)
    for args, message in ((("--memory", "lots"), "invalid memory limit"),
                          (("--memory", "1k"), "too small"),
                          (("--cpus", "nan"), "out of range"),
                          (("--cpus", "two"), "invalid CPU limit")):
        result = srv.ssh(srv.admin_key, "ps:limits", "dock-limits", *args)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout
    shown = srv.ssh_json(srv.admin_key, "ps:limits", "dock-limits")
    assert shown == {"app": "dock-limits", "memory": None, "cpus": None, "runtime": "docker",
                     "enforced_by": "docker (memory and cpus per container)"}
