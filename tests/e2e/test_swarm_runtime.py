"""The swarm runtime (issue #13) on a real one-node swarm: the bridge-less dockerd that
``.ci/docker-setup`` starts, made a manager (``docker swarm init --advertise-addr
127.0.0.1``), tasks on host networking bound to 127.0.0.1, images through the
``docker-registry`` crewship starts on a free 127.0.0.1 port, crews against the fake LLM.

Scenario: push -> a service; ps:scale 2 -> kickoffs spread over both tasks; docker kill
of one task's container -> Swarm replaces it, no kickoff lost; a code-only push rolls out
(start-first) while kickoffs run and none fails; a broken push fails its health check and
Swarm rolls back by itself (the old tasks never stop); rollback; daemon restart adopts
the service; ps:placement; nodes (admins only); apps:destroy removes the service and its
registry images.

Everything it makes is removed afterwards by label (services, secrets, images of the
test's apps); the swarm itself stays (other helpers' plain containers do not care).

The registry's storage is kept in the test cache (``swarm-registry``), its layers held by
one cache tag: the first push of a run then uploads the code's layers, not the 1.2 GB
environment (compressing it costs dockerd a minute of CPU).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crewship.dockerd import server_id
from runtime.swarm import repository
from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_deploy import commit_all, configure, new_project, wait_until
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root
from tests.support.dockercache import keep_dependency_layers
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, free_port
from tests.support.swarmcleanup import remove_swarm_apps

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.docker]
APP = "swarm-demo"
APPS = (APP, "swarm-other")


@pytest.fixture(scope="module")
def dock() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=120)
    if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
        pytest.fail("this dockerd is not a swarm manager: run .ci/docker-setup "
                    "(docker swarm init --advertise-addr 127.0.0.1)", pytrace=False)
    keep_dependency_layers(client)  # tests/support/dockercache.py: the next build reuses them
    remove_swarm_apps(client, APPS)
    yield client
    keep_dependency_layers(client)
    remove_swarm_apps(client, APPS)
    client.close()


@pytest.fixture(scope="module")
def registry_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dock: Any,
        registry_port: int) -> Iterator[CrewshipServer]:
    root = tmp_path_factory.mktemp("swarm")
    store = cache_root() / "swarm-registry"
    store.mkdir(parents=True, exist_ok=True)
    (root / "data" / "registry").mkdir(parents=True)
    (root / "data" / "registry" / "data").symlink_to(store)
    server = CrewshipServer(root, args=["--runtime", "swarm"],
                            env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE,
                                 "CREWSHIP_RESTART_DELAY": "0.5",
                                 "CREWSHIP_DRAIN_TIMEOUT": "30",
                                 "CREWSHIP_HEALTH_TIMEOUT": "120",  # a loaded 2-core machine
                                 "CREWSHIP_REGISTRY_PORT": str(registry_port)})
    server.start(timeout=60)
    mount_kept_layers(server, registry_port)
    yield server
    server.close()


CACHE_REPO = "crewship-test/layers"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def keep_layers(dock: Any, image: str, registry_port: int) -> None:
    """Tag ``image`` into the registry's cache repository, so its garbage collection keeps
    the layers for the next run (the apps' own repositories go with apps:destroy)."""
    cached = f"127.0.0.1:{registry_port}/{CACHE_REPO}"
    dock.images.get(image).tag(cached, "latest")
    try:
        for line in dock.api.push(cached, tag="latest", stream=True, decode=True):
            assert "error" not in line, line
    finally:
        dock.images.remove(f"{cached}:latest")


def mount_kept_layers(srv: CrewshipServer, registry_port: int) -> None:
    """Link the cache repository's blobs into the app's repository (named after the server,
    runtime/swarm.py), so the first push finds its environment's layers already there."""
    repo = repository(server_id(srv.data_dir.resolve()), APP)
    base = f"http://127.0.0.1:{registry_port}/v2"
    found = httpx.get(f"{base}/{CACHE_REPO}/manifests/latest", headers={"Accept": MANIFEST})
    if found.status_code != 200:
        return  # the first run on this machine
    manifest = found.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        httpx.post(f"{base}/{repo}/blobs/uploads/",
                   params={"mount": blob["digest"], "from": CACHE_REPO}).raise_for_status()


def push(srv: CrewshipServer, project: Path, *, check: bool = True) -> str:
    result = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False,
                     timeout=900)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stderr


def tasks(dock: Any, state: str = "running") -> list[dict[str, Any]]:
    """The app's tasks Swarm wants running and that are ``state``."""
    services = dock.api.services(filters={"label": f"crewship.app={APP}"})
    found = [t for s in services
             for t in dock.api.tasks(filters={"service": s["ID"], "desired-state": "running"})]
    return [t for t in found if t["Status"]["State"] == state]


