"""Pid records: how the daemon writes down a process it started, to find it again.

Instances (runtime/process.py, ``instances/<id>.json``) and preloaded parents
(runtime/forkserver.py and runtime/preload.py, ``preload/<app>/<gen>.json``) outlive the
daemon; a restarted daemon adopts them from these records. A record is a small JSON
object written atomically (temp file + ``os.replace``) that holds, besides what its
owner adds (an instance's app, release and port; a parent's key):

- ``pid`` and ``proc_start``, the process's start time in clock ticks from
  ``/proc/<pid>/stat``: a recycled pid has another start time, so it is never taken
  (or signalled) for ours;
- ``sandbox_init``: under bubblewrap, ``[pid, start]`` of the sandbox's init (a stop
  reaches the crew inside through it, a kill ends the whole namespace), else null.

``PidRecord`` is those three fields; ``write_record``/``read_record`` the file;
``until_gone`` waits for such a process to exit (not necessarily our child).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crewship.log import get as get_logger

log = get_logger(__name__)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid`` from ``/proc``, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def proc_start(pid: int) -> int | None:
    """The start time of ``pid`` while it runs (not a zombie), else None."""
    stat = proc_stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else stat[1]


def is_running(pid: int, start: int) -> bool:
    """``pid`` is alive (not a zombie) and is the process that started at ``start``."""
    return proc_start(pid) == start


@dataclass(frozen=True)
class PidRecord:
    """Which process a record names: pid, start time, and its sandbox's init if any."""

    pid: int
    start: int
    init: tuple[int, int] | None = None

    def alive(self) -> bool:
        """The process itself still runs."""
        return is_running(self.pid, self.start)

    def sandbox_alive(self) -> bool:
        """Its sandbox's init still runs (the process itself may be gone)."""
        return self.init is not None and is_running(*self.init)

    def fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "proc_start": self.start,
                "sandbox_init": list(self.init) if self.init else None}

    @classmethod
    def of(cls, record: dict[str, Any]) -> PidRecord | None:
        """The pid fields of ``record``, or None when it has none. Preloaded parents'
        records written before the two shapes were one say ``start`` and ``init``."""
        start: Any = record.get("proc_start", record.get("start"))
        init: Any = record.get("sandbox_init", record.get("init"))
        try:
            return cls(int(record["pid"]), int(start),
                       (int(init[0]), int(init[1])) if init else None)
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a reader sees the old one or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, path)


def read_record(path: Path) -> tuple[dict[str, Any], PidRecord] | None:
    """The record at ``path`` and the process it names; None when it is gone, or
    unreadable or without pid fields (logged)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("pid_record_unreadable", path=str(path))
        return None
    proc = PidRecord.of(record) if isinstance(record, dict) else None
    if proc is None:
        log.warning("pid_record_unreadable", path=str(path))
        return None
    return record, proc


async def until_gone(pid: int, alive: Callable[[], bool], poll: float) -> None:
    """Until ``pid`` exits: a pidfd (it works for a process that is not our child), or
    where there is none (old kernel, seccomp) ``alive`` polled every ``poll`` seconds.
    ``alive`` says ``pid`` is still the recorded process: a pidfd may name a newer one."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd here: poll /proc
        while True:
            if not alive():
                return
            await asyncio.sleep(poll)
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _resolve, gone)
    try:
        if alive():
            await gone
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
