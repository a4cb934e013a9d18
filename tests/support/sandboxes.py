"""Cleanup of preloaded parents' sandboxes (runtime/preload.py) after a test or bench.

A parent killed with -9 leaves its sandbox's init, and the instances forked into it,
outside the server's process tree (the outer bwrap exits with the parent), so the
server's own cleanup cannot find them: they are found by the parents' records instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path


def proc_start(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill_preload_sandboxes(data_dir: Path) -> None:
    """SIGKILL the namespace init of every recorded parent still running (by pid and start)."""
    for record in (data_dir / "preload").glob("*/*.json"):
        with contextlib.suppress(OSError, ValueError):
            init = json.loads(record.read_text()).get("init")
            if init and proc_start(int(init[0])) == int(init[1]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(init[0]), signal.SIGKILL)
