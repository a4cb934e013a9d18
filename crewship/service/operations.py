"""The platform's use cases for running apps: status, logs, config, tokens, kickoffs.

Composed into ``Platform`` (crewship/service/platform.py) as ``platform.ops``, so every
front door still reaches one service.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewship import log
from crewship.errors import InvalidInputError, NotFoundError, TooLargeError
from crewship.model import AccessLevel, App, User, validate_config_key
from crewship.reporter import Reporter
from crewship.service.usage import usage_row
from crewship.store.releases import Release
from crewship.urls import check_urls

if TYPE_CHECKING:
    from crewship.config import Settings
    from crewship.service.access import AppAccess, Engine
    from crewship.service.audit import Audit
    from crewship.service.streaming import StreamSpec
    from crewship.store.apps import AppStore
    from crewship.store.releases import ConfigStore, TokenStore

logger = log.get("crewship.service.operations")


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``K=V`` arguments; names ``^[A-Z_][A-Z0-9_]*$``; the value may contain '='."""
    if not pairs:
        raise InvalidInputError("give at least one KEY=VALUE")
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInputError(f"{key[:60]!r} is not KEY=VALUE")
        out[validate_config_key(key)] = value
    return out


def _config_changed(app: App, caller: User, changes: dict[str, str], unset: bool,
                    release: int | None) -> None:
    """The log line of a config change: the keys, never the values."""
    logger.info("config_changed", app=app.name, user=caller.name, keys=sorted(changes),
                action="unset" if unset else "set", release=release)


