"""The crash policy (DESIGN.md section 4): pure, no I/O, the clock is injected.

- the first restart after a crash is immediate, then 1 s doubling up to 5 min;
- an instance that stayed up 60 s starts the count again (its next crash is a
  "first" crash);
- 10 crashes within 10 min make the app ``crashed``: no more restarts until a
  deploy, restart or scale calls ``reset()``.

The delay is counted per instance slot (index); the crash window per app.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    first_delay: float = 0.0      # the first restart after a crash
    base: float = 1.0             # the second; doubles after that
    cap: float = 300.0
    reset_after: float = 60.0     # seconds up that forgive earlier crashes
    max_crashes: int = 10         # this many crashes ...
    window: float = 600.0         # ... within this many seconds: crashed

    def delay(self, consecutive: int) -> float:
        """Delay before restart number ``consecutive`` (1 = the first)."""
        if consecutive <= 1:
            return self.first_delay
        return float(min(self.base * 2 ** (consecutive - 2), self.cap))

    def describe(self) -> str:
        """``10 crashes in 10 min``: the rule, for the crashed message."""
        minutes = self.window / 60
        span = f"{minutes:g} min" if minutes >= 1 else f"{self.window:g} s"
        return f"{self.max_crashes} crashes in {span}"


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay: float          # seconds to wait before restarting (0 when not restarting)
    crashes: int          # crashes inside the window, this one included


class RestartBackoff:
    """Per-app crash bookkeeping: ask it what to do after each crash."""

    def __init__(self, policy: BackoffPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BackoffPolicy()
        self._clock = clock
        self._consecutive: dict[int, int] = {}
        self._window: deque[float] = deque()
        self.crashed = False
        self.restarts = 0

    def on_crash(self, slot: int, up_since: float | None) -> Decision:
        """Record a crash of ``slot``.

        ``up_since`` is when the instance became healthy (clock time), or None if it
        never did; an instance that was up ``reset_after`` seconds is forgiven.
        """
        now = self._clock()
        policy = self.policy
        if up_since is not None and now - up_since >= policy.reset_after:
            self._consecutive[slot] = 0
        count = self._consecutive.get(slot, 0) + 1
        self._consecutive[slot] = count
        self._window.append(now)
        while self._window and now - self._window[0] > policy.window:
            self._window.popleft()
        crashes = len(self._window)
        if self.crashed or crashes >= policy.max_crashes:
            self.crashed = True
            return Decision(restart=False, delay=0.0, crashes=crashes)
        self.restarts += 1
        return Decision(restart=True, delay=policy.delay(count), crashes=crashes)

    def reset(self) -> None:
        """A deploy, restart or scale: a clean slate, restarts allowed again."""
        self._consecutive.clear()
        self._window.clear()
        self.crashed = False
        self.restarts = 0
