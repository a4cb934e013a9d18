"""The kickoff dispatcher: PENDING kickoffs to healthy instances, and their results back.

One loop per app claims the oldest PENDING kickoffs (SQLite is the queue) for free
slots: at most ``concurrency`` runs per healthy instance. A claimed kickoff is
``RUNNING`` on its instance *before* it is sent, and a driver task per kickoff sends it
(``POST /runs``: idempotent per kickoff id), long-polls its result, stores it, then
acknowledges it so the runner may forget it. Every call to a runner is retried while the
instance lives, so no accepted kickoff fails because a connection did; only an instance
that really died fails its kickoffs (the supervisor's ``InstanceExited``).

After a daemon restart ``follow`` picks the RUNNING kickoffs of adopted instances up
again: re-sending is harmless (the runner answers with the run it has), and the runner
kept any result that finished while no daemon was there.

A run that waits for a human (``PENDING_HUMAN_INPUT``, ``crewship/service/human.py``)
gives its slot back and its deadline stops while it waits; the driver hands each request
to ``waiting`` and takes the slot again when the run goes on. What a runner is sent for
a kickoff and how the webhook bodies it records are relayed is crewship/service/runhooks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from crewship import log
from crewship.service.runhooks import Relay, WebhookRelay, hook_urls, run_body
from crewship.store.state import Database, now
from runtime.channel import ChannelError, Reply, RunnerClient
from runtime.events import Endpoint, Orchestrator

logger = log.get("crewship.service.dispatch")

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
WAITING = "PENDING_HUMAN_INPUT"  # a run paused for human input (human.py)
RECHECK = 0.25       # seconds between looks while kickoffs wait for a free slot
RETRY_MAX = 1.0      # the longest pause between two tries of one call


@dataclass(frozen=True)
class KickoffLimits:
    concurrency: int = 4          # runs at once per instance
    queue: int = 100              # PENDING kickoffs per app before 429
    timeout: float = 3600.0       # seconds one run may take
    poll: float = 20.0            # seconds of one long poll


class _InstanceGoneError(Exception):
    """The instance a kickoff ran on is no longer live or draining."""

    def __init__(self, delivered: bool) -> None:
        super().__init__("instance gone")
        self.delivered = delivered


class _SettledError(Exception):
    """Someone else settled the kickoff (stopped, failed) while we were calling."""


class _TimedOutError(Exception):
    """The run's deadline passed while its instance did not answer."""


Finish = Callable[[str, dict[str, Any]], bool]
Waiting = Callable[[str, str, Endpoint, Any], Awaitable[None]]
WEBHOOK_POLL = 1.0   # seconds of one long poll while a run has task/step webhooks


