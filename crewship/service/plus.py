"""The use cases behind the Plus API (``crewai deploy ...``), over the one platform.

Every deploy still goes through ``Platform.receive_push`` -> ``Deployer.on_push``,
exactly like a ``git push``: a ZIP upload first becomes a commit on the app's deploy
branch (authored by the API token's user), a git deployment fetches its commit (or
finds it already pushed), and then the same ref update is handed over. So
``git log`` shows every deploy, a failed one puts the branch back, and rollback works
the same whatever the source.

The request does the checks and the commit (fast, each problem a clear error that
changes nothing); the deploy itself runs as an asyncio task, because the client
gives every JSON call 5 s. ``env`` values become config (merged into the stored
config, applied by that deploy).

    PlusError(InvalidInputError)   one field's problem: the API answers 422 {field: [msg]}
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from builder import zipsafe
from crewship import log
from crewship.errors import ConflictError, CrewshipError, InvalidInputError, NotFoundError
from crewship.model import APP_NAME_RE, AccessLevel, App, RefUpdate, User, validate_config_key
from crewship.service import deployments, sources
from crewship.service.platform import Platform
from crewship.store.gitobjects import ZERO_SHA

logger = log.get("crewship.service.plus")
DEFAULT_BRANCH = "refs/heads/main"


class PlusError(InvalidInputError):
    """A problem with one request field; ``field`` names it for the 422 body."""

    http_status = 422

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def app_name_for(project_name: str) -> str:
    """``[project].name`` (``demo_crew``) as an app name (``demo-crew``), like the client."""
    candidate = re.sub(r"[_\s.]+", "-", project_name.strip().lower())
    if not APP_NAME_RE.fullmatch(candidate):
        raise PlusError("name", f"{project_name[:50]!r} does not make a valid crewship app name "
                                "(2-39 characters: lowercase letters, digits and '-', starting "
                                "with a letter): rename [project].name")
    return candidate


def parse_env(raw: dict[str, str]) -> dict[str, str]:
    """``env`` values as config: names checked, one pair of surrounding quotes removed."""
    out: dict[str, str] = {}
    for key, value in raw.items():
        try:
            validate_config_key(key)
        except InvalidInputError as exc:
            raise PlusError("env", str(exc)) from None
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        out[key] = text
    return out


class PlusService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tracked: dict[str, deployments.Tracked] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lookup
    def app(self, caller: User, ident: str, *, by_name: bool,
            need: AccessLevel = AccessLevel.READ) -> App:
        if by_name:
            return self.platform.app_for(caller, app_name_for(ident), need)
        try:
            return self.platform.app_by_uuid(caller, ident, need)
        except NotFoundError:
            raise NotFoundError(f"no crew with uuid {ident[:60]!r} among yours (see 'crewai "
                                "deploy list')") from None

    def _repo(self, app: App) -> Path:
        return self.platform.repos.path(app.name)

    def _branch(self, app: App) -> str:
        fresh = self.platform.apps_store.get(app.name) or app
        return fresh.deploy_branch or DEFAULT_BRANCH

    # ----------------------------------------------------------------- create
    async def create_from_zip(self, caller: User, name: str, upload: Path,
                              env: dict[str, str]) -> dict[str, Any]:
        app_name = app_name_for(name)
        config = parse_env(env)
        self._check_free(caller, app_name)
        async with self._unpacked(upload) as work:
            app = await self.platform.create_app(caller, app_name)
            try:
                update = await self._commit(caller, app, work, "crewai deploy create (ZIP)")
                await sources.write_source(self._repo(app), sources.Source("zip", None),
                                           self.platform.db.sealer)
            except BaseException:
                await self.platform.destroy_app(caller, app.name, force=True)
                raise
        return self._start(caller, app, config, update)

    async def create_from_git(self, caller: User, name: str, url: str,
                              env: dict[str, str]) -> dict[str, Any]:
        app_name = app_name_for(name)
        config = parse_env(env)
        target = await self._clone_target(url)
        if target.own_app is not None and target.own_app != app_name:
            raise PlusError("repo_clone_url", f"is the git URL of app {target.own_app}, but this "
                                              f"project deploys as {app_name}: use that app's "
                                              "URL or rename [project].name")
        existing = self.platform.apps_store.get(app_name)
        if existing is None:
            app = await self.platform.create_app(caller, app_name)
        elif target.own_app is None or self.platform.level(caller, existing) < AccessLevel.DEPLOY:
            raise self._taken(caller, existing)
        else:
            app = existing
            self._check_idle(app)
        source = sources.Source("git", target.source_url if target.own_app is None else None)
        try:
            await sources.write_source(self._repo(app), source, self.platform.db.sealer)
            return await self._deploy_git(caller, app, source, config)
        except BaseException:
            if existing is None:
                await self.platform.destroy_app(caller, app.name, force=True)
            raise

    # --------------------------------------------------------------- redeploy
    async def update_from_zip(self, caller: User, app: App, upload: Path,
                              env: dict[str, str]) -> dict[str, Any]:
        config = parse_env(env)
        self._check_idle(app)
        async with self._unpacked(upload) as work:
            update = await self._commit(caller, app, work, "crewai deploy push (ZIP)")
        await sources.write_source(self._repo(app), sources.Source("zip", None),
                                   self.platform.db.sealer)
        return self._start(caller, app, config, update)

    async def redeploy(self, caller: User, app: App) -> dict[str, Any]:
        self._check_idle(app)
        source = (await sources.read_source(self._repo(app), self.platform.db.sealer)
                  or sources.Source("git", None))
        return await self._deploy_git(caller, app, source, {})

    async def _deploy_git(self, caller: User, app: App, source: sources.Source,
                          config: dict[str, str]) -> dict[str, Any]:
        repo, branch = self._repo(app), self._branch(app)
        head = await sources.branch_head(repo, branch)
        if source.kind == "git" and source.clone_url:
            target = await self._clone_target(source.clone_url)  # checked again each time
            new = await self._fetch(repo, target)
            if new != head:
                await sources.move_ref(repo, branch, new, head)
            return self._start(caller, app, config, RefUpdate(head or ZERO_SHA, new, branch))
        if head is None:
            self._start(caller, app, config, None)
            return {**self._summary(app), "status": deployments.NOT_DEPLOYED,
                    "next_step": f"git push {self.platform.settings.git_url(app.name)} main"}
        return self._start(caller, app, config, RefUpdate(head, head, branch))

    async def _fetch(self, repo: Path, target: sources.CloneTarget) -> str:
        try:
            return await sources.fetch_head(repo, target)
        except sources.CloneURLError as exc:
            raise PlusError("repo_clone_url", str(exc)) from None
        except ValueError:  # urlsplit or its port refuse it (ssh://host:99999/x.git)
            raise PlusError("repo_clone_url", "is not a valid URL") from None

    async def _clone_target(self, url: str) -> sources.CloneTarget:
        try:
            return await asyncio.to_thread(sources.classify_clone_url, url,
                                           self.platform.settings, self.platform.layout.root)
        except sources.CloneURLError as exc:
            raise PlusError("repo_clone_url", str(exc)) from None
        except ValueError:  # urlsplit or its port refuse it (ssh://host:99999/x.git)
            raise PlusError("repo_clone_url", "is not a valid URL") from None

    # ----------------------------------------------------------------- checks
    def _check_free(self, caller: User, app_name: str) -> None:
        existing = self.platform.apps_store.get(app_name)
        if existing is not None:
            raise self._taken(caller, existing)

    def _taken(self, caller: User, existing: App) -> PlusError:
        mine = self.platform.level(caller, existing) >= AccessLevel.DEPLOY
        hint = (f": it is your app (uuid {existing.uuid}); deploy to it with 'crewai deploy push'"
                if mine else "")
        return PlusError("name", f"has already been taken ({existing.name}){hint}")

    def _check_idle(self, app: App) -> None:
        tracked = self.tracked.get(app.name)
        if tracked is not None and tracked.running:
            raise ConflictError(f"a deploy of {app.name} is already running: wait until "
                                "'crewai deploy status' says it is done")

    def _unpacked(self, upload: Path) -> contextlib.AbstractAsyncContextManager[Path]:
        return unpacked(upload, self.platform.layout.tmp)

    async def _commit(self, caller: User, app: App, work: Path, message: str) -> RefUpdate:
        repo, branch = self._repo(app), self._branch(app)
        head = await sources.branch_head(repo, branch)
        commit = await sources.commit_tree(repo, work, parent=head, author=caller.name,
                                           message=message)
        await sources.move_ref(repo, branch, commit, head)
        return RefUpdate(head or ZERO_SHA, commit, branch)

    # ------------------------------------------------------------ background
    def _start(self, caller: User, app: App, config: dict[str, str],
               update: RefUpdate | None) -> dict[str, Any]:
        newest = self.platform.releases.list(app, 1)
        tracked = deployments.Tracked(app.name, newest[0].version if newest else 0)
        self.tracked[app.name] = tracked
        report = deployments.DeployLog(self.platform.layout.app_logs(app.name)
                                       / deployments.LOG_FILE)
        task = asyncio.create_task(self._run(caller, app, config, update, tracked, report))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("plus_deploy_enqueued", app=app.name, user=caller.name,
                    commit=update.new[:12] if update else None)
        return {**self._summary(app), "status": deployments.ENQUEUED}

    async def _run(self, caller: User, app: App, config: dict[str, str], update: RefUpdate | None,
                   tracked: deployments.Tracked, report: deployments.DeployLog) -> None:
        try:
            stored = self.platform.ops.config(caller, app.name, show=True)
            changes = {k: v for k, v in config.items() if stored.get(k) != v}
            if changes:
                await self.platform.ops.config_set(caller, app.name, changes, report, restart=False)
            if update is not None:
                status = await self.platform.receive_push(app.name, caller.name, [update], report)
                if status != 0:
                    tracked.error = report.failure() or "the deploy failed"
        except CrewshipError as exc:
            report.warn(f"{deployments.FAILED_PREFIX}{exc}")
            tracked.error = str(exc)
        except Exception:
            ref = secrets.token_hex(4)
            logger.exception("plus_deploy_crashed", app=app.name, ref=ref)
            tracked.error = f"internal error (ref {ref})"
            report.warn(f"{deployments.FAILED_PREFIX}{tracked.error}")
        finally:
            newest = self.platform.releases.list(app, 1)
            tracked.after = newest[0].version if newest else 0
            tracked.running = False

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ reads
    def _summary(self, app: App) -> dict[str, Any]:
        settings = self.platform.settings
        return {"uuid": app.uuid, "name": app.name, "deployment_id": app.uuid,
                "public_url": settings.app_url(app.name)}

    def status(self, app: App) -> dict[str, Any]:
        fresh = self.platform.apps_store.get(app.name) or app
        newest = self.platform.releases.list(fresh, 1)
        deployer = self.platform.engine.deployer
        runtime = deployer.supervisor.status(app.name).state if deployer else "idle"
        words = deployments.label(newest[0] if newest else None, fresh.live_release is not None,
                                  runtime, fresh.scale, self.tracked.get(app.name))
        live = self.platform.releases.get(fresh, fresh.live_release) if fresh.live_release else None
        return {**self._summary(fresh), **words,
                "release": f"v{live.version}" if live else None,
                "commit": live.commit if live else None,
                "git_url": self.platform.settings.git_url(app.name)}

    async def full_status(self, app: App) -> dict[str, Any]:
        source = await sources.read_source(self._repo(app), self.platform.db.sealer)
        zip_source = source is not None and source.kind == "zip"
        return {**self.status(app), "source_type": "zip" if zip_source else "any_git",
                "zip_deployment": zip_source}

    def logs(self, app: App) -> list[dict[str, str]]:
        stored = deployments.read_log(self.platform.layout.app_logs(app.name)
                                      / deployments.LOG_FILE)
        if stored is not None:
            return stored
        deployer = self.platform.engine.deployer
        lines = deployer.app_log(app.name).tail(2000) if deployer else []
        return deployments.system_lines(lines)

    def crews(self, caller: User) -> list[dict[str, Any]]:
        return [{"name": a.name, "uuid": a.uuid, "status": self.status(a)["status"]}
                for a in self.platform.apps(caller)]

    async def remove(self, caller: User, app: App) -> None:
        self.platform.app_for(caller, app.name, AccessLevel.ADMIN)
        self._check_idle(app)
        await self.platform.destroy_app(caller, app.name, force=True)
        self.tracked.pop(app.name, None)

    def page(self, caller: User, app_uuid: str) -> tuple[App, dict[str, Any],
                                                          list[dict[str, Any]]]:
        """The deployment page's data, for a caller who can read the app."""
        app = self.platform.app_by_uuid(caller, app_uuid)
        releases = self.platform.releases.list(app, 20)
        rows = [{"version": f"v{r.version}", "kind": r.kind, "status": r.status,
                 "commit": r.commit[:12], "created_at": r.created_at,
                 "description": r.description} for r in releases]
        return app, self.status(app), rows


@contextlib.asynccontextmanager
async def unpacked(upload: Path, tmp_root: Path) -> AsyncIterator[Path]:
    """A checked upload unpacked into ``tmp/plus-*/tree``; removed on exit."""
    scratch = await asyncio.to_thread(_scratch, tmp_root)
    tree = scratch / "tree"
    try:
        try:
            await asyncio.to_thread(zipsafe.extract, upload, tree)
        except zipsafe.UnsafeArchiveError as exc:
            raise PlusError("zip_file", f"is refused: {exc}") from None
        yield tree
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _scratch(tmp_root: Path) -> Path:
    tmp_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="plus-", dir=tmp_root))
    (scratch / "tree").mkdir()
    return scratch
