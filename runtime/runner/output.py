"""Output: one timestamped, instance-tagged line per write; bounded texts."""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime, timezone
from typing import Any

TEXT_LIMIT = 2000


def timestamp() -> str:
    now = datetime.now(timezone.utc)  # noqa: UP017 (the runner also runs on Python 3.10)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LinePrefixer:
    """A text stream that writes each complete line to ``fd`` as ``<ts> [<tag>] <line>``.

    Partial lines are buffered per thread, so concurrent runs do not splice each other's
    lines; each finished line is one ``os.write`` (atomic on an O_APPEND log file).
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, fd: int, tag: str) -> None:
        self._fd = fd
        self._tag = tag
        self._local = threading.local()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        *lines, self._local.pending = pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        data = f"{timestamp()} [{self._tag}] {line.rstrip(chr(13))}\n".encode("utf-8", "replace")
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Complete lines are already written; a partial line waits for its newline."""

    def close_line(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._emit(pending)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


def install_output(instance: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    sys.stdout = LinePrefixer(1, instance)  # type: ignore[assignment]
    sys.stderr = LinePrefixer(2, instance)  # type: ignore[assignment]


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def clip(value: Any) -> str | None:
    return None if value is None else str(value)[:TEXT_LIMIT]
