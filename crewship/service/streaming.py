"""Event streaming, the ``webhooks`` field of ``POST /kickoff`` (reference C.3, C.7).

A kickoff may ask for crewAI's event-bus events by name (``crew_kickoff_started``,
``task_completed``, ``llm_call_started``, ``tool_usage_finished``, ``flow_started``,
``method_execution_finished``, ... and the crew's own custom events)::

    "webhooks": {"events": ["crew_kickoff_started", "llm_call_started"],
                 "url": "https://receiver/hook", "realtime": false,
                 "authentication": {"strategy": "bearer", "token": "..."}}
                 # or {"strategy": "basic", "username": "...", "password": "..."}

``parse_webhooks`` checks the field (400 for a wrong type, 422 for a wrong value; the URL
is then checked against the outbound policy like every webhook). The runner records the
named events in order (``runtime/runner/events.py``); the dispatcher fetches them with the
task/step webhooks and hands them here. ``EventStreamer`` POSTs them to the URL, one
kickoff at a time and in order: ``{"kickoff_id", "meta", "events": [{"id", "execution_id",
"timestamp", "type", "data"}, ...]}``, batched (up to ``batch_max`` events or ``window``
seconds) unless ``realtime`` is true (one event per POST, as soon as it is fetched), with
the ``Authorization`` header the kickoff gave, each POST retried (``notify.Deliverer``)
before the next one goes. The credentials are stored sealed with the kickoff
(``Database.sealer``) and never reach the crew's process.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewship import log
from crewship.errors import InvalidInputError, UnprocessableInputError
from crewship.service.human import auth_headers
from crewship.service.notify import Deliverer
from crewship.store.sealing import Sealer
from crewship.urls import validate_url

logger = log.get("crewship.service.streaming")

FIELDS = ("events", "url", "realtime", "authentication")
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
MAX_EVENTS = 100
MAX_SECRET = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EXAMPLE = ('{"events": ["crew_kickoff_started", "llm_call_started"], "url": "https://...", '
           '"realtime": false, "authentication": {"strategy": "bearer", "token": "..."}}')


@dataclass(frozen=True)
class StreamSpec:
    events: tuple[str, ...]
    url: str
    realtime: bool = False
    auth: tuple[tuple[str, str], ...] = ()   # ("strategy", ...), ("token"|"username"|...)

    def header(self) -> dict[str, str]:
        """The ``Authorization`` header the receiver asked for (none without credentials)."""
        return auth_headers({"authentication": dict(self.auth)})

    def stored(self, sealer: Sealer) -> dict[str, Any]:
        """What the kickoff row keeps (``webhooks_json["events"]``): credentials sealed."""
        auth = sealer.seal(json.dumps(dict(self.auth))) if self.auth else None
        return {"events": list(self.events), "url": self.url, "realtime": self.realtime,
                "auth": auth}

    @classmethod
    def load(cls, stored: Any, sealer: Sealer) -> StreamSpec | None:
        if not isinstance(stored, dict) or not stored.get("url"):
            return None
        auth = json.loads(sealer.open(stored["auth"])) if stored.get("auth") else {}
        return cls(tuple(stored.get("events") or ()), str(stored["url"]),
                   bool(stored.get("realtime")), tuple(sorted(auth.items())))


def _unknown(value: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(str(k) for k in value if k not in allowed)
    if extra:
        raise UnprocessableInputError(
            f"'{where}' has unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}: "
            f"it takes {', '.join(allowed)}")


def _secret(auth: dict[str, Any], key: str, strategy: str) -> str:
    value = auth.get(key)
    where = f"webhooks.authentication.{key}"
    if not isinstance(value, str) or not value:
        raise UnprocessableInputError(f"'{where}' is required for the {strategy} strategy "
                                      "(a non-empty string)")
    if len(value) > MAX_SECRET or _CONTROL.search(value):
        raise UnprocessableInputError(f"'{where}' must be at most {MAX_SECRET} characters "
                                      "with no control characters")
    return value


def _authentication(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidInputError("'webhooks.authentication' must be an object: "
                                '{"strategy": "bearer", "token": "..."} or '
                                '{"strategy": "basic", "username": "...", "password": "..."}')
    strategy = value.get("strategy")
    if strategy == "bearer":
        _unknown(value, ("strategy", "token"), "webhooks.authentication")
        return (("strategy", "bearer"), ("token", _secret(value, "token", "bearer")))
    if strategy == "basic":
        _unknown(value, ("strategy", "username", "password"), "webhooks.authentication")
        username = _secret(value, "username", "basic")
        if ":" in username:
            raise UnprocessableInputError("'webhooks.authentication.username' may not "
                                          "contain ':' (basic authentication)")
        return (("password", _secret(value, "password", "basic")), ("strategy", "basic"),
                ("username", username))
    raise UnprocessableInputError("'webhooks.authentication.strategy' must be 'bearer' or "
                                  f"'basic', not {str(strategy)[:40]!r}")


def _events(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError("'webhooks.events' must be a list of crewAI event names, "
                                'like ["crew_kickoff_started", "llm_call_started"]')
    if not value:
        raise UnprocessableInputError("'webhooks.events' is empty: name the crewAI events "
                                      "to stream, like task_completed or llm_call_started")
    if len(value) > MAX_EVENTS:
        raise UnprocessableInputError(f"'webhooks.events' names {len(value)} events, over "
                                      f"the limit of {MAX_EVENTS}")
    for name in value:
        if not EVENT_NAME.match(name):
            raise UnprocessableInputError(
                f"'webhooks.events' has {name[:60]!r}, which is no crewAI event name: event "
                "names are lowercase words joined by '_', like task_completed")
    return tuple(dict.fromkeys(value))


def parse_webhooks(value: Any) -> StreamSpec:
    """The ``webhooks`` field of a kickoff, checked (no network: the URL's host is
    resolved and checked by the caller, against the outbound policy)."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"'webhooks' must be a JSON object like {EXAMPLE}")
    _unknown(value, FIELDS, "webhooks")
    events = _events(value.get("events"))
    if value.get("url") is None:
        raise InvalidInputError("'webhooks.url' is required: the http(s) URL the events are "
                                "POSTed to")
    try:
        url = validate_url(value["url"], "webhooks.url")
    except ValueError:
        raise InvalidInputError("webhooks.url is not a valid http(s) URL") from None
    realtime = value.get("realtime", False)
    if not isinstance(realtime, bool):
        raise InvalidInputError("'webhooks.realtime' must be true or false")
    return StreamSpec(events, url, realtime, _authentication(value.get("authentication")))