class Dispatcher:
    def __init__(self, db: Database, supervisor: Orchestrator, client: RunnerClient,
                 limits: KickoffLimits, finish: Finish, relay: Relay | None = None,
                 waiting: Waiting | None = None) -> None:
        self.db = db
        self.supervisor = supervisor
        self.client = client
        self.limits = limits
        self._finish = finish
        self._relay = relay or (lambda due: None)
        self._waiting = waiting
        self._relays: dict[str, WebhookRelay] = {}
        self._paused: set[str] = set()  # kickoffs waiting for a human now
        self._busy: dict[str, int] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._gone: dict[str, str] = {}  # instance id -> why it died (recent ones)
        self._secretless: set[str] = set()  # serving instances already logged as unusable
        self._closing = False

    def following(self, kickoff_id: str) -> bool:
        """A driver settles this kickoff (also when its instance dies)."""
        return kickoff_id in self._drivers

    def rehook(self, kickoff_id: str, urls: dict[str, str]) -> None:
        """A resume brought new task/step webhook URLs (C.5: not carried over)."""
        relay = self._relays.get(kickoff_id)
        if relay is not None:  # the event stream (``webhooks``) is the kickoff's: it stays
            stream = {k: v for k, v in relay.urls.items() if k == "event"}
            relay.urls = {**urls, **stream}

    def instance_gone(self, instance_id: str, reason: str) -> None:
        self._gone[instance_id] = reason
        while len(self._gone) > 256:
            del self._gone[next(iter(self._gone))]

    def running(self, app: str) -> int:
        ids = {e.instance_id for e in self.supervisor.endpoints(app)}
        return sum(n for name, n in self._busy.items() if name in ids)

    def wake(self, app: str) -> None:
        """New work or a free slot: the app's loop looks at its queue now."""
        if self._closing:
            return
        event = self._wakes.get(app)
        if event is None:
            event = self._wakes[app] = asyncio.Event()
            self._spawn(self._loop(app, event))
        event.set()

    async def _loop(self, app: str, event: asyncio.Event) -> None:
        while True:
            event.clear()
            try:
                more = self._dispatch(app)
            except sqlite3.Error as exc:
                logger.warning("kickoff_dispatch_failed", app=app, error=str(exc))
                more = True
            if more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), RECHECK)
            else:
                await event.wait()

    def _dispatch(self, app: str) -> bool:
        """Claim the oldest PENDING kickoffs for free slots; True if some still wait."""
        endpoints = usable(app, self.supervisor.endpoints(app), self._secretless)
        free = {e.instance_id: self.limits.concurrency - self._busy.get(e.instance_id, 0)
                for e in endpoints}
        slots = sum(max(0, n) for n in free.values())
        rows = self.db.all(
            "SELECT kickoffs.* FROM kickoffs JOIN apps ON apps.id = app_id WHERE apps.name = ? "
            "AND state = 'PENDING' ORDER BY kickoffs.created_at, kickoffs.rowid LIMIT ?",
            app, slots + 1)
        loop = asyncio.get_running_loop()
        for row in rows[:slots]:
            endpoint = max(endpoints, key=lambda e: free[e.instance_id])
            if not self._claim(row["id"], endpoint):
                continue
            free[endpoint.instance_id] -= 1
            self.follow(app, row["id"], endpoint, run_body(row),
                        loop.time() + self.limits.timeout, hook_urls(row))
        return len(rows) > slots

    def _claim(self, kickoff_id: str, endpoint: Endpoint) -> bool:
        release = _release_of(endpoint.instance_id)
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE kickoffs SET state = 'RUNNING', instance = ?, "
                "release = COALESCE(?, release), started_at = ? "
                "WHERE id = ? AND state = 'PENDING'",
                (endpoint.instance_id, release, now(), kickoff_id))
            return cur.rowcount == 1

    def follow(self, app: str, kickoff_id: str, endpoint: Endpoint, body: dict[str, Any],
               deadline: float, hooks: dict[str, str] | None = None) -> None:
        """Send (or re-send) a RUNNING kickoff and settle it with its result."""
        if kickoff_id in self._drivers:
            return
        self._take(endpoint)
        relay = self._relays[kickoff_id] = WebhookRelay(app, kickoff_id, hooks or {}, self._relay,
                                                        track="webhooks" in body)
        self._drivers[kickoff_id] = self._spawn(
            self._drive(app, kickoff_id, endpoint, body, deadline, relay))

    def _take(self, endpoint: Endpoint) -> None:
        self._busy[endpoint.instance_id] = self._busy.get(endpoint.instance_id, 0) + 1

    def _give_back(self, endpoint: Endpoint) -> None:
        self._busy[endpoint.instance_id] -= 1
        if not self._busy[endpoint.instance_id]:
            del self._busy[endpoint.instance_id]

    async def _drive(self, app: str, kickoff_id: str, endpoint: Endpoint,
                     body: dict[str, Any], deadline: float, relay: WebhookRelay) -> None:
        sent = False
        try:
            reply = await self._call(app, kickoff_id, endpoint, "POST", "/runs", body,
                                     deadline=deadline)
            sent = True
            result = await self._run(app, kickoff_id, endpoint, reply, deadline, relay)
            if result is not None:
                self._finish(kickoff_id, result)
            if result is not None or self._settled(kickoff_id):
                await self._ack(app, kickoff_id, endpoint)
        except _InstanceGoneError as exc:
            if not sent and not exc.delivered:  # it never reached the runner: queue it again
                self._requeue(kickoff_id)
            else:
                reason = self._gone.get(endpoint.instance_id,
                                        f"instance {endpoint.instance_id} stopped")
                when = ("while the kickoff waited for human input: kick it off again"
                        if kickoff_id in self._paused else "during the run")
                self._finish(kickoff_id, {"state": "FAILURE", "error": f"{reason} {when}"})
        except _SettledError:
            await self._ack(app, kickoff_id, endpoint)
        except _TimedOutError:
            await self._stop_quietly(endpoint, kickoff_id)
            self._finish(kickoff_id, {"state": "FAILURE",
                                      "error": f"timed out after {self.limits.timeout:g} s"})
        except Exception:  # a bug: say so on the kickoff rather than leave it RUNNING
            logger.exception("kickoff_follow_failed", app=app, kickoff_id=kickoff_id)
            self._finish(kickoff_id, {"state": "FAILURE",
                                      "error": "internal error while following the run "
                                               "(see the server log)"})
        finally:
            self._give_back(endpoint)
            self._drivers.pop(kickoff_id, None)
            self._relays.pop(kickoff_id, None)
            self._paused.discard(kickoff_id)
            self.wake(app)

    async def _run(self, app: str, kickoff_id: str, endpoint: Endpoint, reply: Reply,
                   deadline: float, relay: WebhookRelay) -> dict[str, Any] | None:
        """The run's final status from ``POST /runs``'s reply on, or None when it went back
        to the queue."""
        if reply.status == 503:  # the instance is draining (a deploy swap): another takes it
            await asyncio.sleep(RECHECK)  # not at once: it may be the only instance left
            self._requeue(kickoff_id)
            return None
        if reply.status >= 300:
            return {"state": "FAILURE", "error": str(reply.body.get("message") or reply.body)}
        try:
            reply, failure = await self._until_end(app, kickoff_id, endpoint, reply, deadline,
                                                   relay)
        finally:
            if kickoff_id in self._paused:  # _drive gives one slot back at the end
                self._take(endpoint)
        if failure is not None:
            return failure
        if relay.urls:  # the webhooks recorded since the last look, up to the end
            final = await self._poll(app, kickoff_id, endpoint, 0.0, deadline, relay)
            if final.status == 200:
                reply = final
        return reply.body

    async def _until_end(self, app: str, kickoff_id: str, endpoint: Endpoint, reply: Reply,
                         deadline: float, relay: WebhookRelay) -> tuple[Reply, dict[str, Any] | None]:
        """Poll the run to its end: its last reply, and the failure to settle it with (or None)."""
        loop = asyncio.get_running_loop()
        left = 0.0  # of the deadline, while the run waits for a human
        while reply.body.get("state") not in TERMINAL:
            version = reply.body.get("human_version")
            if reply.body.get("state") == WAITING:  # no deadline, no slot: a human takes time
                if kickoff_id not in self._paused:
                    left = deadline - loop.time()
                await self._hold(app, kickoff_id, endpoint, reply.body.get("human_input"))
                reply = await self._poll(app, kickoff_id, endpoint, self.limits.poll, None, relay,
                                         version)
            else:
                if kickoff_id in self._paused:  # it goes on: the slot and the clock again
                    self._paused.discard(kickoff_id)
                    self._take(endpoint)
                    deadline = loop.time() + left
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._stop_quietly(endpoint, kickoff_id)
                    return reply, {"state": "FAILURE",
                                   "error": f"timed out after {self.limits.timeout:g} s"}
                wait = min(WEBHOOK_POLL if relay.urls else self.limits.poll, remaining)
                reply = await self._poll(app, kickoff_id, endpoint, wait, deadline, relay, version)
            if reply.status == 404:
                return reply, {"state": "FAILURE",
                               "error": f"instance {endpoint.instance_id} lost the run"}
        return reply, None

    async def _hold(self, app: str, kickoff_id: str, endpoint: Endpoint, request: Any) -> None:
        """The run waits for a human: its slot is free meanwhile; the request is recorded."""
        if kickoff_id not in self._paused:
            self._paused.add(kickoff_id)
            self._give_back(endpoint)
            self.wake(app)
        if self._waiting is not None:
            await self._waiting(app, kickoff_id, endpoint, request)

    async def _poll(self, app: str, kickoff_id: str, endpoint: Endpoint, wait: float,
                    deadline: float | None, relay: WebhookRelay, human: Any = None) -> Reply:
        """One long poll of the run (it also ends when a wait for a human starts or ends:
        ``human``, the version last seen); the task/step webhooks it recorded are relayed."""
        start = relay.seen
        after = f"&after={start}" if relay.track else ""
        if isinstance(human, int):
            after += f"&human={human}"
        reply = await self._call(app, kickoff_id, endpoint, "GET",
                                 f"/runs/{kickoff_id}?wait={wait:.1f}{after}",
                                 timeout=wait + 10, deadline=deadline)
        if reply.status == 200:
            relay.take(reply.body.pop("webhook_events", None), start=start)
        return reply

    async def _call(self, app: str, kickoff_id: str, endpoint: Endpoint, method: str,
                    path: str, body: Any = None, timeout: float = 10.0,
                    deadline: float | None = None) -> Reply:
        """One call, tried again while the instance lives, the kickoff is unsettled and its
        deadline has not passed."""
        delay = 0.05
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self.client.call(endpoint.peer, method, path, body, timeout)
            except ChannelError as exc:
                if self.supervisor.endpoint(app, endpoint.instance_id) is None:
                    raise _InstanceGoneError(exc.delivered) from exc
                if self._settled(kickoff_id):
                    raise _SettledError from exc
                if deadline is not None and loop.time() > deadline:
                    raise _TimedOutError from exc
                logger.info("runner_call_retried", app=app, kickoff_id=kickoff_id,
                            instance=endpoint.instance_id, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _ack(self, app: str, kickoff_id: str, endpoint: Endpoint) -> None:
        """Let the runner forget a settled run (a stopped run may take a moment to end)."""
        for _ in range(20):
            try:
                reply = await self.client.call(endpoint.peer, "POST", f"/runs/{kickoff_id}/ack")
                if reply.status != 409:
                    return
            except ChannelError:
                if self.supervisor.endpoint(app, endpoint.instance_id) is None:
                    return
            await asyncio.sleep(0.5)

    async def _stop_quietly(self, endpoint: Endpoint, kickoff_id: str) -> None:
        with contextlib.suppress(ChannelError):
            await self.client.call(endpoint.peer, "POST", f"/runs/{kickoff_id}/stop",
                                   timeout=5.0)

    def _settled(self, kickoff_id: str) -> bool:
        row = self.db.one("SELECT state FROM kickoffs WHERE id = ?", kickoff_id)
        return row is None or row["state"] in TERMINAL

    def _requeue(self, kickoff_id: str) -> None:
        self.db.execute("UPDATE kickoffs SET state = 'PENDING', instance = NULL, "
                        "started_at = NULL WHERE id = ? AND state = 'RUNNING'", kickoff_id)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Stop dispatching; runs go on in their instances, a next daemon collects them."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def usable(app: str, endpoints: list[Endpoint], logged: set[str]) -> list[Endpoint]:
    """The endpoints kickoffs can go to: those whose channel secret the daemon holds. One
    that serves without it can never be sent a run: said once per instance in the log,
    since its app's kickoffs otherwise wait with no word why."""
    for endpoint in endpoints:
        if not endpoint.secret and endpoint.instance_id not in logged:
            logged.add(endpoint.instance_id)
            while len(logged) > 256:
                logged.pop()
            logger.warning("instance_without_secret", app=app, instance=endpoint.instance_id,
                           hint="the daemon lost this instance's channel secret: 'restart "
                                f"{app}' starts instances with new ones")
    return [e for e in endpoints if e.secret]


def _release_of(instance_id: str) -> int | None:
    """``app-v3.1-abc123`` -> 3."""
    head, _, _ = instance_id.rpartition("-")
    _, _, name = head.rpartition("-v")
    version = name.partition(".")[0]
    return int(version) if version.isdigit() else None
