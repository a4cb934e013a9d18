"""What the pusher sees: ``-----> Step`` lines, relayed as ``remote:`` by git.

Progress for people goes through a reporter, never through the logger. A reporter
must never be handed a config value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Reporter(Protocol):
    def step(self, text: str) -> None: ...      # "-----> text"
    def info(self, text: str) -> None: ...      # "       text"
    def warn(self, text: str) -> None: ...      # " !     text"
    def done(self, text: str) -> None: ...      # "=====> text"


class LineReporter:
    """Formats progress lines Heroku-style and hands each to ``sink``."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self.lines: list[str] = []

    def _emit(self, prefix: str, text: str) -> None:
        for part in (text.splitlines() or [""]):
            line = f"{prefix}{part}"
            self.lines.append(line)
            self._sink(line)

    def step(self, text: str) -> None:
        self._emit("-----> ", text)

    def info(self, text: str) -> None:
        self._emit("       ", text)

    def warn(self, text: str) -> None:
        self._emit(" !     ", text)

    def done(self, text: str) -> None:
        self._emit("=====> ", text)


class NullReporter(LineReporter):
    """Keeps the lines, shows them to no one (restarts, crash recovery)."""

    def __init__(self) -> None:
        super().__init__(lambda _line: None)
