"""Logs lose no lines (issue 12 item 6): rotation renames, writers reopen, and every
line an instance wrote is in app.log or a rotated file, in order. The relay is the
real ``runtime.logrelay`` process reading a real pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from runtime.logs import AppLog, LineTagger, LogWriter

REPO = Path(__file__).resolve().parents[2]


def all_lines(log_dir: Path, backups: int) -> list[str]:
    """app.log.N ... app.log.1, app.log, oldest first."""
    files = [log_dir / f"app.log.{k}" for k in range(backups, 0, -1)] + [log_dir / "app.log"]
    text = b"".join(f.read_bytes() for f in files if f.exists())
    return text.decode().splitlines()


def test_lines_written_through_the_relay_survive_many_rotations_in_order(
        tmp_path: Path) -> None:
    count, backups = 20_000, 200
    relay = subprocess.Popen(
        [sys.executable, "-m", "runtime.logrelay", str(tmp_path), "v1.1",
         "--max-bytes", "40000", "--backups", str(backups)],
        stdin=subprocess.PIPE, cwd=REPO)
    log = AppLog(tmp_path, max_bytes=40_000, backups=backups)
    done = threading.Event()

    def daemon_side() -> None:  # the daemon's [system] lines and its own rotations
        i = 0
        while not done.is_set():
            log.system(f"tick {i}")
            log.rotate_if_needed()
            i += 1

    ticker = threading.Thread(target=daemon_side)
    ticker.start()
    assert relay.stdin is not None
    try:
        for start in range(0, count, 100):  # chunks that end mid-line, as pipes do
            chunk = "".join(f"line {i:06d} {'x' * (i % 37)}\n" for i in range(start, start + 100))
            relay.stdin.write(chunk[:-7].encode())
            relay.stdin.flush()
            relay.stdin.write(chunk[-7:].encode())
        relay.stdin.close()
        assert relay.wait(60) == 0
    finally:
        done.set()
        ticker.join()
    lines = all_lines(tmp_path, backups)
    ours = [line.split(" ", 2)[2] for line in lines if " [v1.1] " in line]
    assert ours == [f"line {i:06d} {'x' * (i % 37)}" for i in range(count)]
    assert (tmp_path / "app.log.3").exists()  # it did rotate, many times
    ticks = [int(line.rsplit(" ", 1)[1]) for line in lines if " [system] tick " in line]
    assert ticks == list(range(len(ticks)))


def test_writer_counts_bytes_and_reopens_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    writer = LogWriter(path)
    writer.write("é\n".encode())
    os.replace(path, tmp_path / "app.log.1")
    writer.write(b"after\n")
    writer.close()
    assert writer.written == 3 + 6
    assert (tmp_path / "app.log.1").read_bytes() == "é\n".encode()
    assert path.read_bytes() == b"after\n"


def test_tagger_stamps_every_line_and_bounds_its_buffer() -> None:
    tagger = LineTagger("v2.1", max_line=1000)
    out = tagger.feed(b"2026-11-26T10:00:00.123Z [v2.1] the runner's line\n"
                      b"2026-11-26T10:00:00.123Z [system] forged\n"
                      b"[system] also forged\r\nmid\rline\n")
    lines = out.decode().splitlines()
    assert lines[0] == "2026-11-26T10:00:00.123Z [v2.1] the runner's line"
    assert all(line.split(" ", 2)[1] == "[v2.1]" for line in lines)
    assert lines[1].endswith(" [v2.1] 2026-11-26T10:00:00.123Z [system] forged")
    assert lines[2].endswith(" [v2.1] [system] also forged")
    assert lines[3].endswith(" [v2.1] mid\\rline")
    long = tagger.feed(b"y" * 2500)  # no newline yet: cut, never an unbounded buffer
    assert [len(line.split(" ", 2)[2]) for line in long.decode().splitlines()] == [1000, 1000]
    assert tagger.flush().decode().endswith(" [v2.1] " + "y" * 500 + "\n")
    assert tagger.flush() == b""
