"""A watchdog for the event loop: logs ``loop_stalled`` with where the loop was stuck.

A thread asks the loop to answer every ``interval`` seconds; when an answer is later
than ``threshold``, it samples the loop thread's stack (``sys._current_frames``) and
logs it once the loop is back. On only when ``CREWSHIP_LOOP_WATCHDOG`` sets a
threshold in seconds (for benchmarks and for finding a blocking call in production).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback

from crewship import log

logger = log.get("crewship.loopwatch")


class LoopWatchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float,
                 interval: float = 0.02) -> None:
        self._loop = loop
        self._threshold = threshold
        self._interval = interval
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            answered = threading.Event()
            asked = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed
                return
            if answered.wait(self._threshold):
                continue
            stack = self._stack()
            answered.wait()
            stalled = time.monotonic() - asked
            logger.warning("loop_stalled", seconds=round(stalled, 3), where=stack)

    def _stack(self) -> list[str]:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return []
        lines = traceback.format_stack(frame, limit=12)
        return [line.strip().replace("\n", " | ") for line in lines]
