"""The preloaded parent of one app's environment: imports crewai once, forks instances.

    python RELEASE/crewship_runner preload --control DIR --daemon-uid N

The daemon starts it inside the app's sandbox (runtime/preload.py) with the app's HOME and
base environment (no config values). It imports crewai and the environment's heavy modules,
checks that it is still a single thread, writes ``DIR/state.json`` and then serves fork
requests on the ``AF_UNIX`` ``SOCK_SEQPACKET`` socket ``DIR/s``, one request a connection:

- daemon -> parent: ``{"op": "fork", "id": INSTANCE, "args": [runner args], "env": {...},
  "cwd": PATH, "path0": RELEASE_DIR}`` with two descriptors (``SCM_RIGHTS``): the read end
  of the pipe holding the instance's secret (the child's stdin, as in a cold start) and
  the write end of its log relay's pipe (stdout and stderr). Or ``{"op": "ping"}``.
- parent -> daemon: ``{"pid": N}`` (the child's pid in the sandbox) or ``{"error": ...}``
  (threads appeared: the daemon starts that instance cold).
- daemon -> child, on the same connection: one ``g`` once the daemon has recorded it; the
  child then runs ``server.main`` exactly as a cold runner would. Without it (EOF) the child
  exits: an instance the daemon does not know never runs.

Only connections from ``--daemon-uid`` (``SO_PEERCRED``) are served. The child starts a
session of its own, takes the environment, working directory and ``sys.path`` of a cold
start of its release and loads only the crew's own code. The parent reaps its children
and writes each exit status to ``DIR/exits/INSTANCE``. SIGTERM: stop forking (the socket
goes), exit once the last child has exited. A child outlives a parent that is killed: it
is then reaped by the sandbox's init.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Imported once by the parent; only ``crewai`` must load (optional ones are skipped).
REQUIRED = ("crewai",)
OPTIONAL = ("crewai.flow", "crewai.project", "crewai.tools", "crewai_tools", "openai.resources",
            "litellm")
# Math libraries start worker threads at import (numpy's OpenBLAS does): one thread each, so
# the parent stays forkable. The instances get their own environment after the fork.
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SOCKET_NAME = "s"
STATE_NAME = "state.json"
EXITS_DIR = "exits"
MAX_REQUEST = 1024 * 1024


def thread_count() -> int:
    """Threads of this process as the kernel sees them (native ones too)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def thread_names() -> str:
    names = [t.name for t in threading.enumerate()]
    native = thread_count() - len(names)
    return ", ".join(names + ([f"{native} native"] if native > 0 else []))


def preload() -> tuple[list[str], float]:
    """Import the heavy modules; (the ones imported, seconds). Raises if crewai cannot load."""
    started = time.monotonic()
    loaded = []
    for name in REQUIRED:
        importlib.import_module(name)
        loaded.append(name)
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112  (not in this environment, or it does not load)
            continue
        loaded.append(name)
    return loaded, time.monotonic() - started


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Parent:
    def __init__(self, control: Path, daemon_uid: int,
                 set_by_imports: dict[str, str] | None = None) -> None:
        self.control = control
        self.daemon_uid = daemon_uid
        self.set_by_imports = set_by_imports or {}  # os.environ entries the imports made
        self.children: dict[int, str] = {}   # pid -> instance id
        self.retiring = False
        self.listener: socket.socket | None = None

    # -- children ------------------------------------------------------------

    def reap(self, *_: Any) -> None:
        """SIGCHLD: record each exited child's status for the daemon."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ident = self.children.pop(pid, None)
            if ident is not None:
                with contextlib.suppress(OSError):
                    write_json(self.control / EXITS_DIR / ident,
                               {"status": os.waitstatus_to_exitcode(status)})

    def retire(self, *_: Any) -> None:
        """SIGTERM: no more forks; exit when the last child is gone."""
        self.retiring = True
        with contextlib.suppress(OSError):
            (self.control / SOCKET_NAME).unlink()

    # -- serving -------------------------------------------------------------

    def serve(self, state: dict[str, Any]) -> int:
        """Listen, say so in ``state.json``, fork on request until retired."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = self.control / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.chdir(self.control)  # a short relative name: socket paths are limited to 107 bytes
        listener.bind(SOCKET_NAME)
        os.chmod(SOCKET_NAME, 0o600)
        listener.listen(64)
        self.listener = listener
        write_json(self.control / STATE_NAME, state)
        signal.signal(signal.SIGCHLD, self.reap)
        signal.signal(signal.SIGTERM, self.retire)
        signal.signal(signal.SIGINT, self.retire)
        while not (self.retiring and not self.children):
            if self.retiring and self.listener is not None:
                self.listener.close()
                self.listener = None
            watched = [self.listener] if self.listener is not None else []
            ready, _, _ = select.select(watched, [], [], 0.5)
            if ready and self.listener is not None:
                with contextlib.suppress(OSError):
                    conn, _addr = self.listener.accept()
                    self.handle(conn)
            self.reap()
        return 0

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(10)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != self.daemon_uid:
                return
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 4)
            request = json.loads(data or b"null")
            if not isinstance(request, dict):
                return
            if request.get("op") == "ping":
                conn.send(json.dumps({"ok": True, "threads": thread_count(),
                                      "children": len(self.children)}).encode())
            elif request.get("op") == "fork" and len(fds) == 2:
                self.fork(conn, request, fds)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"error": f"bad request: {exc}"}).encode())
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    def fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        threads = thread_count()
        if threads != 1:
            conn.send(json.dumps({"error": f"the preloaded parent has {threads} threads "
                                           f"({thread_names()}): forking it is unsafe"}).encode())
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        gc.freeze()  # the collector in the child never touches (so never copies) these pages
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = child(conn, request, fds, self.listener, self.set_by_imports)
            finally:
                os._exit(code)
        self.children[pid] = str(request["id"])
        conn.send(json.dumps({"pid": pid}).encode())


