"""What each instance uses right now: memory, CPU share, open files, threads, uptime.

Mechanism only (the daemon's sampler in crewship/service/usage.py decides when to look
and what to keep):

- ``ProcessSampler``: the process runtime. One pass over ``/proc`` per sample; an
  instance is the tree under its recorded pid (the outer ``bwrap`` when sandboxed, so
  the namespace's init and the crew inside are counted too). Memory is the sum of the
  tree's resident set sizes, CPU the share of one core since the previous sample.
- ``DockerSampler``: the docker runtime, the container stats API (blocking: call it
  in a thread). Memory is usage minus page cache, as ``docker stats`` shows it;
  threads are the container's pids; open files are not reported (None).
- ``Cgroups``: limits under the process runtime when the daemon may create cgroup v2
  groups (``crewship/<app>/<instance>`` with ``memory.max`` and ``cpu.max``); without
  them the sampler's watchdog enforces the memory limit on the resident set instead
  (see crewship/service/usage.py).

All samplers are blocking (file reads, HTTP to dockerd): run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crewship.log import get as get_logger
from runtime.backend import InstanceRef

log = get_logger(__name__)

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Usage:
    """One instance's figures at ``at`` (wall-clock time)."""

    memory_bytes: int
    cpu_percent: float          # of one core; 200.0 is two cores busy
    fds: int | None             # open file descriptors (None: not known)
    threads: int
    processes: int
    uptime_seconds: int
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"memory_bytes": self.memory_bytes, "cpu_percent": round(self.cpu_percent, 1),
                "fds": self.fds, "threads": self.threads, "processes": self.processes,
                "uptime_seconds": self.uptime_seconds}


class Sampler(Protocol):
    def sample(self, refs: Iterable[InstanceRef]) -> dict[str, Usage]:
        """Figures for each instance still running, by instance id (blocking)."""
        ...


@dataclass(frozen=True)
class _Proc:
    ppid: int
    ticks: int        # utime + stime
    threads: int
    rss: int          # bytes


def _read_proc(pid: int) -> _Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    # proc(5): ppid is field 4, utime 14, stime 15, num_threads 20, rss 24 (pages)
    return _Proc(int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[17]),
                 int(fields[21]) * _PAGE)


def scan_proc() -> dict[int, _Proc]:
    """Every live process on the machine (one pass over /proc)."""
    found: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = _read_proc(int(entry.name))
            if proc is not None:
                found[int(entry.name)] = proc
    return found


def process_tree(root: int, table: dict[int, _Proc]) -> list[int]:
    """``root`` and all its descendants that are in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    tree, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _count_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # another uid without privileges, or gone
        return 0


class ProcessSampler:
    """Usage of process-runtime instances from /proc; remembers CPU ticks between calls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, float]] = {}   # id -> (ticks, monotonic time)

    def sample(self, refs: Iterable[InstanceRef]) -> dict[str, Usage]:
        table = scan_proc()
        now, wall = time.monotonic(), time.time()
        out: dict[str, Usage] = {}
        for ref in refs:
            if ref.pid is None:
                continue
            tree = process_tree(ref.pid, table)
            if not tree:
                continue
            ticks = sum(table[p].ticks for p in tree)
            before = self._last.get(ref.id)
            self._last[ref.id] = (ticks, now)
            cpu = 0.0
            if before is not None and now > before[1]:
                cpu = max(0.0, (ticks - before[0]) / _TICKS / (now - before[1]) * 100)
            out[ref.id] = Usage(
                memory_bytes=sum(table[p].rss for p in tree), cpu_percent=cpu,
                fds=sum(_count_fds(p) for p in tree),
                threads=sum(table[p].threads for p in tree), processes=len(tree),
                uptime_seconds=max(0, int(wall - ref.started_at)), at=wall)
        for gone in set(self._last) - set(out):
            del self._last[gone]
        return out


