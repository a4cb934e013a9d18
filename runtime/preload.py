"""Preloaded parents (issue 15): instances forked from a process that imported crewai once.

Per app and dependency environment the process runtime keeps one long-lived parent
(``crewship_runner preload``, runtime/runner/preload.py) inside the app's sandbox: the same
bubblewrap mounts, uid, HOME and base environment as an instance of that app, with
``releases/<app>`` (so it can fork every release of the app that uses its environment)
instead of one release, and its control directory ``preload/<app>/<gen>/`` (socket,
``state.json``, ``exits/``) bound writable. It is never shared between apps. Each start,
restart and crash replacement of an instance asks it to fork (``Preloader.fork``); the
child gets the instance's secret pipe, log pipe, environment, working directory and
``sys.path`` exactly as a cold start and loads only the crew's own code.

- The parent's key covers the environment, the interpreter, the runner's files, the base
  environment and the uid: a change (a new ``uv.lock``, a crewship upgrade) retires the
  old parent (it stops forking, exits after its last child) and starts a new one, which
  pays one cold import.
- Falling back to a cold start, with the reason in the app's log (once per key) and in
  structlog: the parent could not import crewai, it or a fork request found more than one
  thread, it died three times within a minute, or a fork failed.
- Each parent is recorded (``preload/<app>/<gen>.json``) so a restarted daemon reuses it;
  forked instances are recorded by the process backend like any other (pid, start time)
  and adopted the same way. A parent killed with ``kill -9`` leaves its children serving
  (the sandbox's init reaps them) and is replaced at once.
- Both ends authenticate: the parent serves only the daemon's uid (``SO_PEERCRED``), the
  daemon talks only to a socket whose peer is the recorded parent process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from crewship.config import Layout
from crewship.errors import CrewshipError
from crewship.log import get as get_logger
from runtime.backend import InstanceSpec
from runtime.forkserver import (
    STATE_NAME,
    Forked,
    Parent,
    PreloadError,
    ping,
    read_small,
    request_fork,
    spawn_parent,
    take_exit_status,
)
from runtime.launch import start_relay
from runtime.logs import AppLog
from runtime.pidrecord import PidRecord, is_running, read_record, until_gone
from runtime.sandbox import Sandbox

log = get_logger(__name__)

READY_TIMEOUT = 180.0      # a parent importing crewai on a busy machine
EXIT_STATUS_WAIT = 1.0     # how long a reaped instance's status may take to appear
DEATHS_ALLOWED = 3         # parent deaths within DEATH_WINDOW before giving up on its key
DEATH_WINDOW = 60.0


class Preloader:
    """The process runtime's preloaded parents; see the module docstring."""

    def __init__(self, layout: Layout, sandbox: Sandbox | None, *,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self._layout = layout
        self._root = layout.root / "preload"
        self.sandbox = sandbox
        self._ready_timeout = ready_timeout
        self._uid = os.getuid()
        self._current: dict[str, Parent] = {}
        self._retired: list[Parent] = []
        self._refused: dict[str, str] = {}
        self._deaths: dict[str, list[float]] = {}
        self._last: dict[str, InstanceSpec] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: list[subprocess.Popen[bytes]] = []   # the parents' log relays (to reap)

    def _logs(self, app: str) -> AppLog:
        return AppLog(self._layout.app_logs(app))

    # -- forking -----------------------------------------------------------

    async def fork(self, spec: InstanceSpec, ident: str, log_fd: int) -> Forked | None:
        """Fork ``spec`` from the app's parent; None: start it cold (the reason is logged)."""
        if spec.preload is None:
            return None
        key = self.key(spec)
        if key in self._refused:
            return None
        self._last[spec.app] = dataclasses.replace(spec, secret="")  # to replace a dead parent
        try:
            async with self._locks.setdefault(spec.app, asyncio.Lock()):
                parent = await self._parent_for(spec, key)
        except (OSError, ValueError, CrewshipError) as exc:
            self._refuse(spec.app, key, f"no preloaded parent: {exc}")
            return None
        if parent is None:
            return None
        try:
            return await asyncio.to_thread(request_fork, parent, spec, self.child_env(spec),
                                           ident, log_fd)
        except (OSError, ValueError, PreloadError) as exc:
            if parent.alive():  # it refused (threads) or answered nonsense: not again
                self._refuse(spec.app, key, f"fork failed: {exc}")
                self._retire(parent)
            else:
                log.warning("preload_fork_failed", app=spec.app, error=str(exc))
            return None

    def key(self, spec: InstanceSpec) -> str:
        pre = spec.preload
        assert pre is not None
        runner = sorted((p.name, p.read_bytes()) for p in pre.runner.glob("*.py"))
        digest = hashlib.sha256()
        digest.update(json.dumps([pre.key, pre.python, str(pre.releases), str(pre.env_path),
                                  sorted(pre.env.items()), spec.uid, str(spec.home)]).encode())
        for name, data in runner:
            digest.update(name.encode() + b"\0" + data)
        return digest.hexdigest()[:24]

    def child_env(self, spec: InstanceSpec) -> dict[str, str]:
        """The instance's environment as bwrap would give a cold start of it."""
        env = dict(spec.env)
        if self.sandbox is not None:
            env.update(self.sandbox.setenv(spec))
            env["PWD"] = str(spec.cwd)  # bwrap sets it with --chdir
        return env

    # -- exit statuses -------------------------------------------------------

    async def exit_status(self, control: str, ident: str) -> int | None:
        """The status the parent recorded for ``ident``, if it is there to record it."""
        record = self._record(self._root / f"{control}.json")
        deadline = time.monotonic() + EXIT_STATUS_WAIT
        while True:
            status = await asyncio.to_thread(take_exit_status, self._root / control, ident)
            if status is not None:
                return status
            parent_alive = record is not None and record[1].alive()
            if not parent_alive or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    # -- parents -------------------------------------------------------------

    async def _parent_for(self, spec: InstanceSpec, key: str) -> Parent | None:
        app = spec.app
        current = self._current.get(app)
        if current is not None and (current.key != key or not current.alive()):
            self._retire(current)
            current = None
        if current is None:
            current = await asyncio.to_thread(self._adopt, app, key)
        if current is None:
            current = await self._start(spec, key)
        if current is not None:
            self._current[app] = current
            self._watch(current)
        return current

    def _adopt(self, app: str, key: str) -> Parent | None:
        """A parent a previous daemon started for ``app`` and ``key``; others are retired."""
        found = None
        for path in sorted((self._root / app).glob("*.json")):
            entry = self._record(path)
            if entry is None:
                continue
            record, proc = entry
            parent = Parent(app, str(record["key"]), path.stem, path.with_suffix(""),
                            proc.pid, proc.start, proc.init)
            if not parent.alive():
                continue
            if found is None and parent.key == key and ping(parent):
                found = parent
            else:
                self._retire(parent)
        self._sweep(app)
        if found is not None:
            log.info("preload_adopted", app=app, parent=found.name, pid=found.pid)
        return found

    async def _start(self, spec: InstanceSpec, key: str) -> Parent | None:
        pre = spec.preload
        assert pre is not None
        gen = secrets.token_hex(4)
        control = self._root / spec.app / gen
        app_log = self._logs(spec.app)
        started = time.monotonic()
        try:
            parent = await asyncio.to_thread(self._spawn, spec, key, control)
        except OSError as exc:
            self._refuse(spec.app, key, f"the preloaded parent could not start: {exc}")
            return None
        state: dict[str, Any] | None = None
        deadline = time.monotonic() + self._ready_timeout
        while state is None and parent.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            state = await asyncio.to_thread(read_small, control / STATE_NAME)
        if state is None or not state.get("ok"):
            why = (state or {}).get("reason") or ("it exited while importing" if not parent.alive()
                                                  else "it did not get ready in time")
            self._refuse(spec.app, key, f"no preloaded parent: {why}")
            self._retire(parent)
            return None
        took = time.monotonic() - started
        app_log.system(f"preloaded runtime ready for env {pre.key[:12]} in {took:.1f}s: "
                       "instances are forked from it")
        log.info("preload_started", app=spec.app, parent=parent.name, pid=parent.pid,
                 env=pre.key, duration_ms=round(took * 1000))
        return parent

    def _spawn(self, spec: InstanceSpec, key: str, control: Path) -> Parent:
        relay, fd = start_relay(self._layout.app_logs(spec.app), "preload")
        self._relays = [r for r in self._relays if r.poll() is None] + [relay]
        try:
            return spawn_parent(spec, key, control, self.sandbox, fd)
        finally:
            os.close(fd)

    def _refuse(self, app: str, key: str, reason: str) -> None:
        """Cold starts from now on for ``key``, said once in the app's log."""
        if key not in self._refused:
            self._logs(app).system(f"instances start cold: {reason}")
        self._refused[key] = reason
        log.warning("preload_refused", app=app, key=key, reason=reason)

    def _retire(self, parent: Parent) -> None:
        """Stop it forking: it exits once its last instance has (its children live on)."""
        parent.retired = True
        if self._current.get(parent.app) is parent:
            del self._current[parent.app]
        if parent.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(parent.pid, 15)
            self._retired.append(parent)
        elif parent.outer is not None:
            parent.outer.poll()  # reaped if it already exited
        log.info("preload_retired", app=parent.app, parent=parent.name)

    # -- watching ------------------------------------------------------------

    def _watch(self, parent: Parent) -> None:
        if parent.watcher is None:
            parent.watcher = self._spawn_task(self._watch_parent(parent))

    async def _watch_parent(self, parent: Parent) -> None:
        """A parent that dies unretired (``kill -9``) is replaced at once."""
        while parent.alive():
            await until_gone(parent.pid, parent.alive, 0.5)
        if parent.outer is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(parent.outer.wait, 5.0)
        if parent.retired or self._current.get(parent.app) is not parent:
            for _ in range(50):  # its sandbox ends with its last process: then its dir goes
                if parent.init is None or not is_running(*parent.init):
                    break
                await asyncio.sleep(0.05)
            self._sweep(parent.app)
            return
        del self._current[parent.app]
        now = time.monotonic()
        deaths = [t for t in self._deaths.get(parent.key, []) if now - t < DEATH_WINDOW]
        self._deaths[parent.key] = [*deaths, now]
        spec = self._last.get(parent.app)
        self._logs(parent.app).system("the preloaded runtime exited; its instances keep "
                                      "running, starting a new one")
        log.warning("preload_parent_died", app=parent.app, parent=parent.name)
        if len(deaths) + 1 >= DEATHS_ALLOWED:
            self._refuse(parent.app, parent.key,
                         f"the preloaded runtime died {DEATHS_ALLOWED} times within "
                         f"{DEATH_WINDOW:g}s")
        elif spec is not None and spec.preload is not None:
            async with self._locks.setdefault(parent.app, asyncio.Lock()):
                await self._parent_for(spec, parent.key)

    def _spawn_task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- apps going away -----------------------------------------------------

    def stop_app(self, app: str) -> None:
        """The app is stopped or destroyed: retire its parents (after their instances)."""
        self._last.pop(app, None)
        current = self._current.pop(app, None)
        if current is not None:
            self._retire(current)
        for path in (self._root / app).glob("*.json"):
            found = self._record(path)
            if found is not None and found[1].alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(found[1].pid, 15)
        self._sweep(app)

    def prune(self, keep: set[str]) -> None:
        """After a daemon restart: retire the parents of apps nobody runs, sweep the dead."""
        if not self._root.is_dir():
            return
        for entry in self._root.iterdir():
            if entry.is_dir() and entry.name not in keep:
                self.stop_app(entry.name)
            elif entry.is_dir():
                self._sweep(entry.name)

    def _sweep(self, app: str) -> None:
        """Remove the records and control dirs of parents whose sandbox is gone."""
        folder = self._root / app
        for path in folder.glob("*.json"):
            found = self._record(path)
            live = found is not None and (found[1].alive() or found[1].sandbox_alive())
            if not live:
                shutil.rmtree(path.with_suffix(""), ignore_errors=True)
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
        self._retired = [p for p in self._retired if p.alive()]

    def _record(self, path: Path) -> tuple[dict[str, Any], PidRecord] | None:
        """A parent's pid record (runtime/pidrecord.py), which also names its key."""
        found = read_record(path)
        return found if found is not None and "key" in found[0] else None

    async def aclose(self) -> None:
        """Stop watching; the parents keep running for the next daemon."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
