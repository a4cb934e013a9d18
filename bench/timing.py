"""Measuring on a shared machine: waiting for a condition, and for quiet.

``wait_for`` polls a check every ``POLL`` seconds and answers when it held
(``perf_counter``); ``settle`` waits until a server's process tree uses under 5% of one
CPU, so the next timed step does not pay for the previous one's background work (a new
instance's warm-up imports). Used by the deploy, preload and sandbox benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.server import descendants

POLL = 0.02


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every ``POLL`` seconds; returns the ``perf_counter`` when it held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)
    return time.perf_counter()


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def settle(root_pid: int, timeout: float = 15.0) -> None:
    """Until the server and its crews are idle (a new instance imports openai in the
    background for ~4 s after it is healthy): the next measurement runs undisturbed."""
    window = 0.25
    quiet = window * os.sysconf("SC_CLK_TCK") * 0.05  # under 5% of one CPU
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        family = [root_pid, *descendants(root_pid)]
        before = cpu_ticks(family)
        time.sleep(window)
        if cpu_ticks(family) - before <= quiet:
            return
