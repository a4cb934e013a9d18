"""Shared fixtures: a running crewship server (see tests/support/server.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import CrewshipServer

ServerFactory = Callable[..., CrewshipServer]


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Make servers: ``server_factory(env={...}, args=[...], start=True)``; all closed at teardown."""
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
