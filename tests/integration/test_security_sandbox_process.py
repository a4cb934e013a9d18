"""The process runtime's bubblewrap sandbox with real child processes (no daemon).

A stand-in runner (tests/support/fakerunner.py) runs in the sandbox; the tests check
what a stop, a kill and an adoption after a daemon restart do to the whole process
tree (outer bwrap, the namespace's init, the crew), and what the crew runs as.
Each test kills what it started, by pid, at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crewship.config import Layout
from runtime.backend import InstanceRef, InstanceSpec, free_port
from runtime.channel import ChannelError, Peer, RunnerClient
from runtime.pidrecord import is_running, proc_stat
from runtime.process import ProcessBackend
from runtime.sandbox import Sandbox, SandboxUnavailableError, first_child

APP = "sandboxed"
SUPPORT = Path(__file__).resolve().parents[1] / "support"
VENV = Path(sys.prefix)
# fakerunner imports runtime.runner from the checkout (Python must list the dir: 0711 parents
# made by bwrap are not listable), so the test crew sees the checkout read-only.
REPO = Path(__file__).resolve().parents[2]
UID = 200_999


SECRET = "0123456789abcdef" * 2  # the channel secret these instances get on stdin


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = Layout(root / "data")
        self.layout.ensure()
        self.pids: set[int] = set()

    def spec(self, *extra: str) -> InstanceSpec:
        port = free_port()
        argv = [sys.executable, str(SUPPORT / "fakerunner.py"), "--port", str(port),
                "--instance", "v1.1", *extra]
        return InstanceSpec(APP, 1, 1, argv, {"PATH": "/usr/bin:/bin"}, SUPPORT, port,
                            readonly=(REPO, VENV), home=self.layout.app_home(APP),
                            uid=UID, secret=SECRET)  # on stdin, through bwrap

    def tree(self, ref: InstanceRef) -> tuple[int, int, int]:
        """(outer bwrap, init, crew) host pids of a started instance."""
        record = json.loads((self.layout.instances / f"{ref.id}.json").read_text())
        assert ref.pid is not None
        init = int(record["sandbox_init"][0])
        deadline = time.monotonic() + 10
        while (crew := first_child(init)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert crew is not None
        self.pids |= {ref.pid, init, crew}
        return ref.pid, init, crew

    def kill_all(self) -> None:
        for pid in self.pids:
            stat = proc_stat(pid)
            if stat is not None and stat[0] != "Z":
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.kill_all()


async def healthy(ref: InstanceRef, timeout: float = 20.0) -> None:
    """A signed /healthz answered with a valid proof: the secret crossed bwrap on stdin."""
    deadline = time.monotonic() + timeout
    client = RunnerClient(timeout=2)
    try:
        while time.monotonic() < deadline:
            try:
                reply = await client.call(Peer(ref.host, ref.port, SECRET), "GET", "/healthz")
                if reply.status == 200:
                    return
            except ChannelError:
                pass
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError("the sandboxed runner never became healthy")


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def gone(*pids: int, timeout: float = 5.0) -> bool:
    """Every pid exited (a zombie counts) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any((s := proc_stat(p)) is not None and s[0] != "Z" for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sandboxed_instance_stops_gracefully_and_runs_as_its_apps_uid(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout, sandbox=Sandbox())
        ref = await backend.start(rig.spec())
        outer, init, crew = rig.tree(ref)
        await healthy(ref)
        assert Path(f"/proc/{outer}/comm").read_text().strip() == "bwrap"
        if os.geteuid() == 0:
            assert uid_of(crew) == UID
            assert rig.layout.app_home(APP).stat().st_uid == UID
        # the crew has its own PID namespace: it is not pid `crew` in there
        assert os.readlink(f"/proc/{crew}/ns/pid") != os.readlink("/proc/self/ns/pid")
        started = time.monotonic()
        await backend.stop(ref, grace=10.0)
        assert time.monotonic() - started < 5.0, "SIGTERM did not reach the crew"
        assert await backend.wait(ref) == 0
        assert gone(outer, init, crew)
        await backend.aclose()
    asyncio.run(asyncio.wait_for(body(), 60))


def test_sandboxed_instance_is_adopted_after_a_restart_and_killed_whole(rig: Rig) -> None:
    async def body() -> None:
        first = ProcessBackend(rig.layout, sandbox=Sandbox())
        ref = await first.start(rig.spec("--ignore-term"))
        outer, init, crew = rig.tree(ref)
        await healthy(ref)
        await first.aclose()          # the daemon goes away; the instance stays
        assert is_running(outer, proc_stat(outer)[1])  # type: ignore[index]

        second = ProcessBackend(rig.layout, sandbox=Sandbox())
        adopted = await second.list(APP)
        assert [r.id for r in adopted] == [ref.id]
        await second.stop(adopted[0], grace=0.5)   # ignores SIGTERM: SIGKILL ends it all
        assert gone(outer, init, crew)
        assert list(rig.layout.instances.glob("*.json")) == []
        await second.aclose()
    asyncio.run(asyncio.wait_for(body(), 60))


def test_killing_the_outer_bwrap_takes_the_sandbox_with_it(rig: Rig) -> None:
    async def body() -> None:
        backend = ProcessBackend(rig.layout, sandbox=Sandbox())
        ref = await backend.start(rig.spec())
        outer, init, crew = rig.tree(ref)
        await healthy(ref)
        os.kill(outer, signal.SIGKILL)
        await asyncio.wait_for(backend.wait(ref), 10)
        assert gone(init, crew), "the crew outlived its bwrap"
        await backend.aclose()
    asyncio.run(asyncio.wait_for(body(), 60))


def test_the_real_bubblewrap_starts_here_and_a_failing_one_is_refused() -> None:
    Sandbox().check()
    with pytest.raises(SandboxUnavailableError, match="bubblewrap failed"):
        Sandbox(bwrap="/bin/false").check()
