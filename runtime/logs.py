"""Per-app log files: every instance of an app and the daemon's ``[system]`` lines
go to ``logs/NAME/app.log``, rotated by copy-then-truncate.

Instances hold their own ``O_APPEND`` file descriptors for their whole life, so a
rotation copies the file aside and truncates it in place (renaming it would leave
them writing into the rotated copy). ``follow()`` notices both a truncation and a
replaced file and keeps going, so ``logs -t`` follows the app across restarts and
redeploys, not a process.

Lines look like ``2026-11-26T10:00:00.123Z [v3.1] text`` (the runner's) and
``2026-11-26T10:00:00.123Z [system] text`` (ours). Never write config values here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

LOG_NAME = "app.log"
_TAGGED = re.compile(r"^\S+ \[([^\]]+)\] ")
_BLOCK = 64 * 1024
_MAX_OUTPUT_READ = 1024 * 1024


def timestamp(now: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds: ``2026-11-26T10:00:00.123Z``."""
    moment = now or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def open_append(path: Path) -> int:
    """An ``O_APPEND`` descriptor on ``path`` (mode 0600), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _last_lines(path: Path, n: int, end: int | None = None) -> list[str]:
    """The last ``n`` lines of ``path`` up to byte ``end``, reading backwards."""
    if n <= 0:
        return []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    with handle:
        pos = os.fstat(handle.fileno()).st_size if end is None else end
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(_BLOCK, pos)
            pos -= step
            handle.seek(pos)
            data = handle.read(step) + data
    return _split(data)[-n:]


def _split(data: bytes) -> list[str]:
    return [line.rstrip("\r") for line in data.decode(errors="replace").splitlines()]


def _read_from(path: Path, offset: int, limit: int = _MAX_OUTPUT_READ) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(offset, size - limit)
            handle.seek(start)
            return handle.read()
    except FileNotFoundError:
        return b""


class AppLog:
    """One app's log: ``dir/app.log`` plus ``app.log.1`` ... ``app.log.<backups>``."""

    def __init__(self, dir: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.dir = dir
        self.path = dir / LOG_NAME
        self.max_bytes = max_bytes
        self.backups = backups

    def rotated(self, k: int) -> Path:
        return self.dir / f"{LOG_NAME}.{k}"

    def system(self, text: str) -> None:
        """Append ``<ts> [system] <text>``: one write per line, never a config value."""
        stamp = timestamp()
        lines = text.splitlines() or [""]
        self._append("".join(f"{stamp} [system] {line}\n" for line in lines))

    def _append(self, chunk: str) -> None:
        fd = open_append(self.path)
        try:
            os.write(fd, chunk.encode())
        finally:
            os.close(fd)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines across the current file and the rotated ones."""
        return self._tail(n, None)

    def _tail(self, n: int, end: int | None) -> list[str]:
        lines = _last_lines(self.path, n, end)
        k = 1
        while len(lines) < n and k <= self.backups:
            older = self.rotated(k)
            if not older.exists():
                break
            lines = _last_lines(older, n - len(lines)) + lines
            k += 1
        return lines

    def instance_output(self, name: str, n: int = 40, since: int = 0) -> list[str]:
        """The last ``n`` lines instance ``name`` wrote after byte ``since``.

        Lines tagged with another instance or ``[system]`` are left out; untagged
        lines (a traceback printed before the runner's logging started) are kept.
        """
        data = b""
        if self.size() < since:  # rotated meanwhile: the start is in app.log.1
            data = _read_from(self.rotated(1), since)
            since = 0
        data += _read_from(self.path, since)
        tag = f"[{name}]"
        kept = []
        for line in _split(data):
            match = _TAGGED.match(line)
            if match is None or f"[{match.group(1)}]" == tag:
                kept.append(line)
        return kept[-n:]

    def rotate_if_needed(self) -> bool:
        """Copy-then-truncate once the file reaches ``max_bytes``; True if rotated."""
        if self.size() < self.max_bytes:
            return False
        for k in range(self.backups - 1, 0, -1):
            if self.rotated(k).exists():
                os.replace(self.rotated(k), self.rotated(k + 1))
        if self.backups > 0:
            target = self.rotated(1)
            shutil.copyfile(self.path, target)
            target.chmod(0o600)
        os.truncate(self.path, 0)
        return True

    async def follow(self, n: int, stop: asyncio.Event | None = None,
                     poll: float = 0.2) -> AsyncIterator[str]:
        """The last ``n`` lines, then every new line until ``stop`` is set."""
        cursor = _Cursor(self)
        end = cursor.open_at_end()
        for line in await asyncio.to_thread(self._tail, n, end):
            yield line
        try:
            while stop is None or not stop.is_set():
                for line in cursor.read():
                    yield line
                if stop is None:
                    await asyncio.sleep(poll)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), poll)
        finally:
            cursor.close()


class _Cursor:
    """Where ``follow()`` is in the current file; survives rotation."""

    def __init__(self, log: AppLog) -> None:
        self._log = log
        self._file: BinaryIO | None = None
        self._ino = -1
        self._pos = 0
        self._buf = b""

    def open_at_end(self) -> int:
        self._open()
        if self._file is None:
            return 0
        self._pos = os.fstat(self._file.fileno()).st_size
        self._file.seek(self._pos)
        return self._pos

    def _open(self) -> None:
        self.close()
        try:
            self._file = self._log.path.open("rb")
        except FileNotFoundError:
            return
        self._ino = os.fstat(self._file.fileno()).st_ino
        self._pos = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self) -> list[str]:
        try:
            stat = self._log.path.stat()
        except FileNotFoundError:
            return []
        data = b""
        if self._file is None or stat.st_ino != self._ino:
            if self._file is not None:  # replaced: finish the old file first
                data += self._file.read()
            self._open()
        elif stat.st_size < self._pos:  # truncated: what we missed went to .1
            data += _read_from(self._log.rotated(1), self._pos)
            self._file.seek(0)
            self._pos = 0
        if self._file is not None:
            fresh = self._file.read()
            self._pos += len(fresh)
            data += fresh
        return self._lines(data)

    def _lines(self, data: bytes) -> list[str]:
        self._buf += data
        if b"\n" not in self._buf:
            return []
        complete, _, self._buf = self._buf.rpartition(b"\n")
        return _split(complete + b"\n")
