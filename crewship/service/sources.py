"""Where the Plus API's deployments get their code: ZIP uploads become commits, clone
URLs are fetched, and each app's source is remembered in its bare repo's git config.

* ``commit_tree``: a directory becomes a commit on the app's deploy branch, written
  in-process with dulwich (crewship/store/gitobjects.py), authored by the user behind
  the API token. The ref is moved only by the caller (``move_ref``), with a
  compare-and-swap under git's own lock file, so a concurrent push is never overwritten.
* ``classify_clone_url``: a local path, or this server's own git URL for the app;
  anything else cannot be reached from here and is refused with the reason.
* ``fetch_head``: ``git fetch`` of a local repository's ``HEAD`` into the bare repo.
* ``Source``: ``crewship.source`` (zip | git) and ``crewship.cloneUrl`` in the repo's
  config, so a later ``/deploy`` knows what to do and ``status`` can tell the client.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from crewship import proc
from crewship.config import Settings
from crewship.errors import ConflictError, InvalidInputError
from crewship.store import gitobjects

GIT_TIMEOUT = 120.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_SHA = re.compile(r"^[0-9a-f]{40}$")
# No user or system git config, no prompts, no helpers a project could name.
ISOLATED = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0", "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_ALLOW_PROTOCOL": "file"}


class CloneURLError(InvalidInputError):
    """A ``repo_clone_url`` crewship cannot deploy from; the message says why."""


@dataclass(frozen=True)
class Source:
    kind: str                 # "zip" | "git"
    clone_url: str | None     # for "git": what to fetch again on /deploy (None: own repo)


@dataclass(frozen=True)
class CloneTarget:
    local_path: Path | None   # fetch from here
    own_app: str | None       # or: this server's repo of that app (already holds the code)


def _git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return proc.base_env({**ISOLATED, **(extra or {})})


async def _git(repo: Path, *args: str, env: dict[str, str] | None = None,
               check: bool = True, cwd: Path | None = None) -> proc.Result:
    return await proc.run(["git", "--git-dir", str(repo), *args], env=env or _git_env(),
                          timeout=GIT_TIMEOUT, check=check, cwd=cwd)


async def branch_head(repo: Path, ref: str) -> str | None:
    return await asyncio.to_thread(gitobjects.ref_target, repo, ref)


async def commit_tree(repo: Path, work: Path, *, parent: str | None, author: str,
                      message: str) -> str:
    """A commit of every file under ``work`` (parent ``parent``); returns its id."""
    return await asyncio.to_thread(gitobjects.commit_directory, repo, work, parent=parent,
                                   author=author, message=message)


async def move_ref(repo: Path, ref: str, new: str, old: str | None) -> None:
    """``ref`` := ``new`` only if it still is ``old`` (None: only if it does not exist)."""
    try:
        await asyncio.to_thread(gitobjects.set_ref, repo, ref, new, old)
    except ConflictError:
        raise ConflictError(f"{ref.removeprefix('refs/heads/')} moved while this deploy was "
                            "prepared (someone pushed): try again") from None


async def fetch_head(repo: Path, source: Path) -> str:
    """Fetch ``source``'s ``HEAD`` into ``repo``; returns the fetched commit."""
    try:
        await _git(repo, "-c", "protocol.allow=never", "-c", "protocol.file.allow=always",
                   "fetch", "--no-tags", "--quiet", "--", str(source), "HEAD")
    except proc.CommandError as exc:
        raise CloneURLError(f"cannot fetch {source}: {exc.output.strip()[-200:]}") from None
    head = await branch_head(repo, "FETCH_HEAD")
    if head is None:
        raise CloneURLError(f"{source} has no commit at HEAD to deploy")
    return head


def classify_clone_url(url: str, settings: Settings, data_dir: Path) -> CloneTarget:
    """What crewship can do with ``url``; ``CloneURLError`` saying why when nothing."""
    text = url.strip()
    own = settings.git_url("NAME")
    if not text:
        raise CloneURLError("is empty")
    parts = urlsplit(text)
    if parts.scheme == "ssh":
        return _own_url(parts.hostname or "", parts.port, parts.path, settings, own, text)
    if parts.scheme in ("", "file") and (parts.path or "").startswith("/"):
        return CloneTarget(_local_path(Path(parts.path), data_dir), None)
    raise CloneURLError(
        f"{text[:100]!r} cannot be fetched by this crewship server: it deploys from its own "
        f"git URL ({own}, push there with git) or a local path on the server; or remove the "
        "origin remote so 'crewai deploy' uploads a ZIP")


def _own_url(host: str, port: int | None, path: str, settings: Settings, own: str,
             text: str) -> CloneTarget:
    hosts = {settings.url_host, settings.host, *LOCAL_HOSTS}
    found = re.fullmatch(r"/([a-z][a-z0-9-]{1,38})\.git/?", path)
    if host not in hosts or (port or 22) != settings.ssh_port or found is None:
        raise CloneURLError(
            f"{text[:100]!r} is not this crewship server's git URL ({own}): crewship fetches "
            "only from there or from a local path; or remove the origin remote so "
            "'crewai deploy' uploads a ZIP")
    return CloneTarget(None, found.group(1))


def _local_path(path: Path, data_dir: Path) -> Path:
    resolved = path.resolve()
    if resolved == data_dir or data_dir in resolved.parents:
        raise CloneURLError(f"{path} is inside crewship's data directory: use the app's git "
                            "URL instead")
    if not resolved.is_dir():
        raise CloneURLError(f"{path} is not a directory on the crewship server")
    return resolved


async def read_source(repo: Path) -> Source | None:
    kind = (await _git(repo, "config", "--get", "crewship.source", check=False)).text.strip()
    if kind not in ("zip", "git"):
        return None
    url = (await _git(repo, "config", "--get", "crewship.cloneUrl", check=False)).text.strip()
    return Source(kind, url or None)


async def write_source(repo: Path, source: Source) -> None:
    await _git(repo, "config", "crewship.source", source.kind)
    if source.clone_url:
        await _git(repo, "config", "crewship.cloneUrl", source.clone_url)
    else:
        await _git(repo, "config", "--unset-all", "crewship.cloneUrl", check=False)
