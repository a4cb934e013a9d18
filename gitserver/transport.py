"""Git over SSH: pipe the channel to the real ``git-receive-pack``/``git-upload-pack``.

The child's stdin/stdout/stderr are plain OS pipes handed to asyncssh's
``redirect`` with a large buffer, so pack data never passes through Python objects
line by line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crewship import proc

REDIRECT_BUFSIZE = 256 * 1024
SERVICES = ("git-receive-pack", "git-upload-pack")


def repo_name(arg: str) -> str:
    """The app name from a git path argument: ``/name.git``, ``name.git``, ``name``."""
    name = arg.strip()
    if name.startswith("/"):
        name = name[1:]
    if name.endswith(".git"):
        name = name[:-4]
    if name.endswith("/"):
        name = name[:-1]
    return name


async def serve(process: Any, service: str, repo: Path, env: Mapping[str, str]) -> int:
    """Run ``service`` on ``repo`` with the SSH channel as its stdio; return its status."""
    child_env = proc.base_env(env)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        child = await asyncio.create_subprocess_exec(
            service, str(repo), stdin=in_r, stdout=out_w, stderr=err_w, env=child_env)
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    try:
        await process.redirect(stdin=in_w, stdout=out_r, stderr=err_r,
                               bufsize=REDIRECT_BUFSIZE, send_eof=False)
        status = await child.wait()
        await process.stdout.drain()
        await process.stderr.drain()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return status
