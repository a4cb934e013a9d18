"""Git over SSH: pipe the channel to the real ``git-receive-pack``/``git-upload-pack``.

The child's stdout/stderr are plain OS pipes (enlarged to 1 MiB) handed to asyncssh's
``redirect`` with a 256 KiB buffer, so pack data moves in large chunks.

Its stdin goes through an ``asyncio.StreamWriter``, not a bare pipe: asyncssh's pipe
writer calls ``write_eof`` from inside the transport's ``resume_writing`` callback, and
CPython's ``_UnixWritePipeTransport._write_ready`` then closes the pipe with data still
buffered. A big push whose client sends EOF right after the pack (git does) lost its
tail ("fatal: early EOF" from unpack-objects). The stream writer writes EOF from its
own task, after the last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crewship import proc

REDIRECT_BUFSIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
SERVICES = ("git-receive-pack", "git-upload-pack")


def repo_name(arg: str) -> str:
    """The app name from a git path argument: ``/name.git``, ``name.git``, ``name``."""
    name = arg  # validated as given, never trimmed or rewritten
    if name.startswith("/"):
        name = name[1:]
    if name.endswith(".git"):
        name = name[:-4]
    if name.endswith("/"):
        name = name[:-1]
    return name


def _pipe() -> tuple[int, int]:
    """An OS pipe, enlarged so pack data moves in fewer, larger writes."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_fd, write_fd


async def serve(process: Any, service: str, repo: Path, env: Mapping[str, str]) -> int:
    """Run ``service`` on ``repo`` with the SSH channel as its stdio; return its status."""
    out_r, out_w = _pipe()
    err_r, err_w = _pipe()
    try:
        child = await asyncio.create_subprocess_exec(
            service, str(repo), stdin=asyncio.subprocess.PIPE, stdout=out_w, stderr=err_w,
            env=proc.base_env(env))
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    try:
        # stdout/stderr: raw pipes read by asyncssh; stdin: a StreamWriter (see above).
        await process.redirect(stdin=child.stdin, stdout=out_r, stderr=err_r,
                               bufsize=REDIRECT_BUFSIZE, send_eof=False)
        status = await child.wait()
        await process.stdout.drain()
        await process.stderr.drain()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return status
