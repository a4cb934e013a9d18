"""Outbound JSON POSTs (alerts, crew webhooks, event streams): retried with backoff.

A slow or failing receiver never blocks the caller: ``post`` returns at once and the
delivery runs as a task of the daemon's loop. Network errors, 408, 429 and 5xx are
retried (``attempts`` in all, waiting ``base_delay`` doubling up to ``max_delay``);
any other status is final. Only the receiver's host is logged: a URL may carry a
secret in its path or query.

Every request goes through ``crewship.urls.PinnedTransport``: the receiver's name is
resolved once per attempt, refused when it is loopback, private, link-local, ... (unless
the operator allows private targets), and the connection goes to the checked address.
A refused receiver is not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from crewship import log
from crewship.urls import PinnedTransport, Policy, URLRefusedError, host_of

logger = log.get("crewship.service.notify")

RETRY_STATUS = {408, 425, 429}


def retry_delays(attempts: int, base: float, cap: float) -> list[float]:
    """The waits between ``attempts`` tries: base, 2*base, ... capped (pure)."""
    return [min(base * 2 ** i, cap) for i in range(max(0, attempts - 1))]


Done = Callable[[bool], None]


class Deliverer:
    def __init__(self, policy: Policy | None = None, *, attempts: int = 5,
                 base_delay: float = 0.5, max_delay: float = 30.0,
                 timeout: float = 10.0) -> None:
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                        transport=PinnedTransport(policy or Policy()))
        self.delays = retry_delays(attempts, base_delay, max_delay)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, url: str, body: dict[str, Any], *, what: str,
             done: Done | None = None, headers: dict[str, str] | None = None) -> None:
        """Deliver ``body`` to ``url`` in the background; ``done(ok)`` when finished;
        ``headers``: e.g. the receiver's own ``Authorization`` (never logged)."""
        task = asyncio.create_task(self._deliver(url, body, what, done, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: dict[str, Any], what: str,
                       done: Done | None, headers: dict[str, str] | None = None) -> None:
        ok = await self.deliver(url, body, what=what, headers=headers)
        if done is not None:
            done(ok)

    async def deliver(self, url: str, body: dict[str, Any], *, what: str,
                      headers: dict[str, str] | None = None) -> bool:
        """POST ``body`` to ``url`` with its retries; True once a receiver took it (2xx)."""
        ok = False
        error = ""
        for attempt, delay in enumerate([*self.delays, None], start=1):
            try:
                resp = await self.client.post(url, json=body, headers=headers)
            except URLRefusedError as exc:
                logger.warning("delivery_refused", what=what, receiver=host_of(url),
                               reason=str(exc))
                error = "refused"
                break
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            else:
                ok = resp.status_code < 300
                error = f"HTTP {resp.status_code}"
                if ok or not (resp.status_code >= 500 or resp.status_code in RETRY_STATUS):
                    break
            if delay is None:
                break
            logger.info("delivery_retrying", what=what, receiver=host_of(url), attempt=attempt,
                        error=error, delay_s=delay)
            await asyncio.sleep(delay)
        if ok:
            logger.info("delivery_succeeded", what=what, receiver=host_of(url), attempts=attempt)
        else:
            logger.warning("delivery_failed", what=what, receiver=host_of(url),
                           attempts=attempt, error=error)
        return ok

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` for deliveries in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
