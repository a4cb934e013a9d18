"""Server-sent events: a log's lines as ``text/event-stream``, with keep-alives and a
periodic access re-check (the dashboard's live log tail)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from crewship import log
from crewship.errors import CrewshipError

logger = log.get("crewship.dashboard")

HEARTBEAT = 15.0          # seconds between SSE keep-alive comments
RECHECK = 2.0             # seconds between a log stream's session and access re-checks


def sse_message(line: str) -> str:
    """One server-sent event carrying ``line`` (a newline in it becomes a second data line)."""
    return "".join(f"data: {part}\n" for part in line.replace("\r", "").split("\n")) + "\n"


async def _pump(lines: AsyncIterator[str], queue: asyncio.Queue[str | None]) -> None:
    try:
        async for line in lines:
            await queue.put(line)
    except CrewshipError as exc:
        logger.warning("log_stream_failed", error=str(exc))
    await queue.put(None)


async def sse_events(lines: AsyncIterator[str], allowed: Callable[[], bool],
                     heartbeat: float = HEARTBEAT,
                     recheck: float = RECHECK) -> AsyncGenerator[str, None]:
    """``lines`` as server-sent events, with a keep-alive comment every ``heartbeat``
    seconds; ``allowed()`` is asked every ``recheck`` seconds (busy or idle) and the
    stream ends once it turns False, or when ``lines`` does. Closing this generator
    (the client went away) cancels the reader, which closes the log."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
    reader = asyncio.create_task(_pump(lines, queue))
    clock = asyncio.get_running_loop().time
    recheck = min(recheck, heartbeat)
    try:
        yield "retry: 3000\n\n"
        checked = sent = clock()
        while True:
            if clock() - checked >= recheck:
                if not allowed():
                    return
                checked = clock()
                if checked - sent >= heartbeat:
                    yield ": keep-alive\n\n"
                    sent = checked
            try:
                line = await asyncio.wait_for(queue.get(), max(0.0, checked + recheck - clock()))
            except TimeoutError:
                continue
            if line is None:
                return
            yield sse_message(line)
            sent = clock()
    finally:
        reader.cancel()
        await asyncio.wait([reader])
