"""ProcessBackend: each instance is a child process in its own session.

- The argv runs with the spec's explicit environment, stdout and stderr appended
  (``O_APPEND``) to the app's log file, in a new session (``start_new_session``) so
  it outlives the daemon: a restarted daemon adopts it instead of starting a twin.
- Each instance is recorded in ``instances/<id>.json`` (a pid record, runtime/pidrecord.py:
  written atomically, its pid and the start time from ``/proc/<pid>/stat``), so a recycled
  pid is never mistaken for ours. The record goes when the instance is stopped or reaped.
- With a ``Sandbox`` (runtime/sandbox.py) the argv runs under bubblewrap; the recorded
  pid is then the outer ``bwrap`` and the record also names its namespace's init, so a
  stop reaches the crew inside and a kill ends the whole namespace, adopted or not.
- Exits are noticed through a pidfd (also for adopted processes, which are not our
  children), falling back to polling ``/proc``.
- With ``preload`` (runtime/preload.py) an instance whose spec allows it is forked from
  its app's preloaded parent instead (a cold start when that is not possible): the
  recorded pid is then the forked runner itself (its own session, inside the parent's
  sandbox), it gets the same relay, secret and environment, and its exit status comes
  from the parent (``preload`` in its record).

Starting the processes (the log relay, ``Popen`` under the sandbox, the secret down
stdin) is runtime/launch.py, shared with the preloaded parents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crewship.config import Layout
from crewship.log import get as get_logger
from runtime.backend import STATUS_UNKNOWN, BackendError, InstanceRef, InstanceSpec
from runtime.forkserver import Forked
from runtime.launch import reap_relay, spawn, start_relay
from runtime.pidrecord import (
    PidRecord,
    is_running,
    proc_stat,
    read_record,
    until_gone,
    write_record,
)
from runtime.preload import Preloader
from runtime.sandbox import Sandbox, first_child
from runtime.usage import Cgroups, process_tree, scan_proc

_SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_KILL_WAIT = 10.0
_RELAY_WAIT = 5.0
log = get_logger(__name__)


@dataclass
class _Tracked:
    ref: InstanceRef
    pid: int
    start: int
    popen: subprocess.Popen[bytes] | None = None
    # Sandboxed: pid is the outer bwrap; this is (pid, start) of its namespace's init.
    init: tuple[int, int] | None = None
    exited: asyncio.Future[int] | None = None
    watcher: asyncio.Task[None] | None = None
    relay: subprocess.Popen[bytes] | None = None   # its output's relay (our child)
    preload: str | None = None   # forked from this preloaded parent (<app>/<gen>)


class ProcessBackend:
    """Instances as local processes; see the module docstring."""

    def __init__(self, layout: Layout, poll_interval: float = 0.2,
                 sandbox: Sandbox | None = None, cgroups: Cgroups | None = None,
                 preload: bool = False) -> None:
        """``sandbox`` None runs crews unsandboxed (``--insecure-no-sandbox``, tests);
        ``cgroups`` (a usable cgroup v2 hierarchy) enforces the spec's memory and CPU limits,
        without it the daemon's usage watchdog kills an instance over its memory limit;
        ``preload`` forks instances from preloaded parents where their spec allows it."""
        # Also when off: the parents a previous daemon started are retired (prune_apps).
        self.preloader = Preloader(layout, sandbox)
        self.preload = preload
        self._layout = layout
        self.sandbox = sandbox
        self.cgroups = cgroups
        self._exit_reasons: dict[str, str] = {}   # instance id -> "memory_exceeded"
        self._poll = poll_interval
        self._tracked: dict[str, _Tracked] = {}
        self._statuses: OrderedDict[str, int] = OrderedDict()

    # -- start -------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> InstanceRef:
        if not spec.argv:
            raise BackendError(f"cannot start {spec.name}: empty command")
        ident = f"{spec.app}-{spec.name}-{secrets.token_hex(3)}"
        if not _SAFE_ID.match(ident):
            raise BackendError(f"cannot start {spec.name}: unsafe app name {spec.app!r}")
        relay, popen, forked, init = await self._launch(spec, ident)
        pid = forked.pid if forked is not None else popen.pid if popen is not None else -1
        if self.cgroups is not None and (spec.memory or spec.cpus):
            await asyncio.to_thread(self._confine, spec, ident, pid)
        stat = proc_stat(pid)
        ref = InstanceRef(id=ident, app=spec.app, release=spec.release, index=spec.index,
                          host=spec.host, port=spec.port, pid=pid, started_at=time.time())
        tracked = _Tracked(ref, pid, stat[1] if stat else -1, popen, init=init, relay=relay,
                           preload=forked.control if forked is not None else None)
        self._tracked[ident] = tracked
        try:
            self._write_record(tracked, spec.argv[0])
        except OSError:
            if forked is not None:
                forked.abandon()
            raise
        if forked is not None:
            forked.go()  # recorded: now it may run
        log.info("instance_started", app=spec.app, instance=ident, pid=pid,
                 forked=forked is not None)
        return ref

    async def _launch(self, spec: InstanceSpec, ident: str) -> tuple[
            subprocess.Popen[bytes], subprocess.Popen[bytes] | None, Forked | None,
            tuple[int, int] | None]:
        """(its log relay, the process or the fork, its sandbox's init) of a new instance."""
        relay: subprocess.Popen[bytes] | None = None
        popen: subprocess.Popen[bytes] | None = None
        forked: Forked | None = None
        init: tuple[int, int] | None = None
        try:
            relay, fd = await asyncio.to_thread(start_relay, self._layout.app_logs(spec.app),
                                                spec.name)
            try:
                if self.preload:
                    forked = await self.preloader.fork(spec, ident, fd)
                if forked is None:
                    popen, init = await asyncio.to_thread(self._spawn, spec, fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if relay is not None:
                reap_relay(relay, 2.0)  # its pipe has no writer left: it ends now
            raise BackendError(f"cannot start {spec.name}: {exc.strerror or exc}") from exc
        assert relay is not None
        return relay, popen, forked, init

    def _spawn(self, spec: InstanceSpec, log_fd: int
               ) -> tuple[subprocess.Popen[bytes], tuple[int, int] | None]:
        """Spawn, sandboxed when there is a sandbox; also (pid, start) of its init."""
        if self.sandbox is not None:
            self.sandbox.prepare(spec)
        popen, init = spawn(spec, log_fd, self.sandbox)
        stat = proc_stat(init) if init is not None else None
        return popen, ((init, stat[1]) if init is not None and stat else None)

    def _confine(self, spec: InstanceSpec, ident: str, pid: int) -> None:
        """Move the instance (all its processes so far; later ones inherit) into its group."""
        assert self.cgroups is not None
        try:
            group = self.cgroups.apply(spec.app, ident, pid, spec.memory, spec.cpus)
            for member in process_tree(pid, scan_proc()):
                with contextlib.suppress(OSError):
                    (group / "cgroup.procs").write_text(str(member))
        except OSError as exc:
            log.warning("cgroup_failed", app=spec.app, instance=ident, error=str(exc))

    def kill_for_memory(self, ref: InstanceRef) -> None:
        """The usage watchdog found ``ref`` over its memory limit: kill it, remember why."""
        tracked = self._find(ref)
        if tracked is None:
            return
        self._exit_reasons[ref.id] = "memory_exceeded"
        self._signal(tracked, signal.SIGKILL, group=True)

    def exit_reason(self, ref: InstanceRef) -> str | None:
        """``memory_exceeded`` when the instance was killed for its memory, else None."""
        return self._exit_reasons.pop(ref.id, None)

    def _record_path(self, ident: str) -> Path:
        return self._layout.instances / f"{ident}.json"

    def _write_record(self, tracked: _Tracked, argv0: str) -> None:
        ref = tracked.ref
        proc = PidRecord(tracked.pid, tracked.start, tracked.init)
        write_record(self._record_path(ref.id), {
            "id": ref.id, "app": ref.app, "release": ref.release, "index": ref.index,
            "host": ref.host, "port": ref.port, "started_at": ref.started_at,
            "argv0": argv0, "preload": tracked.preload, **proc.fields()})

    # -- stop and wait -----------------------------------------------------

    async def stop(self, ref: InstanceRef, grace: float) -> None:
        tracked = self._find(ref)
        if tracked is None:
            return  # gone and forgotten already: stopping is idempotent
        exited = self._exit_future(tracked)
        if exited.done():
            return
        self._signal(tracked, signal.SIGTERM, group=False)
        try:
            await asyncio.wait_for(asyncio.shield(exited), grace)
            return
        except TimeoutError:
            pass
        log.info("instance_killed", app=ref.app, instance=ref.id, grace=grace)
        self._signal(tracked, signal.SIGKILL, group=True)
        try:
            await asyncio.wait_for(asyncio.shield(exited), _KILL_WAIT)
        except TimeoutError:
            raise BackendError(f"{ref.name} (pid {tracked.pid}) survived SIGKILL") from None

    async def wait(self, ref: InstanceRef) -> int:
        tracked = self._find(ref)
        if tracked is None:
            if ref.id in self._statuses:
                return self._statuses[ref.id]
            raise BackendError(f"unknown instance {ref.id}")
        return await asyncio.shield(self._exit_future(tracked))

    def _find(self, ref: InstanceRef) -> _Tracked | None:
        tracked = self._tracked.get(ref.id)
        if tracked is not None:
            return tracked
        found = read_record(self._record_path(ref.id))
        if found is None or found[1].pid != ref.pid:
            return None
        record, proc = found
        tracked = _Tracked(ref, proc.pid, proc.start, init=proc.init,
                           preload=record.get("preload"))
        self._tracked[ref.id] = tracked
        return tracked

    def _signal(self, tracked: _Tracked, signum: signal.Signals, *, group: bool) -> None:
        if tracked.popen is None and not is_running(tracked.pid, tracked.start):
            return  # not ours (any more): never signal a recycled pid
        if tracked.init is not None:  # bwrap forwards no signals: reach inside
            _signal_sandbox(tracked.init, signum, whole=group)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(tracked.pid, signum)
            elif tracked.init is None:
                os.kill(tracked.pid, signum)

    def _exit_future(self, tracked: _Tracked) -> asyncio.Future[int]:
        if tracked.exited is None:
            tracked.exited = asyncio.get_running_loop().create_future()
            tracked.watcher = asyncio.create_task(self._watch(tracked),
                                                  name=f"watch-{tracked.ref.id}")
        return tracked.exited

    async def _watch(self, tracked: _Tracked) -> None:
        await until_gone(tracked.pid, lambda: self._alive(tracked), self._poll)
        status = await self._reap(tracked)
        if tracked.relay is not None:  # its last lines are in the log before anyone hears
            await asyncio.to_thread(reap_relay, tracked.relay, _RELAY_WAIT)
        if self.cgroups is not None:
            if self.cgroups.oom_killed(tracked.ref.app, tracked.ref.id):
                self._exit_reasons[tracked.ref.id] = "memory_exceeded"
            self.cgroups.remove(tracked.ref.app, tracked.ref.id)
        self._record_path(tracked.ref.id).unlink(missing_ok=True)
        self._tracked.pop(tracked.ref.id, None)
        self._statuses[tracked.ref.id] = status
        while len(self._statuses) > 1024:
            self._statuses.popitem(last=False)
        log.info("instance_exited", app=tracked.ref.app, instance=tracked.ref.id,
                 status=status)
        assert tracked.exited is not None
        if not tracked.exited.done():
            tracked.exited.set_result(status)

    def _alive(self, tracked: _Tracked) -> bool:
        # /proc, not waitpid: an exited child stays a zombie (its pid ours) until _reap
        if tracked.popen is not None and tracked.popen.returncode is not None:
            return False
        return is_running(tracked.pid, tracked.start)

    async def _reap(self, tracked: _Tracked) -> int:
        """The exit status; also SIGKILLs what is left of the instance's group (and of
        its sandbox, should the outer bwrap have been killed on its own)."""
        if tracked.init is not None:
            _signal_sandbox(tracked.init, signal.SIGKILL, whole=True)
        if tracked.preload is not None:
            status = await self.preloader.exit_status(tracked.preload, tracked.ref.id)
            return STATUS_UNKNOWN if status is None else status
        if tracked.popen is None:
            return _reap_foreign(tracked)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(tracked.pid, signal.SIGKILL)  # the leader is a zombie: pid still ours
        for _ in range(100):
            code = tracked.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.01)
        return STATUS_UNKNOWN

    # -- list and close ----------------------------------------------------

    async def list(self, app: str | None = None) -> list[InstanceRef]:
        refs = []
        for path in sorted(self._layout.instances.glob("*.json")):
            found = read_record(path)
            if found is None or (app is not None and found[0]["app"] != app):
                continue
            record, proc = found
            if not proc.alive():
                path.unlink(missing_ok=True)
                continue
            ref = _ref_from(record)
            self._tracked.setdefault(ref.id, _Tracked(ref, proc.pid, proc.start,
                                                      init=proc.init,
                                                      preload=record.get("preload")))
            refs.append(ref)
        return refs

    def stop_app(self, app: str) -> None:
        """``app`` is stopped: its preloaded parent goes once its instances have."""
        self.preloader.stop_app(app)

    def prune_apps(self, keep: set[str]) -> None:
        """After adoption: the preloaded parents of apps nobody runs go."""
        self.preloader.prune(keep if self.preload else set())

    async def aclose(self) -> None:
        """Stop watching; the instances keep running for the next daemon to adopt."""
        await self.preloader.aclose()
        tasks = [t.watcher for t in self._tracked.values() if t.watcher is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tracked in self._tracked.values():
            if tracked.exited is not None and not tracked.exited.done():
                tracked.exited.cancel()
        self._tracked.clear()


def _signal_sandbox(init: tuple[int, int], signum: signal.Signals, *, whole: bool) -> None:
    """``whole``: the namespace's init (the kernel then kills everything inside); else
    the crew itself, the init's child (an init ignores what it has no handler for)."""
    if not is_running(*init):
        return
    target = init[0] if whole else first_child(init[0])
    if target is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signum)


def _reap_foreign(tracked: _Tracked) -> int:
    """An adopted instance: its status is known only if it happens to be our child."""
    if proc_stat(tracked.pid) != ("Z", tracked.start):
        return STATUS_UNKNOWN  # reaped by someone else; never waitpid a recycled pid
    try:
        pid, status = os.waitpid(tracked.pid, os.WNOHANG)
    except ChildProcessError:
        return STATUS_UNKNOWN
    return os.waitstatus_to_exitcode(status) if pid else STATUS_UNKNOWN


def _ref_from(record: dict[str, Any]) -> InstanceRef:
    return InstanceRef(id=str(record["id"]), app=str(record["app"]),
                       release=int(record["release"]), index=int(record["index"]),
                       host=str(record["host"]), port=int(record["port"]),
                       pid=int(record["pid"]), started_at=float(record["started_at"]))
