"""Git over SSH: pipe the channel to the real ``git-receive-pack``/``git-upload-pack``.

The child's stdio are asyncio streams handed to asyncssh's ``redirect`` with a
256 KiB buffer, so pack data moves in large chunks.

Its stdin goes through an ``asyncio.StreamWriter``, not a bare pipe: asyncssh's pipe
writer calls ``write_eof`` from inside the transport's ``resume_writing`` callback, and
CPython's ``_UnixWritePipeTransport._write_ready`` then closes the pipe with data still
buffered. A big push whose client sends EOF right after the pack (git does) lost its
tail ("fatal: early EOF" from unpack-objects). The stream writer writes EOF from its
own task, after the last byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crewship import proc

REDIRECT_BUFSIZE = 256 * 1024
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


async def serve(process: Any, service: str, repo: Path, env: Mapping[str, str]) -> int:
    """Run ``service`` on ``repo`` with the SSH channel as its stdio; return its status."""
    child = await asyncio.create_subprocess_exec(
        service, str(repo), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=proc.base_env(env), limit=REDIRECT_BUFSIZE)
    try:
        await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr,
                               bufsize=REDIRECT_BUFSIZE, send_eof=False)
        status = await child.wait()
        await process.stdout.drain()
        await process.stderr.drain()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return status
