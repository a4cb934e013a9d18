"""The per-app deploy lock: one change per app at a time, waiters say what they wait for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout, Settings, from_env
from crewship.errors import ConflictError
from crewship.model import App
from crewship.reporter import LineReporter, NullReporter
from crewship.service.deploys import Deployer


def app(name: str) -> App:
    return App(id=1, name=name, uuid=f"uuid-{name}", owner="admin", created_at="")


def deployer(tmp_path: Path, timeout: float) -> Deployer:
    nothing: Any = None  # locking touches none of the other collaborators
    return Deployer(Settings(deploy_lock_timeout=timeout), Layout(tmp_path), nothing, nothing,
                    nothing, nothing, nothing, nothing)


def test_a_waiter_says_who_holds_the_lock_and_then_proceeds(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        d = deployer(tmp_path, timeout=5)
        order: list[str] = []
        held = asyncio.Event()

        async def first() -> None:
            async with d.locked(app("demo"), "alice", "restart", NullReporter()):
                held.set()
                await asyncio.sleep(0.2)
                order.append("first done")

        async def second(report: LineReporter) -> None:
            await held.wait()
            async with d.locked(app("demo"), "bob", "config change", report):
                order.append("second ran")

        report = LineReporter(lambda _line: None)
        await asyncio.gather(first(), second(report))
        assert order == ["first done", "second ran"]
        return report.lines

    lines = asyncio.run(scenario())
    assert len(lines) == 1
    assert lines[0].startswith("-----> Waiting for alice's restart of demo (started ")
    assert "UTC, 0s ago) to finish (waiting up to 5s)" in lines[0]


def test_a_waiter_gives_up_after_the_timeout_with_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        d = deployer(tmp_path, timeout=0.1)
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with d.locked(app("demo"), "alice", "deploy of abc123", NullReporter()):
                held.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await held.wait()
        with pytest.raises(ConflictError, match=r"gave up after 0s: alice's deploy of abc123 "
                                                r"of demo .* is still running; try again"):
            async with d.locked(app("demo"), "bob", "rollback", NullReporter()):
                pass
        release.set()
        await task
        # the lock is free again afterwards
        async with d.locked(app("demo"), "bob", "rollback", NullReporter()):
            pass

    asyncio.run(scenario())


def test_different_apps_do_not_wait_for_each_other(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        d = deployer(tmp_path, timeout=0.1)
        report = LineReporter(lambda _line: None)
        async with d.locked(app("one"), "alice", "restart", NullReporter()), \
                d.locked(app("two"), "bob", "restart", report):
            pass
        return report.lines

    assert asyncio.run(scenario()) == []


def test_lock_timeout_comes_from_the_environment() -> None:
    assert from_env({"CREWSHIP_DEPLOY_LOCK_TIMEOUT": "2.5"}).deploy_lock_timeout == 2.5
    assert from_env({}).deploy_lock_timeout == 600.0
