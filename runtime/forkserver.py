"""One preloaded parent, seen from the daemon (runtime/preload.py decides which and when).

Starting it in its app's sandbox (``spawn_parent``: the instance's bubblewrap mounts with
``releases/<app>`` and its control dir, its uid, HOME and base environment), recording it
(``preload/<app>/<gen>.json``: a pid record, runtime/pidrecord.py, with the parent's key), talking to it on
``<gen>/s`` (``connect`` checks the socket is served by that very process; ``ping``,
``request_fork``) and finding a forked child's pid outside the sandbox (``host_pid``).
The protocol is in runtime/runner/preload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crewship.errors import CrewshipError
from runtime.backend import InstanceSpec
from runtime.launch import spawn
from runtime.pidrecord import PidRecord, is_running, proc_start, write_record
from runtime.sandbox import Sandbox, first_child

SOCKET_NAME, STATE_NAME, EXITS_DIR = "s", "state.json", "exits"


class PreloadError(CrewshipError):
    """A fork from the preloaded parent did not work; the instance starts cold."""


def host_pid(parent: int, ns_pid: int) -> int | None:
    """The pid, as the daemon sees it, of ``parent``'s child that is ``ns_pid`` in its sandbox."""
    try:
        kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for kid in kids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return int(kid)
    return None


def read_small(path: Path) -> dict[str, Any] | None:
    """A JSON file the sandboxed parent wrote: never followed through a link, bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    with contextlib.suppress(ValueError):
        parsed = json.loads(data)
        return parsed if isinstance(parsed, dict) else None
    return None


def take_exit_status(control: Path, ident: str) -> int | None:
    """The status the parent wrote for ``ident`` (then removed), or None. The directories
    are the sandbox's to change: nothing here follows a link out of them."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.open(control, flags)
    except OSError:
        return None
    try:
        exits = os.open(EXITS_DIR, flags, dir_fd=top)
    except OSError:
        return None
    finally:
        os.close(top)
    try:
        try:
            fd = os.open(ident, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=exits)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(ident, dir_fd=exits)
    finally:
        os.close(exits)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        status = json.loads(data).get("status")
        return status if isinstance(status, int) else None
    return None


@dataclass(eq=False)
class Parent:
    """One preloaded parent: its control dir ``preload/<app>/<gen>/`` and its process."""

    app: str
    key: str
    gen: str
    control: Path
    pid: int
    start: int
    init: tuple[int, int] | None = None
    outer: subprocess.Popen[bytes] | None = None
    retired: bool = False
    watcher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.app}/{self.gen}"

    def alive(self) -> bool:
        return is_running(self.pid, self.start)


@dataclass
class Forked:
    """A child the parent forked; it runs once ``go()`` tells it the daemon recorded it."""

    pid: int
    control: str            # <app>/<gen>: where its exit status will be written
    conn: socket.socket = field(repr=False)

    def go(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(b"g")
        self.conn.close()

    def abandon(self) -> None:
        self.conn.close()  # EOF: the child exits without running


def request_fork(parent: Parent, spec: InstanceSpec, env: dict[str, str], ident: str,
                 log_fd: int) -> Forked:
    """Ask ``parent`` to fork ``spec`` (its secret, environment and log) as instance ``ident``."""
    conn = connect(parent)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, spec.secret.encode() + b"\n")
        os.close(write_end)
        write_end = -1
        request = {"op": "fork", "id": ident, "args": spec.argv[2:],
                   "env": env, "cwd": str(spec.cwd),
                   "path0": str(Path(spec.argv[1]).parent)}
        socket.send_fds(conn, [json.dumps(request).encode()], [read_end, log_fd])
        reply = json.loads(conn.recv(65536) or b"{}")
    except BaseException:
        conn.close()
        raise
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if "error" in reply or not isinstance(reply.get("pid"), int):
        conn.close()
        raise PreloadError(str(reply.get("error") or "the parent did not fork"))
    pid = host_pid(parent.pid, reply["pid"])
    if pid is None:
        conn.close()
        raise PreloadError("the forked instance vanished before it was recorded")
    return Forked(pid, parent.name, conn)

def connect(parent: Parent, timeout: float = 10.0) -> socket.socket:
    """The parent's socket, checked to be served by the parent process itself."""
    dirfd = os.open(parent.control, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout)
        sock.connect(f"/proc/self/fd/{dirfd}/{SOCKET_NAME}")  # any data dir path length
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dirfd)
    if int.from_bytes(creds[:4], "little", signed=True) != parent.pid:
        sock.close()
        raise PreloadError(f"{parent.name}'s socket is not served by its parent")
    return sock


def ping(parent: Parent) -> bool:
    """The parent answers on its socket and says it can fork."""
    try:
        with connect(parent, timeout=5.0) as conn:
            conn.send(json.dumps({"op": "ping"}).encode())
            reply = json.loads(conn.recv(65536) or b"{}")
    except (OSError, ValueError, PreloadError):
        return False
    return bool(reply.get("ok"))


def spawn_parent(spec: InstanceSpec, key: str, control: Path, sandbox: Sandbox | None,
                 log_fd: int) -> Parent:
    """Start the parent of ``spec``'s app and environment in the app's sandbox (its output
    on ``log_fd``) with ``control`` as its control dir; record it beside that dir."""
    pre = spec.preload
    assert pre is not None
    control.mkdir(parents=True, mode=0o700)
    argv = [pre.python, str(pre.runner), "preload", "--control", str(control),
            "--daemon-uid", str(os.getuid())]
    env = dict(pre.env)
    pspec = InstanceSpec(app=spec.app, release=spec.release, index=0, argv=argv, env=env,
                         cwd=control, port=0, readonly=(pre.releases, pre.env_path),
                         home=spec.home, uid=spec.uid, writable=(control,))
    if sandbox is None:
        outer, _ = spawn(pspec, log_fd, None)
        pid, init = outer.pid, None
    else:
        sandbox.prepare(pspec)
        if sandbox.as_root:
            uid = sandbox.uid_of(pspec)
            os.chown(control, uid, uid)
        outer, pid, init = _spawn_sandboxed(sandbox, pspec, log_fd)
    start = proc_start(pid)
    if start is None:
        raise OSError("the preloaded parent exited at once")
    parent = Parent(spec.app, key, control.name, control, pid, start, init, outer)
    write_record(control.with_suffix(".json"), {"key": key,
                                                **PidRecord(pid, start, init).fields()})
    return parent


def _spawn_sandboxed(sandbox: Sandbox, pspec: InstanceSpec, fd: int
                     ) -> tuple[subprocess.Popen[bytes], int, tuple[int, int] | None]:
    outer, init_pid = spawn(pspec, fd, sandbox)
    init_start = proc_start(init_pid) if init_pid is not None else None
    if init_pid is None or init_start is None:
        raise OSError("bubblewrap did not start the preloaded parent")
    for _ in range(200):  # the init forks the parent right after reporting itself
        pid = first_child(init_pid)
        if pid is not None:
            return outer, pid, (init_pid, init_start)
        time.sleep(0.005)
    raise OSError("the preloaded parent did not appear in its sandbox")