def releases_seen(dock: Any) -> set[str]:
    """The releases of every task the app's service has had (any state)."""
    services = dock.api.services(filters={"label": f"crewship.app={APP}"})
    return {t["Spec"]["ContainerSpec"]["Labels"]["crewship.release"]
            for s in services for t in dock.api.tasks(filters={"service": s["ID"]})}


def releases_running(dock: Any) -> list[str]:
    return sorted(t["Spec"]["ContainerSpec"]["Labels"]["crewship.release"] for t in tasks(dock))


def burst(api: CrewAPI, n: int, tag: str) -> list[dict[str, Any]]:
    ids = [api.kickoff({"topic": f"{tag} {i}", "audience": "swarm"}) for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda k: api.wait(k, timeout=300), ids))


@pytest.mark.timeout(2400)
def test_swarm_push_scale_kill_rolling_update_rollback_adopt_destroy(
        srv: CrewshipServer, llm: FakeLLM, dock: Any, tmp_path: Path,
        registry_port: int) -> None:
    api = configure(srv, APP, llm)
    project = new_project(srv, "classic_crew", tmp_path)

    # 1. push: an image, pushed to the registry crewship runs, a service running it by digest.
    out = push(srv, project)
    for line in (f"-----> Pushing the image to 127.0.0.1:{registry_port}", "-----> Starting v1",
                 "v1.1 healthy on", "-----> Health check passed", f"=====> {APP} v1 is live at"):
        assert line in out, out
    (service,) = dock.api.services(filters={"label": f"crewship.app={APP}"})
    container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert f"127.0.0.1:{registry_port}/crewship/" in container["Image"]
    assert "@sha256:" in container["Image"]
    assert service["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert service["Spec"]["UpdateConfig"]["FailureAction"] == "rollback"
    assert container["User"] == "10001:10001"
    assert container["ReadOnly"] is True
    assert container["Healthcheck"]["Test"][0] == "CMD"
    assert "sk-fake-test-key" not in str(container.get("Command"))
    assert all("secret" not in e.lower() or "=" not in e for e in container["Env"]
               if e.startswith("CREWSHIP_"))
    assert api.run({"topic": "quantum tea", "audience": "otters"})["state"] == "SUCCESS"
    keep_layers(dock, container["Image"], registry_port)

    # 2. ps:scale 2: two tasks on distinct ports; kickoffs spread over both.
    out = srv.ssh(srv.admin_key, "ps:scale", APP, "2", check=True, timeout=600).stdout
    assert "Health check passed" in out, out
    assert releases_running(dock) == ["1", "1"]
    status = srv.ssh_json(srv.admin_key, "status", APP)
    ups = [i for i in status["instances"] if i["state"] == "up"]
    assert len(ups) == 2, status
    assert len({i["port"] for i in ups}) == 2, status
    assert all(i["node"] for i in ups), status
    done = burst(api, 10, "spread")
    assert all(d["state"] == "SUCCESS" for d in done), done
    # both tasks ran some, and the scale-up only added one (slot 1's task of v1 still serves:
    # tests/integration/test_swarm_scale.py)
    assert {d["instance"] for d in done} == {i["id"] for i in ups}, [d["instance"] for d in done]

    # 3. docker kill one task's container: Swarm starts another; no kickoff lost.
    victim = tasks(dock)[0]
    ids = [api.kickoff({"topic": f"kill {i}", "audience": "swarm"}) for i in range(6)]
    dock.api.kill(victim["Status"]["ContainerStatus"]["ContainerID"], "SIGKILL")
    ids += [api.kickoff({"topic": f"after {i}", "audience": "swarm"}) for i in range(4)]
    settled = [api.wait(k, timeout=300) for k in ids]
    for body in settled:  # each settles: it ran, or failed saying its task was killed
        assert body["state"] == "SUCCESS" or "killed by signal 9" in (body["error"] or ""), body
    assert all(b["state"] == "SUCCESS" for b in settled[6:]), settled[6:]
    wait_until(lambda: len(tasks(dock)) == 2 and victim["ID"] not in {t["ID"] for t in tasks(dock)},
               timeout=120, what="Swarm to replace the killed task")
    wait_until(lambda: srv.ssh_json(srv.admin_key, "status", APP)["restarts"] >= 1,
               timeout=30, what="the restart to be counted")

    # 4. a code-only push rolls out while kickoffs run: none of them fails.
    tasks_yaml = project / "src/demo_crew/config/tasks.yaml"
    tasks_yaml.write_text(tasks_yaml.read_text().replace("short briefing", "crisp briefing"))
    commit_all(srv, project, "reword the task")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pushing = pool.submit(push, srv, project)
        during: list[str] = []
        while not pushing.done():  # kickoffs all through the rollout (the build comes first)
            rolling = "2" in releases_seen(dock)
            if rolling and len(during) < 60:
                during.append(api.kickoff({"topic": "rolling", "audience": "update"}))
            time.sleep(0.5 if rolling else 1.0)
        out = pushing.result()
    assert "Swarm rolling update, start-first" in out, out
    assert "=====> swarm-demo v2 is live" in out, out
    results = [api.wait(k, timeout=300) for k in during]
    assert during, results
    assert all(r["state"] == "SUCCESS" for r in results), results
    wait_until(lambda: releases_running(dock) == ["2", "2"], timeout=120,
               what="two tasks of v2")
    assert "crisp briefing" in api.run({"topic": "a", "audience": "b"})["result"]

    # 5. a broken release fails its health check; Swarm rolls back, v2's tasks keep serving.
    before = {t["ID"] for t in tasks(dock)}
    crew_py = project / "src/demo_crew/crew.py"
    crew_py.write_text(crew_py.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    commit_all(srv, project, "break the crew")
    out = push(srv, project, check=False)
    assert "health check failed: v3." in out, out  # Swarm picks which slot goes first
    assert "Swarm rolled back" in out, out
    assert "RuntimeError: broken on purpose" in out, out
    assert {t["ID"] for t in tasks(dock)} == before
    assert srv.ssh_json(srv.admin_key, "status", APP)["release"] == "v2"
    assert api.run({"topic": "still", "audience": "here"})["state"] == "SUCCESS"
    srv.git(None, "reset", "-q", "--hard", "HEAD~1", cwd=project)

    # 6. rollback to v1 through the same rolling path (a new release, v4, of v1's build).
    out = srv.ssh(srv.admin_key, "rollback", APP, "v1", check=True, timeout=600).stdout
    assert "Swarm rolling update" in out, out
    assert "v4 is live" in out, out
    wait_until(lambda: releases_running(dock) == ["4", "4"], timeout=120, what="v1's build")
    assert "short briefing" in api.run({"topic": "c", "audience": "d"})["result"]

    # 7. logs: every task's lines, tagged by the daemon, across the rollouts.
    logs = srv.ssh(srv.admin_key, "logs", APP, "-n", "100000", check=True).stdout
    for tag in ("[v1.1]", "[v1.2]", "[v2.1]", "[v2.2]"):
        assert tag in logs, logs[-3000:]

    # 8. daemon restart: the service is adopted, not redeployed.
    running_ids = {t["ID"] for t in tasks(dock)}
    srv.restart()
    srv.wait_for_log("server_started", since_start=True, timeout=60)
    wait_until(lambda: srv.ssh_json(srv.admin_key, "status", APP)["state"] == "running",
               timeout=60, what="the app to be running again")
    assert {t["ID"] for t in tasks(dock)} == running_ids
    assert api.run({"topic": "adopted", "audience": "crew"})["state"] == "SUCCESS"

    # 9. nodes: admins see the swarm; others are refused.
    nodes = srv.ssh_json(srv.admin_key, "nodes")
    assert len(nodes) == 1, nodes
    assert nodes[0]["state"] == "ready", nodes
    assert nodes[0]["crew_tasks"] == 2, nodes
    assert nodes[0]["manager"], nodes
    someone = srv.add_user("someone")
    refused = srv.ssh(someone, "nodes")
    assert refused.returncode != 0, refused.stderr
    assert "admin" in refused.stderr, refused.stderr

    # 10. ps:placement: constraints go on the service through a rolling update; empty clears.
    out = srv.ssh(srv.admin_key, "ps:placement", APP, "node.role==manager", check=True,
                  timeout=600).stdout
    assert "is live" in out, out
    (service,) = dock.api.services(filters={"label": f"crewship.app={APP}"})
    assert service["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==manager"]
    shown = srv.ssh_json(srv.admin_key, "ps:placement", APP)
    assert shown["constraints"] == ["node.role==manager"], shown
    bad = srv.ssh(srv.admin_key, "ps:placement", APP, "no operator here")
    assert bad.returncode != 0, bad.stderr
    assert "constraint" in bad.stderr, bad.stderr

    # 11. apps:destroy: the service, its secrets and its registry images go.
    repo = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    repo_path = repo.split("/", 1)[1]
    tags = httpx.get(f"http://127.0.0.1:{registry_port}/v2/{repo_path}/tags/list").json()
    assert tags["tags"], tags
    srv.ssh(srv.admin_key, "apps:destroy", APP, "--force", check=True)
    assert dock.api.services(filters={"label": f"crewship.app={APP}"}) == []
    wait_until(lambda: not dock.api.secrets(filters={"label": f"crewship.app={APP}"}),
               timeout=60, what="the rollout secrets to go")
    gone = httpx.get(f"http://127.0.0.1:{registry_port}/v2/{repo_path}/tags/list")
    assert gone.status_code == 404 or not gone.json().get("tags"), gone.text