def child(conn: socket.socket, request: dict[str, Any], fds: list[int],
          listener: socket.socket | None, set_by_imports: dict[str, str]) -> int:
    """In the forked child: become a cold start of the requested release, then run it.

    Its environment is the request's plus what the parent's imports put in ``os.environ``
    (e.g. ``TOKENIZERS_PARALLELISM``), as the same imports would in a cold start, unless
    the request sets those itself. Its own process group (the daemon signals the group);
    like a cold start it leads no session."""
    os.setpgid(0, 0)
    gc.enable()
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    if listener is not None:
        listener.close()
    secret_fd, log_fd = fds
    os.dup2(secret_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(secret_fd)
    os.close(log_fd)
    fds.clear()
    conn.settimeout(30)
    try:
        go = conn.recv(1)
    except OSError:
        go = b""
    conn.close()
    if go != b"g":
        return 0  # the daemon gave up on this instance
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}
    for key, value in set_by_imports.items():
        env.setdefault(key, value)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(request["cwd"]))
    sys.path[0] = str(request["path0"])  # where a cold start's runner was run from
    from .server import main
    code = main([str(a) for a in request["args"]])
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crewship_runner preload")
    parser.add_argument("--control", required=True, type=Path)
    parser.add_argument("--daemon-uid", required=True, type=int)
    args = parser.parse_args(argv)
    control = args.control.resolve()
    (control / EXITS_DIR).mkdir(exist_ok=True)
    gc.disable()  # no holes in the pages the instances share (Python's gc docs on fork)
    for key, value in SINGLE_THREADED.items():
        os.environ.setdefault(key, value)
    from .server import TELEMETRY_ENV
    for key, value in TELEMETRY_ENV.items():
        os.environ.setdefault(key, value)
    before = dict(os.environ)
    try:
        loaded, took = preload()
    except Exception as exc:
        reason = f"cannot import crewai: {type(exc).__name__}: {exc}"
        write_json(control / STATE_NAME, {"ok": False, "reason": reason})
        print(f"preload: {reason}", flush=True)
        return 3
    threads = thread_count()
    if threads != 1:
        reason = f"{threads} threads after the imports ({thread_names()}): forking is unsafe"
        write_json(control / STATE_NAME, {"ok": False, "reason": reason})
        print(f"preload: {reason}", flush=True)
        return 3
    print(f"preload: imported {', '.join(loaded)} in {took:.1f}s; forking instances", flush=True)
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    parent = Parent(control, args.daemon_uid, set_by_imports)
    return parent.serve({"ok": True, "pid": os.getpid(), "modules": loaded,
                         "import_s": round(took, 3)})
