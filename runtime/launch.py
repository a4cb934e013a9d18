"""Starting an instance's processes on this machine: its log relay and the process itself.

The process runtime (runtime/process.py) and the preloaded parents (runtime/forkserver.py)
start processes the same way, so both call these:

- ``start_relay``: a ``runtime.logrelay`` (the daemon's interpreter, a session of its own)
  reading a new pipe; the process writes its stdout and stderr into the pipe's other end.
  ``reap_relay`` waits for it to drain the pipe and exit, never forever.
- ``spawn``: the argv in a new session (it outlives the daemon), with an explicit
  environment and working directory, under bubblewrap when there is a ``Sandbox``
  (then also the pid of the sandbox's init, as bwrap reports it); a channel secret goes
  down the process's stdin once, then the pipe closes.

Why ``subprocess.Popen`` and not ``asyncio.create_subprocess_exec`` (the house helper):
asyncio's subprocess transport kills a still-running child when it is closed or
garbage-collected, and these children must survive the daemon.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from crewship.log import get as get_logger
from runtime.backend import InstanceSpec
from runtime.logs import LOG_NAME, open_append
from runtime.sandbox import Launch, Sandbox, read_init_pid

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds runtime/ (for -m)
log = get_logger(__name__)


def start_relay(log_dir: Path, tag: str) -> tuple[subprocess.Popen[bytes], int]:
    """A ``runtime.logrelay`` reading a new pipe; returns it and the pipe's write end.

    The relay runs with the daemon's interpreter in a session of its own, so it
    outlives the daemon like the instance does; it ends when the instance's last
    process closes the pipe."""
    os.close(open_append(log_dir / LOG_NAME))  # there from the start, as before
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        relay = subprocess.Popen(
            [sys.executable, "-m", "runtime.logrelay", str(log_dir), tag],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=_PACKAGE_ROOT, env={"PYTHONPATH": str(_PACKAGE_ROOT),
                                    "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True, close_fds=True)
    except OSError:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return relay, write_end


def reap_relay(relay: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for the relay to drain the pipe and exit (a thread); never waits forever."""
    try:
        relay.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("log_relay_slow", pid=relay.pid)  # left to finish on its own


def spawn(spec: InstanceSpec, log_fd: int, sandbox: Sandbox | None
          ) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start ``spec`` (its output on ``log_fd``), under ``sandbox`` if there is one (already
    prepared); also the pid of the sandbox's init (None: no sandbox, or bwrap failed)."""
    if sandbox is None:
        return _popen(spec, log_fd, None), None
    info_r, info_w = os.pipe()
    try:
        popen = _popen(spec, log_fd, sandbox.launch(spec, info_w))
        os.close(info_w)
        info_w = -1
        init = read_init_pid(info_r)
    finally:
        os.close(info_r)
        if info_w >= 0:
            os.close(info_w)
    return popen, init


def _popen(spec: InstanceSpec, log_fd: int, launch: Launch | None) -> subprocess.Popen[bytes]:
    """Start the instance (``launch``: the sandbox's argv, bwrap ... -- spec.argv, and the
    descriptors it keeps); its channel secret goes down a pipe once, then the pipe closes."""
    popen = subprocess.Popen(
        launch.argv if launch is not None else spec.argv, env=spec.env, cwd=spec.cwd,
        stdin=subprocess.PIPE if spec.secret else subprocess.DEVNULL,
        stdout=log_fd, stderr=log_fd, start_new_session=True,
        close_fds=True, pass_fds=launch.pass_fds if launch is not None else ())
    if popen.stdin is not None:
        with contextlib.suppress(BrokenPipeError):  # it died at once: wait() will say so
            popen.stdin.write(spec.secret.encode() + b"\n")
        with contextlib.suppress(BrokenPipeError):
            popen.stdin.close()
    return popen
