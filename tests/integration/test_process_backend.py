"""ProcessBackend + Supervisor with real child processes (tests/support/fakerunner.py).

Every process a test starts is killed by pid at teardown (from the instance records
and the pids the test saw), and the fake runner exits by itself after two minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout
from crewship.errors import DeployError
from runtime.backend import InstanceSpec
from runtime.channel import RunnerClient
from runtime.events import (
    Endpoint,
    InstanceExited,
    InstanceFailedError,
    InstanceRetired,
    MakeSpec,
    SupervisorEvent,
)
from runtime.logs import AppLog
from runtime.pidrecord import is_running, proc_stat
from runtime.process import ProcessBackend
from runtime.supervisor import Supervisor

APP = "demo"
FAKERUNNER = Path(__file__).resolve().parents[1] / "support" / "fakerunner.py"


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = Layout(root / "data")
        self.layout.ensure()
        self.pids: set[int] = set()
        self.events: list[SupervisorEvent] = []

    def spec(self, release: int, *extra: str) -> MakeSpec:
        def make(index: int, port: int) -> InstanceSpec:
            argv = [sys.executable, str(FAKERUNNER), "--port", str(port),
                    "--instance", f"v{release}.{index}", *extra]
            env = {"PATH": os.environ.get("PATH", ""), "CREWSHIP_SECRET": "s3cret-value"}
            return InstanceSpec(APP, release, index, argv, env, self.root, port,
                                secret="0123456789abcdef" * 2)  # the supervisor sets its own
        return make

    def supervisor(self, backend: ProcessBackend, **options: Any) -> Supervisor:
        settings: dict[str, Any] = dict(health_timeout=10.0, drain_timeout=5.0,
                                        health_interval=0.05, stop_grace=2.0,
                                        on_event=self.events.append)
        settings.update(options)
        return Supervisor(backend, self.layout, **settings)

    def remember(self, sup: Supervisor) -> None:
        for status in sup.status(APP).instances:
            if status.pid is not None:
                self.pids.add(status.pid)

    @property
    def log(self) -> AppLog:
        return AppLog(self.layout.app_logs(APP))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self.layout.instances.glob("*.json")]

    def kill_everything(self) -> None:
        for record in self.records():
            if is_running(record["pid"], record["proc_start"]):
                os.kill(record["pid"], signal.SIGKILL)
        for pid in self.pids:
            stat = proc_stat(pid)
            if stat is not None and stat[0] != "Z":
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"fakerunner" in cmdline:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.kill_everything()


def run(body: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(body, 60))


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def healthz(endpoint: Endpoint) -> int:
    """A signed health check, as the supervisor makes it (runtime/channel.py)."""
    client = RunnerClient(timeout=2)
    try:
        return (await client.call(endpoint.peer, "GET", "/healthz")).status
    finally:
        await client.aclose()


def test_kill_9_is_restarted_and_healthy_again(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        sup = rig.supervisor(backend)
        try:
            await sup.deploy(APP, 1, rig.spec(1))
            rig.remember(sup)
            first = sup.endpoints(APP)[0]
            pid = sup.status(APP).instances[0].pid
            assert pid is not None
            assert await healthz(first) == 200
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: bool(sup.endpoints(APP))
                             and sup.endpoints(APP)[0].instance_id != first.instance_id)
            elapsed = time.monotonic() - killed
            rig.remember(sup)
            again = sup.endpoints(APP)[0]
            assert await healthz(again) == 200
            print(f"crash-to-healthy: {elapsed:.3f} s")
            assert elapsed < 5.0
            assert InstanceExited(APP, first.instance_id, 1, -9) in rig.events
            assert "[system] v1.1 exited with status -9, restarting in 0s" in \
                rig.log.path.read_text()
            assert [r["id"] for r in rig.records()] == [again.instance_id]
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
        assert rig.records() == []
    run(body())


def test_retiring_drains_in_flight_work_then_exits_0(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        sup = rig.supervisor(backend)
        try:
            await sup.deploy(APP, 1, rig.spec(1))
            rig.remember(sup)
            old = sup.endpoints(APP)[0]
            client = RunnerClient(timeout=10)
            try:
                work = asyncio.create_task(client.call(old.peer, "GET", "/work?seconds=1"))
                await eventually(lambda: "work started" in rig.log.path.read_text())
                await sup.deploy(APP, 2, rig.spec(2))
                rig.remember(sup)
                response = await work
            finally:
                await client.aclose()
            assert response.status == 200
            await eventually(lambda: any(isinstance(e, InstanceRetired) for e in rig.events))
            assert InstanceRetired(APP, old.instance_id, 1, 0) in rig.events
            text = rig.log.path.read_text()
            assert text.index("[v1.1] SIGTERM received: draining 1") < \
                text.index("[v1.1] work done") < text.index("[system] v1.1 retired")
            assert "s3cret-value" not in text
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
    run(body())


def test_failed_health_check_stops_new_and_keeps_old(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        sup = rig.supervisor(backend, health_timeout=5.0)
        try:
            await sup.deploy(APP, 1, rig.spec(1))
            rig.remember(sup)
            old = sup.endpoints(APP)[0]
            with pytest.raises(DeployError, match=r"v2\.1 timed out after 5 s") as caught:
                await sup.deploy(APP, 2, rig.spec(2, "--never-healthy"))
            assert isinstance(caught.value, InstanceFailedError)
            assert "[v2.1] listening on" in caught.value.output
            assert "[v1.1]" not in caught.value.output
            assert sup.endpoints(APP) == [old]
            assert await healthz(old) == 200
            assert [r["release"] for r in rig.records()] == [1]
            with pytest.raises(DeployError, match=r"v3\.1 exited with status 4$") as early:
                await sup.deploy(APP, 3, rig.spec(3, "--crash-after", "0", "--exit-status", "4"))
            assert isinstance(early.value, InstanceFailedError)
            assert "[v3.1] crashing with status 4" in early.value.output
            assert sup.endpoints(APP) == [old]
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
    run(body())


def test_stop_escalates_to_sigkill_and_is_idempotent(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        try:
            spec = rig.spec(1, "--ignore-term")(1, 0)
            ref = await backend.start(spec)
            assert ref.pid is not None
            rig.pids.add(ref.pid)
            await eventually(lambda: "[v1.1] listening" in rig.log.path.read_text())
            started = time.monotonic()
            await backend.stop(ref, grace=0.5)
            assert 0.5 <= time.monotonic() - started < 3.0
            assert await backend.wait(ref) == -9
            assert "[v1.1] SIGTERM ignored" in rig.log.path.read_text()
            await backend.stop(ref, grace=0.5)
            assert proc_stat(ref.pid) is None
            assert rig.records() == []
            assert await backend.list(APP) == []
        finally:
            await backend.aclose()
    run(body())


def test_list_drops_records_of_dead_or_recycled_pids(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        me = os.getpid()
        stat = proc_stat(me)
        assert stat is not None
        fake = {"id": "demo-v1.1-aaaaaa", "app": APP, "release": 1, "index": 1, "pid": me,
                "proc_start": stat[1] + 1, "host": "127.0.0.1", "port": 1, "started_at": 0.0,
                "argv0": "python"}
        (rig.layout.instances / "demo-v1.1-aaaaaa.json").write_text(json.dumps(fake))
        assert await backend.list() == []
        assert rig.records() == []
        await backend.aclose()
    run(body())


def test_second_daemon_adopts_running_instances(rig: Rig) -> None:
    async def body() -> None:
        first_backend = ProcessBackend(rig.layout)
        first = rig.supervisor(first_backend)
        await first.deploy(APP, 1, rig.spec(1), scale=2)
        rig.remember(first)
        before = sup_pids(first)
        await first.aclose()
        await first_backend.aclose()

        backend = ProcessBackend(rig.layout)
        sup = rig.supervisor(backend)
        try:
            await sup.adopt(APP, 1, rig.spec(1), 2)
            assert sup_pids(sup) == before                      # adopted, no duplicates
            assert len(rig.records()) == 2
            assert sup.status(APP).state == "running"
            victim = sup.endpoints(APP)[0]
            victim_pid = next(s.pid for s in sup.status(APP).instances
                              if s.id == victim.instance_id)
            assert victim_pid is not None
            os.kill(victim_pid, signal.SIGKILL)                  # not this backend's child
            await eventually(lambda: len(sup.endpoints(APP)) == 2
                             and victim not in sup.endpoints(APP))
            rig.remember(sup)
            assert any(isinstance(e, InstanceExited) and e.instance_id == victim.instance_id
                       for e in rig.events)
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
        assert rig.records() == []
    run(body())


def sup_pids(sup: Supervisor) -> list[int]:
    return sorted(s.pid for s in sup.status(APP).instances if s.pid is not None)


def test_logs_follow_across_a_crash_restart(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout)
        sup = rig.supervisor(backend)
        stop = asyncio.Event()
        seen: list[str] = []

        async def follow() -> None:
            async for line in rig.log.follow(5, stop, poll=0.05):
                seen.append(line)

        try:
            await sup.deploy(APP, 1, rig.spec(1))
            rig.remember(sup)
            follower = asyncio.create_task(follow())
            await eventually(lambda: any("v1 is live" in line for line in seen))
            first = sup.endpoints(APP)[0]
            pid = sup.status(APP).instances[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: bool(sup.endpoints(APP))
                             and sup.endpoints(APP)[0] != first)
            rig.remember(sup)
            port = sup.endpoints(APP)[0].port
            await eventually(lambda: any(f"[v1.1] listening on 127.0.0.1:{port}" in line
                                         for line in seen))
            stop.set()
            await asyncio.wait_for(follower, 2)
            assert any("[system] v1.1 exited with status -9" in line for line in seen)
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()
    run(body())


def test_follow_survives_rename_rotation(tmp_path: Path) -> None:
    async def body() -> None:
        log = AppLog(tmp_path, max_bytes=300, backups=2)
        log.system("before 0")
        stop = asyncio.Event()
        seen: list[str] = []

        async def follow() -> None:
            async for line in log.follow(1, stop, poll=0.02):
                seen.append(line.split(" ", 1)[1])

        follower = asyncio.create_task(follow())
        await eventually(lambda: seen == ["[system] before 0"])
        for i in range(30):
            log.system(f"line {i}")
            if i % 3 == 2:
                log.rotate_if_needed()
            await asyncio.sleep(0.01 if i % 2 else 0.05)
        await eventually(lambda: bool(seen) and seen[-1] == "[system] line 29")
        stop.set()
        await follower
        assert seen == ["[system] before 0"] + [f"[system] line {i}" for i in range(30)]
        assert (tmp_path / "app.log.2").exists()
        assert not (tmp_path / "app.log.3").exists()
        tail = [line.split(" ", 1)[1] for line in log.tail(8)]
        assert tail == [f"[system] line {i}" for i in range(22, 30)]
    asyncio.run(body())


def test_log_lines_have_utc_millisecond_timestamps(tmp_path: Path) -> None:
    log = AppLog(tmp_path)
    log.system("deploy v1 started\nsecond line")
    lines = log.tail(10)
    assert len(lines) == 2
    stamp, rest = lines[0].split(" ", 1)
    assert rest == "[system] deploy v1 started"
    assert len(stamp) == len("2026-11-26T10:00:00.123Z")
    assert stamp.endswith("Z")
    assert stamp[19] == "."
    assert (tmp_path / "app.log").stat().st_mode & 0o777 == 0o600
