"""The event-loop watchdog names the call that held the loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from structlog.testing import capture_logs

from crewship.loopwatch import LoopWatchdog


def block_the_loop_for_a_while() -> None:
    time.sleep(0.6)


def stalls(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "loop_stalled"]


def test_a_blocking_call_is_reported_with_where_it_blocked() -> None:
    async def main(logs: list[dict[str, Any]]) -> None:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold=0.1, interval=0.01)
        dog.start()
        await asyncio.sleep(0.05)
        block_the_loop_for_a_while()
        for _ in range(500):  # it reports once the loop answers again
            if stalls(logs):
                break
            await asyncio.sleep(0.01)
        dog.stop()

    with capture_logs() as logs:
        asyncio.run(main(logs))
    found = stalls(logs)
    assert len(found) == 1, logs
    assert found[0]["seconds"] >= 0.1
    assert any("block_the_loop_for_a_while" in frame for frame in found[0]["where"])


def test_a_responsive_loop_is_never_reported() -> None:
    async def main() -> None:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold=2.0, interval=0.01)
        dog.start()
        for _ in range(30):
            await asyncio.sleep(0.01)
        dog.stop()

    with capture_logs() as logs:
        asyncio.run(main())
    assert stalls(logs) == []
