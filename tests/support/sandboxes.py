"""Cleanup of preloaded parents' sandboxes (runtime/preload.py) after a test or bench.

A parent killed with -9 leaves its sandbox's init, and the instances forked into it,
outside the server's process tree (the outer bwrap exits with the parent), so the
server's own cleanup cannot find them: they are found by the parents' records instead
(pid records, read with runtime/pidrecord.py like the daemon reads them).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from runtime.pidrecord import is_running, read_record


def kill_preload_sandboxes(data_dir: Path) -> None:
    """SIGKILL the namespace init of every recorded parent still running (by pid and start)."""
    for path in (data_dir / "preload").glob("*/*.json"):
        found = read_record(path)
        init = found[1].init if found is not None else None
        if init is not None and is_running(*init):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(init[0], signal.SIGKILL)