@dataclass
class Operations:
    """Use cases over live apps: status, logs, config, tokens, kickoffs."""

    settings: Settings
    access: AppAccess
    engine: Engine
    apps_store: AppStore
    config_store: ConfigStore
    tokens: TokenStore
    audit: Audit | None = None

    # -------------------------------------------------------------------- status
    def status(self, caller: User, name: str) -> dict[str, Any]:
        app = self.access.app_for(caller, name, AccessLevel.READ)
        deployer = self.engine.require_deployer()
        runtime = deployer.supervisor.status(app.name)
        live = deployer.live(app)
        fresh = self.apps_store.get(app.name) or app
        uptime = int(time.time() - runtime.since) if runtime.since else None
        return {
            "app": app.name, "uuid": app.uuid, "state": runtime.state,
            "release": f"v{live.version}" if live else None,
            "commit": live.commit if live else None, "uptime_seconds": uptime,
            "restarts": runtime.restarts, "scale": fresh.scale,
            "url": self.settings.app_url(app.name), "git_url": self.settings.git_url(app.name),
            "sandbox": self.settings.sandboxed, "sandbox_note": self.settings.sandbox_note,
            "instances": [{"id": i.id, "port": i.port, "pid": i.pid, "state": i.state,
                           "restarts": i.restarts, **self._usage(i.id)}
                          for i in runtime.instances],
            "memory_exceeded": self._memory_exits(app.name),
            "kickoffs": self._kickoff_counts(fresh),
        }

    def _kickoff_counts(self, app: App) -> dict[str, int]:
        kickoffs = self.engine.kickoffs
        if kickoffs is None:
            return {"queued": 0, "running": 0, "waiting": 0}
        return {"queued": kickoffs.queue_length(app), "running": kickoffs.running(app),
                "waiting": kickoffs.waiting(app)}

    def _usage(self, instance_id: str) -> dict[str, Any]:
        monitor = self.engine.usage
        return usage_row(monitor.latest(instance_id) if monitor else None)

    def _memory_exits(self, app: str) -> list[dict[str, Any]]:
        monitor = self.engine.usage
        return monitor.memory_exits(app) if monitor else []

    # ---------------------------------------------------------------------- logs
    async def logs(self, caller: User, name: str, *, lines: int = 100,
                   follow: bool = False) -> AsyncIterator[str]:
        app = self.access.app_for(caller, name, AccessLevel.READ)
        if lines < 0 or lines > 100_000:
            raise InvalidInputError("-n must be between 0 and 100000")
        log = self.engine.require_deployer().app_log(app.name)
        if not follow:
            for line in await asyncio.to_thread(log.tail, lines):  # reads from the end
                yield line
            return
        async for line in log.follow(lines):
            yield line

    # -------------------------------------------------------------------- config
    def config(self, caller: User, name: str, *, show: bool = False) -> dict[str, str]:
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY if show else AccessLevel.READ)
        config = self.config_store.get(app)
        return config if show else {k: "*****" for k in config}

    async def config_set(self, caller: User, name: str, changes: dict[str, str],
                         report: Reporter, *, unset: bool = False,
                         restart: bool = True) -> Release | None:
        """``_config_set``, recorded in the audit trail with the keys (never the values)."""
        action = "config:unset" if unset else "config:set"
        summary = (f"{'unset' if unset else 'set'} {', '.join(sorted(changes))}"
                   + ("" if restart else " (no restart)"))
        if self.audit is None:
            return await self._config_set(caller, name, changes, report, unset=unset,
                                          restart=restart)
        with self.audit.action(caller, action, summary[:300], name):
            return await self._config_set(caller, name, changes, report, unset=unset,
                                          restart=restart)

    async def _config_set(self, caller: User, name: str, changes: dict[str, str],
                          report: Reporter, *, unset: bool = False,
                          restart: bool = True) -> Release | None:
        """Change config; a live app gets a new release through the health-checked swap.

        The stored config changes only when the new release is live (or the app has
        none): a failed swap changes nothing.
        """
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        deployer = self.engine.require_deployer()
        async with deployer.locked(app, caller.name, "config change", report):
            current = self.config_store.get(app)
            new = dict(current)
            for key, value in changes.items():
                if unset:
                    if key not in new:
                        raise NotFoundError(f"{name} has no config var {key}")
                    new.pop(key)
                else:
                    new[key] = value
            live = deployer.live(app)
            keys = ", ".join(sorted(changes))
            if live is None or not restart:
                self.config_store.replace(app, new)
                _config_changed(app, caller, changes, unset, None)
                report.step(f"{'Unset' if unset else 'Set'} {keys} "
                            f"({'applies on the next deploy' if live is None else 'not restarted'})")
                return None
            report.step(f"{'Unsetting' if unset else 'Setting'} {keys} and restarting {name}")
            release = await deployer.release_from(
                app, caller.name, kind="config", base=live, config=new, report=report,
                description=f"{'Unset' if unset else 'Set'} {keys}")
            self.config_store.replace(app, new)
            _config_changed(app, caller, changes, unset, release.version)
            return release

    # -------------------------------------------------------------------- tokens
    def token_info(self, caller: User, name: str) -> tuple[str, str, str | None]:
        """(prefix, created_at, new token or None): the first call makes one."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        info = self.tokens.info(app)
        if info is None:
            token = self.tokens.rotate(app)
            if self.audit is not None:
                self.audit.record(caller.name, "tokens:create", "created the crew API token",
                                  app=app.name)
            info = self.tokens.info(app)
            assert info is not None
            return info[0], info[1], token
        return info[0], info[1], None

    def rotate_token(self, caller: User, name: str) -> str:
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        token = self.tokens.rotate(app)
        if self.audit is not None:
            self.audit.record(caller.name, "tokens:rotate", "rotated the crew API token",
                              app=app.name)
        return token

    def app_by_token(self, name: str, token: str) -> App | None:
        """The app if ``token`` is its bearer token (the crew API's auth)."""
        app = self.apps_store.get(name)
        if app is None or not token or not self.tokens.check(app, token):
            return None
        return app

    # ------------------------------------------------------------------ kickoffs
    async def kickoff(self, app: App, inputs: Any, meta: Any = None,
                      webhooks: dict[str, str] | None = None, restore_from: Any = None,
                      human_webhook: dict[str, Any] | None = None,
                      stream: StreamSpec | None = None) -> str:
        """Start a run; inputs are bounded and each webhook URL (the event stream's,
        ``stream``, too) is checked first (a refused one is a 400, no run)."""
        self.check_kickoff_size(inputs, meta)
        urls = [(f"{kind}WebhookUrl", url) for kind, url in (webhooks or {}).items()]
        if human_webhook:
            urls.append(("humanInputWebhook.url", human_webhook["url"]))
        if stream is not None:
            urls.append(("webhooks.url", stream.url))
        await check_urls(urls, self.settings.url_policy())
        fresh = self.apps_store.get(app.name) or app
        return await self.engine.require_kickoffs().kickoff(fresh, inputs, meta, webhooks,
                                                            restore_from, human_webhook, stream)

    async def kickoff_resume(self, app: App, body: dict[str, Any],
                             webhooks: dict[str, str]) -> dict[str, Any]:
        """``POST /resume`` (C.5); the resume's webhook URLs replace the kickoff's."""
        await check_urls([(f"{kind}WebhookUrl", url) for kind, url in webhooks.items()],
                         self.settings.url_policy())
        return await self.engine.require_kickoffs().resume_run(app, body, webhooks)

    async def user_kickoff(self, caller: User, name: str, inputs: Any) -> str:
        """A kickoff started by a user (SSH ``kickoff``, the dashboard's form): DEPLOY access."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        return await self.kickoff(app, inputs)

    async def user_inputs(self, caller: User, name: str) -> dict[str, Any]:
        """The crew's inputs (as ``GET /inputs`` says them) for a user who may kick it off."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        return await self.crew_inputs_described(app)

    def check_kickoff_size(self, inputs: Any, meta: Any) -> None:
        """Inputs and meta within ``max_kickoff_inputs`` bytes of JSON each, else a 413."""
        limit = self.settings.max_kickoff_inputs
        for what, value in (("inputs", inputs), ("meta", meta)):
            try:
                size = len(json.dumps(value).encode())
            except (TypeError, ValueError, RecursionError):
                raise InvalidInputError(f"the kickoff's {what} are not plain JSON") from None
            if size > limit:
                raise TooLargeError(f"the kickoff's {what} are {size} bytes of JSON, over the "
                                    f"limit of {limit} (CREWSHIP_MAX_KICKOFF_INPUTS)")

    async def kickoff_status(self, app: App, kickoff_id: str) -> dict[str, Any]:
        return await self.engine.require_kickoffs().status(app, kickoff_id)

    async def kickoff_stop(self, app: App, kickoff_id: str) -> dict[str, Any]:
        return await self.engine.require_kickoffs().stop(app, kickoff_id)

    def serving_error(self, app: App) -> str | None:
        """Why the app refuses kickoffs right now (503), or None: it accepts (queues) them."""
        fresh = self.apps_store.get(app.name) or app
        kickoffs = self.engine.kickoffs
        if kickoffs is None:
            return "this server runs without a runtime"
        return kickoffs.refusal(fresh)

    def serving(self, app: App) -> dict[str, Any]:
        """``GET /apps/NAME/``: healthy instances, kickoffs queued and running."""
        fresh = self.apps_store.get(app.name) or app
        kickoffs = self.engine.require_kickoffs()
        healthy = len(kickoffs.supervisor.endpoints(app.name))
        return {"status": "healthy" if healthy else "degraded", "healthy_instances": healthy,
                "scale": fresh.scale, "queued": kickoffs.queue_length(fresh),
                "running": kickoffs.running(fresh)}

    async def crew_inputs_described(self, app: App) -> dict[str, Any]:
        """Required ``inputs`` and ``optional_inputs`` with their defaults."""
        fresh = self.apps_store.get(app.name) or app
        return await self.engine.require_kickoffs().described(fresh)