# ----------------------------------------------------------------------- delivery
Done = Callable[[bool, int], None]
_END = object()


@dataclass
class _Stream:
    spec: StreamSpec
    meta: Any
    queue: asyncio.Queue[Any]
    task: asyncio.Task[None] | None = None


class EventStreamer:
    """Per kickoff, an ordered queue of streamed events and one task that POSTs them."""

    def __init__(self, deliverer: Deliverer, *, window: float = 1.0, batch_max: int = 100,
                 idle: float = 120.0, done: Done | None = None) -> None:
        self.deliverer = deliverer
        self.window, self.batch_max, self.idle = window, batch_max, idle
        self.done = done or (lambda ok, count: None)
        self._streams: dict[str, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def push(self, kickoff_id: str, spec: StreamSpec, meta: Any, event: dict[str, Any]) -> None:
        """Queue one event of a kickoff (in the order they are pushed)."""
        stream = self._streams.get(kickoff_id)
        if stream is None:
            stream = self._streams[kickoff_id] = _Stream(spec, meta, asyncio.Queue())
            stream.task = asyncio.create_task(self._work(kickoff_id, stream))
            self._tasks.add(stream.task)
            stream.task.add_done_callback(self._tasks.discard)
        stream.queue.put_nowait(event)

    def close(self, kickoff_id: str) -> None:
        """The kickoff ended: what is queued goes out (batched: at once), then the task ends."""
        stream = self._streams.pop(kickoff_id, None)
        if stream is not None:
            stream.queue.put_nowait(_END)

    async def _work(self, kickoff_id: str, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                first = await asyncio.wait_for(stream.queue.get(), self.idle)
            except TimeoutError:  # a kickoff nobody closed (its run was lost): let it go
                if stream.queue.empty() and self._streams.get(kickoff_id) is stream:
                    del self._streams[kickoff_id]
                    return
                continue
            if first is _END:
                return
            batch, ended = [first], False
            deadline = loop.time() + self.window
            while not stream.spec.realtime and len(batch) < self.batch_max:
                remaining = deadline - loop.time()
                if stream.queue.empty() and remaining <= 0:
                    break
                try:
                    item = (stream.queue.get_nowait() if not stream.queue.empty()
                            else await asyncio.wait_for(stream.queue.get(), remaining))
                except TimeoutError:
                    break
                if item is _END:
                    ended = True
                    break
                batch.append(item)
            await self._post(kickoff_id, stream, batch)
            if ended:
                return

    async def _post(self, kickoff_id: str, stream: _Stream, batch: list[Any]) -> None:
        body = {"kickoff_id": kickoff_id, "meta": stream.meta, "events": batch}
        ok = await self.deliverer.deliver(stream.spec.url, body, what="event_stream",
                                          headers=stream.spec.header())
        self.done(ok, len(batch))

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the streams in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        """Stop: events not yet delivered are dropped (logged)."""
        if self._streams:
            logger.warning("event_streams_dropped", kickoffs=len(self._streams))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()
        await self.deliverer.aclose()
