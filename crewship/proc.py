"""The one way crewship runs a child process: an argv list, an explicit
environment, a timeout. Never a shell."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crewship.errors import CrewshipError


class CommandError(CrewshipError):
    """A child process failed or timed out; ``output`` holds what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        what = "timed out" if returncode is None else f"exited with status {returncode}"
        tail = output.strip().splitlines()[-1:] if output.strip() else []
        super().__init__(f"{argv[0]} {what}" + (f": {tail[0]}" if tail else ""))


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


# Variables git sets for hooks; a child git must not inherit them.
GIT_HOOK_VARS = ("GIT_DIR", "GIT_QUARANTINE_PATH", "GIT_WORK_TREE", "GIT_INDEX_FILE",
                 "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment minus git hook variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in GIT_HOOK_VARS}
    if extra:
        env.update(extra)
    return env


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 60.0,
    stdin: bytes | None = None,
    check: bool = True,
) -> Result:
    """Run ``argv`` to completion and capture its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else base_env(),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise CommandError(argv, None, (out + err).decode(errors="replace")) from None
    result = Result(proc.returncode or 0, out, err)
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, (out + err).decode(errors="replace"))
    return result


async def stream(
    argv: Sequence[str],
    on_line: Callable[[str], Awaitable[None] | None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 600.0,
) -> str:
    """Run ``argv``, calling ``on_line`` for each line of merged stdout/stderr.

    Returns the whole output; raises ``CommandError`` on a non-zero exit or timeout.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else base_env(),
        cwd=cwd,
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            maybe = on_line(line)
            if maybe is not None:
                await maybe
        await proc.wait()

    try:
        await asyncio.wait_for(pump(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(argv, None, "\n".join(lines)) from None
    output = "\n".join(lines)
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, output)
    return output