class DockerSampler:
    """Usage of docker-runtime instances from the container stats API."""

    def __init__(self, client_source: Any,
                 container_of: Callable[[str], str | None] | None = None) -> None:
        """``client_source``: a callable returning the backend's DockerClient (or None);
        ``container_of``: an instance id -> its container (swarm tasks), by default
        the docker backend's ``crewship-<id>``."""
        self._client_source = client_source
        self._container_of = container_of
        self._last: dict[str, tuple[int, int]] = {}   # id -> (container ns, system ns)

    def sample(self, refs: Iterable[InstanceRef]) -> dict[str, Usage]:
        client = self._client_source()
        if client is None:
            return {}
        out: dict[str, Usage] = {}
        for ref in refs:
            try:  # one_shot: at once, without dockerd's own second reading (~1 s)
                name = (self._container_of(ref.id) if self._container_of
                        else f"crewship-{ref.id}")
                if name is None:
                    continue
                stats = client.api.stats(name, stream=False, one_shot=True)
            except Exception as exc:  # gone, or dockerd busy: next time
                log.debug("usage_sample_failed", instance=ref.id, error=str(exc)[:120])
                continue
            usage = docker_usage(stats, ref, self._last.get(ref.id))
            cpu = stats.get("cpu_stats") or {}
            self._last[ref.id] = (int(cpu.get("cpu_usage", {}).get("total_usage", 0)),
                                  int(cpu.get("system_cpu_usage", 0)))
            if usage is not None:
                out[ref.id] = usage
        for gone in set(self._last) - set(out):
            del self._last[gone]
        return out


def docker_usage(stats: dict[str, Any], ref: InstanceRef,
                 before: tuple[int, int] | None = None) -> Usage | None:
    """``docker stats``' arithmetic over one stats answer (None: not running); ``before``:
    (container, system) CPU nanoseconds of the previous answer, instead of ``precpu_stats``."""
    mem = stats.get("memory_stats") or {}
    if "usage" not in mem:
        return None
    detail = mem.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", detail.get("cache", 0)))
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    if before is not None:
        pre = {"cpu_usage": {"total_usage": before[0]}, "system_cpu_usage": before[1]}
    cpu_delta = (cpu.get("cpu_usage", {}).get("total_usage", 0)
                 - pre.get("cpu_usage", {}).get("total_usage", 0))
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cores = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or [1])
    percent = cpu_delta / system_delta * cores * 100 if system_delta > 0 and cpu_delta > 0 else 0.0
    pids = int((stats.get("pids_stats") or {}).get("current") or 0)
    wall = time.time()
    return Usage(memory_bytes=max(0, int(mem["usage"]) - int(cache)), cpu_percent=percent,
                 fds=None, threads=pids, processes=pids,
                 uptime_seconds=max(0, int(wall - ref.started_at)), at=wall)


class Cgroups:
    """cgroup v2 groups ``crewship/<app>/<instance>`` for the process runtime's limits."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.base = root / "crewship"

    def available(self) -> bool:
        """A writable cgroup v2 hierarchy with the memory and cpu controllers."""
        try:
            controllers = (self.root / "cgroup.controllers").read_text().split()
        except OSError:
            return False
        return {"memory", "cpu"} <= set(controllers) and os.access(self.root, os.W_OK)

    def apply(self, app: str, instance: str, pid: int, memory: int | None,
              cpus: float | None) -> Path:
        """Create the instance's group with its limits and move ``pid`` in (children follow)."""
        parent = self.base / app
        for group in (self.base, parent):
            group.mkdir(exist_ok=True)
            _enable(group.parent, ("memory", "cpu"))
        _enable(parent, ("memory", "cpu"))
        group = parent / instance
        group.mkdir(exist_ok=True)
        if memory:
            (group / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        if cpus:
            period = 100_000
            (group / "cpu.max").write_text(f"{int(cpus * period)} {period}")
        (group / "cgroup.procs").write_text(str(pid))
        return group

    def oom_killed(self, app: str, instance: str) -> bool:
        """The kernel killed a process of the group for going over ``memory.max``."""
        try:
            text = (self.base / app / instance / "memory.events").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in text.splitlines() if line.strip())
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self, app: str, instance: str) -> None:
        with contextlib.suppress(OSError):
            (self.base / app / instance).rmdir()


def _enable(group: Path, controllers: tuple[str, ...]) -> None:
    with contextlib.suppress(OSError):
        (group / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))
