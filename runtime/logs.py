"""Per-app log files: every instance of an app and the daemon's ``[system]`` lines
go to ``logs/NAME/app.log``, rotated by renaming (``app.log`` -> ``app.log.1`` ...).

Only the daemon's side writes the file: a ``LogWriter`` reopens ``app.log`` when it
was renamed away, so a rotation loses nothing and copies nothing. An instance's
output reaches the file through a ``LineTagger`` that stamps every line with the
instance's tag (``runtime.logrelay`` for the process runtime, the follower thread for
docker), so a crew cannot forge a ``[system]`` line however it writes to fd 1 or 2.
``follow()`` notices a replaced file and keeps going, so ``logs -t`` follows the app
across rotations, restarts and redeploys.

Lines look like ``2026-11-26T10:00:00.123Z [v3.1] text`` (an instance's) and
``2026-11-26T10:00:00.123Z [system] text`` (ours), split on ``\n`` only. Never write
config values here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

LOG_NAME = "app.log"
_TAGGED = re.compile(r"^\S+ \[([^\]]+)\] ")
_BLOCK = 64 * 1024
_MAX_OUTPUT_READ = 1024 * 1024
MAX_LINE = 64 * 1024          # longer output lines are cut into pieces of this size
MAX_BYTES = 10 * 1024 * 1024  # rotate app.log past this size ...
BACKUPS = 5                   # ... keeping app.log.1 .. app.log.5
_STAMPED = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[([^\]\n]+)\] ")


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
        blocks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= n:
            step = min(_BLOCK, pos)
            pos -= step
            handle.seek(pos)
            block = handle.read(step)
            newlines += block.count(b"\n")
            blocks.append(block)
    return _split(b"".join(reversed(blocks)))[-n:]


def _split(data: bytes) -> list[str]:
    """Lines split on ``\n`` alone: a crew's ``\r`` or U+2028 never starts a line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r").decode(errors="replace") for line in lines]


def _read_from(path: Path, offset: int, limit: int = _MAX_OUTPUT_READ) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(offset, size - limit)
            handle.seek(start)
            return handle.read()
    except FileNotFoundError:
        return b""


class LogWriter:
    """Appends to ``path``, reopening it when a rotation renamed it away.

    Each ``write`` is whole lines in as few ``os.write`` calls as the kernel allows
    (one, below the pipe/file atomicity limits in practice), so writers never splice.
    ``written`` counts the bytes the kernel took, not the characters asked for.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._ino = -1
        self.written = 0

    def _current(self) -> int:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = -2
        if self._fd < 0 or ino != self._ino:  # first write, or renamed by a rotation
            self.close()
            self._fd = open_append(self.path)
            self._ino = os.fstat(self._fd).st_ino
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._current()
        while data:
            done = os.write(fd, data)
            self.written += done
            data = data[done:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LineTagger:
    """An instance's raw output -> ``<ts> [<tag>] <line>\n`` lines, in a bounded buffer.

    Whatever the crew writes, each line it produces starts with the daemon's stamp and
    the instance's tag: ``[system] ...`` printed by a crew reads ``<ts> [v1.1] [system]
    ...``. A line the runner already stamped with this very tag keeps its stamp. A line
    longer than ``max_line`` bytes is cut; a stray ``\r`` is shown as ``\\r``.
    """

    def __init__(self, tag: str, max_line: int = MAX_LINE) -> None:
        self.tag = tag
        self._tag = tag.encode()
        self._max = max_line
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        *lines, self._pending = (self._pending + data).split(b"\n")
        out = [self._stamp(line) for line in lines]
        while len(self._pending) > self._max:
            out.append(self._stamp(self._pending[:self._max]))
            self._pending = self._pending[self._max:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The unfinished last line (the instance exited without a newline)."""
        rest, self._pending = self._pending, b""
        return self._stamp(rest) if rest else b""

    def line(self, text: bytes) -> bytes:
        """One complete line of our own, stamped; the buffered partial line is untouched."""
        return self._stamp(text)

    def _stamp(self, line: bytes) -> bytes:
        line = line.removesuffix(b"\r").replace(b"\r", b"\\r")
        found = _STAMPED.match(line)
        if found is not None and found.group(1) == self._tag:
            return line + b"\n"
        return f"{timestamp()} [{self.tag}] ".encode() + line + b"\n"


class AppLog:
    """One app's log: ``dir/app.log`` plus ``app.log.1`` ... ``app.log.<backups>``."""

    def __init__(self, dir: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.dir = dir
        self.path = dir / LOG_NAME
        self.max_bytes = max_bytes
        self.backups = backups

    def rotated(self, k: int) -> Path:
        return self.dir / f"{LOG_NAME}.{k}"

    def system(self, text: str) -> None:
        """Append ``<ts> [system] <text>``: one write per line, never a config value."""
        stamp = timestamp()
        lines = text.replace("\r", "\\r").split("\n")
        self._append("".join(f"{stamp} [system] {line}\n" for line in lines))

    def _append(self, chunk: str) -> None:
        """A ``[system]`` line never fails what it reports on (a full disk loses the line)."""
        try:
            fd = open_append(self.path)
        except OSError:
            return
        try:
            data = chunk.encode(errors="replace")
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass
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
        """Rename ``app.log`` to ``app.log.1`` (shifting the older ones) once it reaches
        ``max_bytes``; writers reopen ``app.log`` on their next line. True if rotated.

        An ``flock`` on ``.rotate.lock`` makes concurrent rotators (the daemon and each
        instance's relay) rotate once, not once each."""
        if self.size() < self.max_bytes:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".rotate.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.size() < self.max_bytes:
                return False  # another writer rotated while we waited
            if self.backups <= 0:
                self.path.unlink(missing_ok=True)
                return True
            for k in range(self.backups - 1, 0, -1):
                if self.rotated(k).exists():
                    os.replace(self.rotated(k), self.rotated(k + 1))
            os.replace(self.path, self.rotated(1))
            return True
        finally:
            os.close(fd)  # releases the lock

    async def follow(self, n: int, stop: asyncio.Event | None = None,
                     poll: float = 0.2) -> AsyncIterator[str]:
        """The last ``n`` lines, then every new line until ``stop`` is set."""
        cursor = _Cursor(self)
        end = await asyncio.to_thread(cursor.open_at_end)
        for line in await asyncio.to_thread(self._tail, n, end):
            yield line
        try:
            while stop is None or not stop.is_set():
                for line in await asyncio.to_thread(cursor.read):
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
