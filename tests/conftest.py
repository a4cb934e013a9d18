"""Shared fixtures: a running crewship server (see tests/support/server.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import CrewshipServer

ServerFactory = Callable[..., CrewshipServer]
DOCKER_BASE_IMAGE = os.environ.get("CREWSHIP_TEST_BASE_IMAGE", "crewship-base:bookworm")


@functools.cache
def docker_missing() -> str | None:
    """Why the ``docker`` tests cannot run here (no daemon, no base image), or None."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=10)
        try:
            client.ping()
            client.images.get(DOCKER_BASE_IMAGE)
        finally:
            client.close()
    except docker.errors.ImageNotFound:
        return (f"the base image {DOCKER_BASE_IMAGE} is missing: run .ci/docker-setup "
                "(mmdebstrap ... | docker import - crewship-base:bookworm)")
    except docker.errors.DockerException as exc:
        return f"no Docker daemon answers ({exc}): run .ci/docker-setup to start one"
    return None


ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def docker_module(module: str) -> bool:
    """A test module with ``docker`` tests (by its text, so the xdist controller, which
    collects nothing, knows it too)."""
    try:
        return "pytest.mark.docker" in (ROOT / module).read_text()
    except OSError:
        return False


# Each module's seconds in the last run that ran it (pytest's cache, .pytest_cache/)
SECONDS_KEY = "crewship/module-seconds"
_seconds: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest work first: the docker modules, then the others by how long they took
    last time, then (never timed) e2e, integration, unit; short modules fill the gaps at
    the end under ``make test``'s xdist workers, instead of one long module running alone
    at the end. The same order on every worker, a module's own tests in their order."""
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    seconds: dict[str, float] = cache.get(SECONDS_KEY, {}) if cache is not None else {}

    def rank(item: pytest.Item) -> tuple[int, float, int, str]:
        module = item.nodeid.split("::", 1)[0]
        if docker_module(module):
            return 0, 0.0, 0, module
        kind = module.split("/")[1] if module.count("/") >= 2 else ""
        return 1, -seconds.get(module, 0.0), {"e2e": 1, "integration": 2}.get(kind, 3), module

    items.sort(key=rank)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    _seconds[module] = _seconds.get(module, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without workers) keeps the modules' seconds for next time."""
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _seconds:
        return
    known: dict[str, float] = cache.get(SECONDS_KEY, {})
    known.update({module: round(s, 1) for module, s in _seconds.items()})
    cache.set(SECONDS_KEY, known)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test`` (``-n 2``): a module is one unit of work (its module-scoped servers
    start once), and every docker module goes to the same worker, one after another
    (builds on one dockerd clean up each other's dependency stages). xdist's own
    ``loadgroup`` cannot do it here: it renames test ids, which pytest 9.2 ignores."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "docker" if docker_module(module) else module

    return ModuleScheduling(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``docker`` tests skip without Docker, with the reason; in CI they fail instead
    (``CI=true``, or ``CREWSHIP_REQUIRE_DOCKER=1`` as .ci/run sets it)."""
    if item.get_closest_marker("docker") is None:
        return
    reason = docker_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") \
            or os.environ.get("CREWSHIP_REQUIRE_DOCKER") == "1":
        pytest.fail(f"docker test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True, scope="module")
def _docker_dependency_layers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a module with ``docker`` tests: keep the dependency stages its image builds
    made (tagged), so the next build of the same lock, in this run or the next, installs
    nothing (tests/support/dockercache.py)."""
    yield
    path = request.node.path
    if not any(item.path == path and item.get_closest_marker("docker")
               for item in request.session.items):
        return
    if docker_missing() is not None:
        return
    import docker

    from tests.support.dockercache import keep_dependency_layers

    client = docker.from_env(timeout=60)
    try:
        keep_dependency_layers(client)
    finally:
        client.close()


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Make servers: ``server_factory(env={...}, args=[...], start=True)``; all closed at
    teardown. ``shared_envs=True``: crew environments come from (and go to) the cache every
    test server shares, one per uv.lock (tests/support/crewenv.py)."""
    made: list[CrewshipServer] = []

    def make(*, start: bool = True, **kwargs: Any) -> CrewshipServer:
        srv = CrewshipServer(tmp_path_factory.mktemp("crewship"), **kwargs)
        made.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in made:
        srv.close()


@pytest.fixture
def server(server_factory: ServerFactory) -> CrewshipServer:
    """A started server with one admin (``server.admin_key``)."""
    return server_factory()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory for client-side git work."""
    path = tmp_path / "work"
    path.mkdir()
    return path
