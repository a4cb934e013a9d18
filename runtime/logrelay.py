"""The log relay: one small process per instance between its output and ``app.log``.

The process runtime starts the crew with stdout and stderr on a pipe whose other end
this relay reads (``python -m runtime.logrelay LOG_DIR TAG``). It stamps every line
with the instance's tag (``LineTagger``: a crew cannot forge ``[system]`` lines),
appends it through a ``LogWriter`` (which follows rotations, never losing a line) and
rotates ``app.log`` itself once it is past its size. It runs in a session of its own,
outside the crew's sandbox, so it outlives a daemon restart (the adopted instance
keeps logging) and ends when the last writer of the pipe is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from runtime.logs import BACKUPS, MAX_BYTES, AppLog, LineTagger, LogWriter

_READ = 64 * 1024
_CHECK_EVERY = 256 * 1024  # bytes written between two size checks for rotation


def relay(source: int, log: AppLog, tag: str) -> int:
    """Copy ``source`` to the log until EOF; the number of bytes written.

    A write that fails (a full disk) drops those lines, never the instance: the pipe
    keeps being read, and the first line written afterwards says how much was lost."""
    tagger = LineTagger(tag)
    writer = LogWriter(log.path)
    checked = dropped = 0
    try:
        while True:
            try:
                data = os.read(source, _READ)
            except InterruptedError:
                continue
            out = tagger.feed(data) if data else tagger.flush()
            if out and dropped:
                out = tagger.line(f"[crewship: {dropped} bytes of this instance's output "
                                  "were lost: the log could not be written]".encode()) + out
            if out:
                try:
                    writer.write(out)
                    dropped = 0
                except OSError:
                    dropped += len(out)
                    writer.close()
            if writer.written - checked >= _CHECK_EVERY:
                checked = writer.written
                with contextlib.suppress(OSError):
                    log.rotate_if_needed()
            if not data:
                return writer.written
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.logrelay")
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("tag")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--backups", type=int, default=BACKUPS)
    args = parser.parse_args(argv)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # ends at EOF, after the last line
    relay(0, AppLog(args.log_dir, args.max_bytes, args.backups), args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
