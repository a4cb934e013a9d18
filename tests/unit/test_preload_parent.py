"""The preloaded parent's own checks (runtime/runner/preload.py), on real sockets and threads."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

from runtime.runner.preload import Parent, thread_count


def test_a_parent_with_a_second_thread_refuses_to_fork(tmp_path: Path) -> None:
    parent = Parent(tmp_path, os.getuid())
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="started-at-import")
    worker.start()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        assert thread_count() >= 2
        parent.fork(theirs, {"op": "fork", "id": "demo-v1.1-abc", "args": [], "env": {},
                             "cwd": str(tmp_path), "path0": str(tmp_path)},
                    [read_end, write_end])
        reply = json.loads(ours.recv(65536))
    finally:
        stop.set()
        worker.join()
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()
    assert "forking it is unsafe" in reply["error"]
    assert "started-at-import" in reply["error"]
    assert parent.children == {}  # nothing was forked


def test_a_reaped_child_leaves_its_exit_status_for_the_daemon(tmp_path: Path) -> None:
    (tmp_path / "exits").mkdir()
    parent = Parent(tmp_path, os.getuid())
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    parent.children[pid] = "demo-v1.1-abc"
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    parent.reap()
    assert json.loads((tmp_path / "exits" / "demo-v1.1-abc").read_text()) == {"status": 7}
    assert parent.children == {}
