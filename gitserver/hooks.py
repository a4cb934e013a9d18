"""The daemon's side of the hook hand-off: a unix socket the post-receive hook calls.

The SSH layer registers each ``git-receive-pack`` it spawns under an unguessable push
id; the hook sends ``{push_id, app, pusher, updates}`` as one JSON line and gets back
JSON lines ``{"line": ...}`` (progress) and finally ``{"exit": N}``. The pusher is
taken from the registration, never from what the hook claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from crewship import log
from crewship.errors import CrewshipError
from crewship.model import RefUpdate
from crewship.reporter import LineReporter
from crewship.service.platform import Platform

logger = log.get("crewship.hooks")


@dataclass
class PendingPush:
    app: str
    user: str
    outcome: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class HookServer:
    def __init__(self, platform: Platform, path: Path) -> None:
        self.platform = platform
        self.path = path
        self.pending: dict[str, PendingPush] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def register(self, app: str, user: str) -> str:
        push_id = secrets.token_urlsafe(24)
        self.pending[push_id] = PendingPush(app, user)
        return push_id

    def finish(self, push_id: str) -> int | None:
        """Forget a push; return the hook's verdict, or None if the hook never ran."""
        pending = self.pending.pop(push_id, None)
        return pending.outcome if pending else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), 30)
            message = json.loads(raw)
            pending = self.pending.get(str(message.get("push_id", "")))
            if pending is None:
                writer.write(b'{"line": "crewship: unknown push; push through the SSH endpoint"}\n'
                             b'{"exit": 1}\n')
                return
            updates = [RefUpdate(u["old"], u["new"], u["ref"]) for u in message["updates"]]
            status = await self._run(pending, updates, writer)
            pending.outcome = status
            writer.write(json.dumps({"exit": status}).encode() + b"\n")
        except (ValueError, KeyError, TypeError, TimeoutError):
            logger.warning("hook_message_rejected")
            writer.write(b'{"exit": 1}\n')
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    async def _run(self, pending: PendingPush, updates: list[RefUpdate],
                   writer: asyncio.StreamWriter) -> int:
        def sink(line: str) -> None:
            if not writer.is_closing():
                writer.write(json.dumps({"line": line}).encode() + b"\n")

        report = LineReporter(sink)
        try:
            return await self.platform.receive_push(pending.app, pending.user, updates, report)
        except CrewshipError as exc:
            report.warn(str(exc))
            return 1
        except Exception:
            ref = secrets.token_hex(4)
            logger.exception("push_crashed", app=pending.app, ref=ref)
            report.warn(f"internal error (ref {ref})")
            return 1
