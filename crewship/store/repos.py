"""Bare git repositories under ``repos/``, each with crewship's hooks installed."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from crewship import proc
from crewship.errors import InvalidInputError
from crewship.model import validate_app_name
from crewship.store import gitobjects

HOOKS_DIR = Path(__file__).resolve().parents[2] / "hooks"
HOOK_NAMES = ("post-receive",)


class Repos:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, app: str) -> Path:
        """The repo path for ``app``, confined under ``repos/``."""
        validate_app_name(app)
        path = (self.root / f"{app}.git").resolve()
        if path.parent != self.root.resolve():
            raise InvalidInputError(f"invalid app name {app!r}")
        return path

    def exists(self, app: str) -> bool:
        return (self.path(app) / "HEAD").exists()

    async def create(self, app: str) -> Path:
        path = self.path(app)
        if not self.exists(app):
            await proc.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)])
            await proc.run(["git", "-C", str(path), "config", "receive.denyDeletes", "true"])
            await proc.run(["git", "-C", str(path), "config", "receive.denyNonFastForwards", "false"])
        self.install_hooks(app)
        return path

    def install_hooks(self, app: str) -> None:
        """Copy hooks/ into the repo, run by the daemon's own interpreter."""
        hooks = self.path(app) / "hooks"
        hooks.mkdir(exist_ok=True)
        for sample in hooks.glob("*.sample"):
            sample.unlink()
        for name in HOOK_NAMES:
            source = (HOOKS_DIR / name).read_text()
            body = source.split("\n", 1)[1] if source.startswith("#!") else source
            target = hooks / name
            tmp = target.with_suffix(".tmp")
            tmp.write_text(f"#!{sys.executable}\n{body}")
            tmp.chmod(0o755)
            tmp.replace(target)

    def delete(self, app: str) -> None:
        shutil.rmtree(self.path(app), ignore_errors=True)

    def names(self) -> list[str]:
        return sorted(p.name[:-4] for p in self.root.glob("*.git") if (p / "HEAD").exists())

    async def update_ref(self, app: str, ref: str, new: str, old: str) -> None:
        """Set ``ref`` to ``new`` only if it is still ``old`` (ZERO_SHA deletes it)."""
        await asyncio.to_thread(gitobjects.set_ref, self.path(app), ref, new, old)

    async def branches(self, app: str) -> list[str]:
        return await asyncio.to_thread(gitobjects.branches, self.path(app))

    async def commit_info(self, app: str, sha: str) -> gitobjects.CommitInfo:
        """Author, message and time of a pushed commit."""
        return await asyncio.to_thread(gitobjects.commit_info, self.path(app), sha)
