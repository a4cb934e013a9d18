"""Supervisor policy against the FakeBackend: swap order, failed checks, crash
restarts with backoff, crash loops, scaling, adoption. Short timings throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Layout
from crewship.errors import DeployError
from crewship.reporter import LineReporter
from runtime.backend import InstanceSpec
from runtime.backoff import BackoffPolicy
from runtime.events import (
    AppCrashed,
    InstanceExited,
    InstanceFailedError,
    InstanceRetired,
    MakeSpec,
    SupervisorEvent,
)
from runtime.supervisor import Supervisor
from tests.support.fakebackend import Behaviour, FakeBackend

APP = "demo"


def spec_factory(release: int, cwd: Path) -> MakeSpec:
    def make(index: int, port: int) -> InstanceSpec:
        return InstanceSpec(APP, release, index, ["runner", "--instance", f"v{release}.{index}"],
                            {"SECRET": "x"}, cwd, port)
    return make


class Rig:
    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.layout = Layout(tmp_path)
        self.backend = FakeBackend(self.layout.logs)
        self.events: list[SupervisorEvent] = []
        settings: dict[str, Any] = dict(
            health_timeout=0.3, drain_timeout=0.2, health_interval=0.01, stop_grace=0.05,
            probe=self.backend.probe, on_event=self.events.append,
            backoff=BackoffPolicy(base=0.02, cap=0.1))
        settings.update(options)
        self.sup = Supervisor(self.backend, self.layout, **settings)
        self.lines: list[str] = []
        self.report = LineReporter(self.lines.append)
        self.cwd = tmp_path

    async def deploy(self, release: int, scale: int = 1) -> None:
        await self.sup.deploy(APP, release, spec_factory(release, self.cwd), scale, self.report)

    def log(self) -> str:
        return (self.layout.app_logs(APP) / "app.log").read_text()

    def live_names(self) -> list[str]:
        names = {i.ref.id: i.ref.name for i in self.backend.instances.values()}
        return [names[e.instance_id] for e in self.sup.endpoints(APP)]


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(tmp_path: Path, body: Callable[[Rig], Coroutine[Any, Any, None]],
        **options: Any) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, **options)
        try:
            await body(rig)
        finally:
            await rig.sup.aclose(stop_instances=True)
    asyncio.run(main())


def test_deploy_starts_checks_switches_then_retires_old(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        assert rig.live_names() == ["v1.1"]
        seen_at_stop: list[list[str]] = []
        rig.backend.on_stop = lambda ref: seen_at_stop.append(rig.live_names())
        rig.lines.clear()
        await rig.deploy(2)
        assert rig.live_names() == ["v2.1"]
        await eventually(lambda: any(isinstance(e, InstanceRetired) for e in rig.events))
        tail = rig.backend.events[-3:]
        assert tail == [("start", "v2.1"), ("healthy", "v2.1"), ("stop", "v1.1")]
        assert seen_at_stop == [["v2.1"]]          # switched before the old one stopped
        assert rig.lines == ["-----> Starting v2", "-----> Health check passed"]
        retired = [e for e in rig.events if isinstance(e, InstanceRetired)]
        assert [e.release for e in retired] == [1]
        old = next(i for i in rig.backend.instances.values() if i.ref.release == 1)
        assert old.stop_grace == 0.2                 # drained with drain_timeout
        log = rig.log()
        assert "[system] deploy v2 started" in log
        assert "[system] v2 is live" in log
        assert "SECRET" not in log
        status = rig.sup.status(APP)
        assert (status.state, status.release, status.scale) == ("running", 2, 1)
    run(tmp_path, body)


def test_failed_health_check_keeps_old_release_serving(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        old_endpoints = rig.sup.endpoints(APP)
        rig.backend.behaviour = lambda spec: Behaviour(
            healthy=spec.release != 2, output=["loading crew", "ImportError: no module x"])
        with pytest.raises(DeployError) as caught:
            await rig.deploy(2)
        error = caught.value
        assert isinstance(error, InstanceFailedError)
        assert str(error) == "health check failed: v2.1 timed out after 0.3 s"
        assert "[v2.1] ImportError: no module x" in error.output
        assert "[v1.1]" not in error.output
        assert "[system]" not in error.output
        assert rig.sup.endpoints(APP) == old_endpoints
        assert rig.backend.names("stop") == ["v2.1"]
        assert [i.ref.name for i in rig.backend.alive()] == ["v1.1"]
        status = rig.sup.status(APP)
        assert (status.state, status.release) == ("running", 1)
        assert "deploy v2 failed" in rig.log()
    run(tmp_path, body)


def test_instance_exiting_early_fails_at_once(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        rig.backend.behaviour = lambda spec: Behaviour(
            exit_status=1 if spec.release == 2 else None)
        started = time.monotonic()
        with pytest.raises(DeployError, match=r"v2\.1 exited with status 1$"):
            await rig.deploy(2)
        assert time.monotonic() - started < 1.0
        assert rig.live_names() == ["v1.1"]
    run(tmp_path, body, health_timeout=30.0)


def test_failed_first_deploy_leaves_app_idle(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.behaviour = lambda spec: Behaviour(exit_status=3)
        with pytest.raises(DeployError):
            await rig.deploy(1)
        assert rig.sup.status(APP).state == "idle"
        assert rig.sup.endpoints(APP) == []
    run(tmp_path, body)


def test_failure_of_one_new_instance_stops_its_healthy_siblings(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.backend.behaviour = lambda spec: Behaviour(exit_status=1 if spec.index == 2 else None)
        with pytest.raises(DeployError, match=r"v1\.2 exited"):
            await rig.deploy(1, scale=2)
        assert rig.backend.alive() == []
    run(tmp_path, body)


def test_crash_is_reported_and_restarted_with_backoff(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        first = rig.sup.endpoints(APP)[0]
        rig.backend.crash(first.instance_id, -9)
        await eventually(lambda: bool(rig.sup.endpoints(APP))
                         and rig.sup.endpoints(APP)[0].instance_id != first.instance_id)
        assert InstanceExited(APP, first.instance_id, 1, -9) in rig.events
        second = rig.sup.endpoints(APP)[0]
        assert second.port != first.port
        rig.backend.crash(second.instance_id, 2)
        await eventually(lambda: bool(rig.sup.endpoints(APP))
                         and rig.sup.endpoints(APP)[0].instance_id != second.instance_id)
        log = rig.log()
        assert "[system] v1.1 exited with status -9, restarting in 0s" in log
        assert "[system] v1.1 exited with status 2, restarting in 0.02s" in log
        status = rig.sup.status(APP)
        assert status.state == "running"
        assert status.restarts == 2
        assert status.instances[0].restarts == 2
    run(tmp_path, body)


def test_crash_loop_marks_app_crashed_until_a_deploy(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        rig.backend.behaviour = lambda spec: Behaviour(exit_status=1)   # every restart dies
        rig.backend.crash(rig.sup.endpoints(APP)[0].instance_id)
        await eventually(lambda: rig.sup.status(APP).state == "crashed")
        crashed = [e for e in rig.events if isinstance(e, AppCrashed)]
        assert crashed == [AppCrashed(APP, 1, 4)]
        assert "[system] crashed: 4 crashes in 1 min, not restarting" in rig.log()
        assert "failed to start (exited with status 1), restarting in" in rig.log()
        assert rig.sup.endpoints(APP) == []
        assert [(i.id, i.state) for i in rig.sup.status(APP).instances] == [("v1.1", "crashed")]
        starts = len(rig.backend.names("start"))
        await asyncio.sleep(0.2)
        assert len(rig.backend.names("start")) == starts   # no more restarts
        rig.backend.behaviour = lambda spec: Behaviour()
        await rig.deploy(2)
        status = rig.sup.status(APP)
        assert (status.state, status.release, status.restarts) == ("running", 2, 0)
    run(tmp_path, body, backoff=BackoffPolicy(base=0.01, cap=0.02, max_crashes=4, window=60))


def test_deploy_during_backoff_cancels_the_pending_restart(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        rig.backend.behaviour = lambda spec: Behaviour(exit_status=1 if spec.release == 1
                                                       else None)
        rig.backend.crash(rig.sup.endpoints(APP)[0].instance_id)
        await eventually(lambda: [i.state for i in rig.sup.status(APP).instances]
                         == ["restarting"])
        pending = rig.sup.status(APP).instances[0].next_restart_at
        assert pending is not None
        assert pending > time.time()
        await rig.deploy(2)
        await asyncio.sleep(0.3)
        assert [i.ref.name for i in rig.backend.alive()] == ["v2.1"]
        assert rig.sup.status(APP).state == "running"
    run(tmp_path, body, backoff=BackoffPolicy(first_delay=0.1, base=0.1))


def test_scale_up_down_to_zero_and_back(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1)
        await rig.sup.scale(APP, 3, rig.report)
        assert rig.live_names() == ["v1.1", "v1.2", "v1.3"]
        assert rig.sup.status(APP).scale == 3
        first = rig.sup.endpoints(APP)[0]
        await rig.sup.scale(APP, 1, rig.report)
        assert rig.live_names() == ["v1.1"]
        assert rig.sup.endpoints(APP)[0] == first               # index 1 untouched
        await eventually(lambda: [i.ref.name for i in rig.backend.alive()] == ["v1.1"])
        await rig.sup.scale(APP, 0, rig.report)
        assert rig.sup.endpoints(APP) == []
        assert rig.sup.status(APP).state == "stopped"
        await eventually(lambda: rig.backend.alive() == [])
        await rig.sup.scale(APP, 2, rig.report)
        assert rig.live_names() == ["v1.1", "v1.2"]
        assert rig.sup.status(APP).state == "running"
        assert "[system] scaled to 0" in rig.log()
    run(tmp_path, body)


def test_restart_swaps_in_fresh_instances_of_the_same_release(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(4, scale=2)
        before = {e.instance_id for e in rig.sup.endpoints(APP)}
        await rig.sup.restart(APP, rig.report)
        after = {e.instance_id for e in rig.sup.endpoints(APP)}
        assert len(after) == 2
        assert not before & after
        assert rig.sup.status(APP).release == 4
    run(tmp_path, body)


def test_adopt_takes_over_running_instances_and_stops_strays(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        kept = rig.backend.add(APP, 3, 1, 41001)
        stray = rig.backend.add(APP, 2, 1, 41002)
        other = rig.backend.add("other", 1, 1, 41003)
        await rig.sup.adopt(APP, 3, spec_factory(3, rig.cwd), 2)
        ids = [e.instance_id for e in rig.sup.endpoints(APP)]
        assert ids[0] == kept.ref.id
        assert rig.live_names() == ["v3.1", "v3.2"]
        assert rig.backend.names("start") == ["v3.2"]          # no duplicate of v3.1
        await eventually(lambda: not stray.alive)
        assert other.alive
        assert rig.sup.status(APP).state == "running"
        rig.backend.crash(kept.ref.id)                          # adopted ones are supervised
        await eventually(lambda: kept.ref.id not in
                         [e.instance_id for e in rig.sup.endpoints(APP)]
                         and len(rig.sup.endpoints(APP)) == 2)
    run(tmp_path, body)


def test_adopt_replaces_an_unhealthy_instance(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        sick = rig.backend.add(APP, 3, 1, 41001, Behaviour(healthy=False))
        await rig.sup.adopt(APP, 3, spec_factory(3, rig.cwd), 1)
        assert rig.live_names() == ["v3.1"]
        assert rig.sup.endpoints(APP)[0].instance_id != sick.ref.id
        await eventually(lambda: not sick.alive)
    run(tmp_path, body)


def test_adopt_keeps_a_crashed_app_crashed_until_scaled(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        leftover = rig.backend.add(APP, 3, 1, 41001)
        await rig.sup.adopt(APP, 3, spec_factory(3, rig.cwd), 1, crashed=True)
        assert rig.sup.status(APP).state == "crashed"
        assert rig.backend.names("start") == []                  # not silently restarted
        await eventually(lambda: not leftover.alive)
        await eventually(lambda: [i.state for i in rig.sup.status(APP).instances] == ["crashed"])
        assert "still crashed after the server restart" in rig.log()
        await rig.sup.scale(APP, 1, rig.report)                   # an operator's scale clears it
        assert rig.sup.status(APP).state == "running"
        assert rig.live_names() == ["v3.1"]
    run(tmp_path, body)


def test_adopt_at_scale_0_reads_stopped_not_idle(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.sup.adopt(APP, 2, spec_factory(2, rig.cwd), 0)
        assert rig.sup.status(APP).state == "stopped"
        assert rig.sup.status(APP).release == 2
        assert rig.backend.names("start") == []
    run(tmp_path, body)


def test_stop_orphans_stops_what_no_supervised_app_owns(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        kept = rig.backend.add(APP, 1, 1, 41001)
        orphan = rig.backend.add("destroyed", 4, 1, 41002)
        await rig.sup.adopt(APP, 1, spec_factory(1, rig.cwd), 1)
        stopped = await rig.sup.stop_orphans()
        assert stopped == [orphan.ref.id]
        assert not orphan.alive
        assert kept.alive
        assert await rig.sup.stop_orphans() == []                 # nothing left
    run(tmp_path, body)


def test_stop_stops_everything_and_forgets_the_app(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1, scale=2)
        await rig.sup.stop(APP)
        assert rig.backend.alive() == []
        assert rig.sup.status(APP).state == "idle"
        assert len([e for e in rig.events if isinstance(e, InstanceRetired)]) == 2
        await rig.sup.stop(APP)                                   # idempotent
    run(tmp_path, body)


def test_aclose_leaves_instances_running_for_adoption(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.deploy(1, scale=2)
        await rig.sup.aclose()
        assert len(rig.backend.alive()) == 2
        assert rig.backend.names("stop") == []
        for inst in rig.backend.alive():
            rig.backend.crash(inst.ref.id)
        await asyncio.sleep(0.05)
        assert rig.events == []                                   # nobody watches any more
    run(tmp_path, body)


def test_status_of_an_unknown_app_is_idle(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        status = rig.sup.status("nothing")
        assert (status.state, status.release, status.scale, status.instances) == (
            "idle", None, 0, [])
        assert rig.sup.endpoints("nothing") == []
    run(tmp_path, body)
