"""The swarm runtime's crash-loop rule over task history (runtime/swarmwatch.py ``_observe``):
tasks as Swarm reports them (parsed by ``parse_task`` from the API's own shape) go through
the watcher's bookkeeping; the events it emits are what the daemon acts on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from crewship.config import Layout
from runtime.backoff import BackoffPolicy
from runtime.events import AppCrashed, InstanceExited, InstanceRetired, SupervisorEvent
from runtime.registry import Registry
from runtime.swarm import SwarmSupervisor
from runtime.swarmspec import Task


def task(ident: str, state: str, desired: str = "running", *, slot: int = 1,
         generation: str = "g1", code: int | None = None, age: float = 0.0) -> Task:
    return Task(id=ident, app="demo", slot=slot, node_id="n1", state=state, desired=desired,
                release=2, generation=generation, port=30000 + slot, secret_name="s",
                changed_at=time.time() - age, error="", exit_code=code, container_id="c")


def supervisor(tmp_path: Path, events: list[SupervisorEvent]) -> SwarmSupervisor:
    layout = Layout(tmp_path)
    layout.ensure()
    return SwarmSupervisor(layout, Registry("127.0.0.1:1"), on_event=events.append,
                           backoff=BackoffPolicy(max_crashes=3, window=600.0))


def test_crashes_of_the_current_rollout_make_the_app_crashed_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[SupervisorEvent], Any]:
        events: list[SupervisorEvent] = []
        sup = supervisor(tmp_path, events)
        st = sup._app("demo")
        st.release, st.scale, st.generation = 2, 1, "g1"
        sup._observe(st, [task("a", "running")])
        assert [e.instance_id for e in sup.endpoints("demo")] == ["demo-v2.1-a"]
        # the task is killed; Swarm starts another, which dies twice more
        sup._observe(st, [task("a", "failed", "shutdown", code=137), task("b", "running")])
        assert isinstance(events[0], InstanceExited)
        assert events[0].status == -9
        sup._observe(st, [task("a", "failed", "shutdown", code=137),
                          task("b", "failed", "shutdown", code=1), task("c", "starting")])
        assert st.state == "starting"
        assert not st.crashed
        sup._observe(st, [task("a", "failed", "shutdown", code=137),
                          task("b", "failed", "shutdown", code=1),
                          task("c", "failed", "shutdown", code=1)])
        assert st.crashed
        assert st.state == "crashed"
        assert sup.endpoints("demo") == []
        assert "3 crashes in 10 min" in (sup.crash_reason("demo") or "")
        sup._observe(st, [task("c", "failed", "shutdown", code=1)])  # seen again: no new event
        await asyncio.sleep(0)
        await sup.aclose()
        return events, st

    events, st = asyncio.run(scenario())
    assert [type(e) for e in events] == [InstanceExited, InstanceExited, AppCrashed]
    assert st.restarts == 3


def test_rollouts_retire_tasks_and_history_and_old_rollouts_are_not_crashes(
        tmp_path: Path) -> None:
    async def scenario() -> list[SupervisorEvent]:
        events: list[SupervisorEvent] = []
        sup = supervisor(tmp_path, events)
        st = sup._app("demo")
        st.release, st.scale, st.generation = 2, 1, "g2"
        # a restarted daemon's first look: old crashes in the history are counted, not reported
        sup._observe(st, [task("old", "failed", "shutdown", generation="g2", code=1, age=30),
                          task("older", "failed", "shutdown", generation="g1", code=1),
                          task("x", "running", generation="g2")])
        assert list(st.crashes)
        assert not events
        # a rolling update: x drains (still an endpoint for its runs), then completes
        sup._observe(st, [task("x", "running", "shutdown", generation="g2"),
                          task("y", "running", generation="g3")])
        assert sup.endpoint("demo", "demo-v2.1-x") is not None
        assert [e.instance_id for e in sup.endpoints("demo")] == ["demo-v2.1-y"]
        sup._observe(st, [task("x", "complete", "shutdown", generation="g2", code=0),
                          task("y", "running", generation="g3")])
        assert sup.endpoint("demo", "demo-v2.1-x") is None
        await sup.aclose()
        return events

    events = asyncio.run(scenario())
    assert [type(e) for e in events] == [InstanceRetired]
