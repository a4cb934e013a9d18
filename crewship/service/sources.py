"""Where the Plus API's deployments get their code: ZIP uploads become commits, clone
URLs are fetched, and each app's source is remembered in its bare repo's git config.

* ``commit_tree``: a directory becomes a commit on the app's deploy branch, written
  in-process with dulwich (crewship/store/gitobjects.py), authored by the user behind
  the API token. The ref is moved only by the caller (``move_ref``), with a
  compare-and-swap under git's own lock file, so a concurrent push is never overwritten.
* ``classify_clone_url``: this server's own git URL for the app, an https/http/ssh/scp-style
  URL whose host passes the outbound check (``crewship.urls``), or a local path when the
  operator allows local clones; anything else is refused with the reason.
* ``fetch_head``: ``git fetch`` of that ``HEAD`` into the bare repo, pinned to the
  checked address, with git's transports limited to https/http/ssh.
* ``Source``: ``crewship.source`` (zip | git) and ``crewship.cloneUrl`` (sealed: a URL
  may carry a token) in the repo's config, so a later ``/deploy`` knows what to do and
  ``status`` can tell the client.
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
from crewship.store.sealing import Sealer
from crewship.urls import CloneURL, URLRefusedError, check_target, parse_clone_url

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
    fetch_url: str | None     # fetch from here (a remote URL pinned to its checked address,
    own_app: str | None       # or a local path); or: this server's repo of that app
    source_url: str = ""      # what the user gave (remembered for the next /deploy)
    git_options: tuple[str, ...] = ()   # ``-c`` settings of the fetch (address pinning)
    local: bool = False

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


FETCH_GUARD = ("-c", "protocol.allow=never", "-c", "protocol.file.allow=never",
               "-c", "protocol.https.allow=always", "-c", "protocol.http.allow=always",
               "-c", "protocol.ssh.allow=always", "-c", "http.followRedirects=false",
               "-c", "core.sshCommand=ssh -o BatchMode=yes -o ConnectTimeout=20",
               "-c", "submodule.recurse=false", "-c", "fetch.recurseSubmodules=false")


async def fetch_head(repo: Path, target: CloneTarget) -> str:
    """Fetch ``target``'s ``HEAD`` into ``repo``; returns the fetched commit.

    Remote fetches may use only https, http and ssh (``GIT_ALLOW_PROTOCOL`` and
    ``protocol.*.allow``), follow no redirect and connect to the checked address, so
    nothing the remote says can make git read a local path.
    """
    assert target.fetch_url is not None
    if target.local:
        options: tuple[str, ...] = ("-c", "protocol.allow=never", "-c", "protocol.file.allow=always")
        env = _git_env({"GIT_ALLOW_PROTOCOL": "file"})
    else:
        options = (*FETCH_GUARD, *target.git_options)
        env = _git_env({"GIT_ALLOW_PROTOCOL": "https:http:ssh"})
    shown = target.source_url[:100]
    try:
        await _git(repo, *options, "fetch", "--no-tags", "--quiet", "--", target.fetch_url,
                   "HEAD", env=env)
    except proc.CommandError as exc:
        if target.local:  # the same words whether or not the path exists
            raise CloneURLError(f"cannot fetch {shown}: no git repository the server can "
                                "read there") from None
        raise CloneURLError(f"cannot fetch {shown}: {exc.output.strip()[-200:]}") from None
    head = await branch_head(repo, "FETCH_HEAD")
    if head is None:
        raise CloneURLError(f"{shown} has no commit at HEAD to deploy")
    return head


def classify_clone_url(url: str, settings: Settings, data_dir: Path) -> CloneTarget:
    """What crewship can do with ``url``; ``CloneURLError`` saying why when nothing.

    Blocking (a remote host is resolved once, and checked like every outbound URL).
    """
    try:
        parsed = parse_clone_url(url, settings.allow_local_clone)
    except URLRefusedError as exc:
        raise CloneURLError(str(exc)) from None
    if parsed.kind == "local":
        return CloneTarget(_local_path(parsed.path, data_dir), None, parsed.url, local=True)
    if parsed.scheme == "ssh":
        own = _own_app(parsed, settings)
        if own is not None:
            return CloneTarget(None, own, parsed.url)
    policy = settings.url_policy()
    try:
        target = check_target(parsed.host, parsed.port, "the URL", policy)
    except URLRefusedError as exc:
        raise CloneURLError(str(exc)) from None
    fetch_url, options = _pinned(parsed, target.address)
    return CloneTarget(fetch_url, None, parsed.url, options)


def _pinned(parsed: CloneURL, address: str) -> tuple[str, tuple[str, ...]]:
    """The URL git fetches and the ``-c`` options that make it connect to ``address``."""
    if parsed.scheme in ("http", "https"):
        shown = f"[{address}]" if ":" in address else address
        return parsed.url, ("-c", f"http.curloptResolve={parsed.host}:{parsed.port}:{shown}")
    host = f"[{address}]" if ":" in address else address
    if "://" in parsed.url:
        parts = urlsplit(parsed.url)
        user = f"{parts.username}@" if parts.username else ""
        return f"ssh://{user}{host}:{parsed.port}{parts.path}", ()
    user = parsed.url.split("@", 1)[0]
    return f"{user}@{host}:{parsed.path}", ()


def _own_app(parsed: CloneURL, settings: Settings) -> str | None:
    """The app name if ``parsed`` is this server's own git URL of an app."""
    hosts = {settings.url_host, settings.host, *LOCAL_HOSTS}
    found = re.fullmatch(r"/?([a-z][a-z0-9-]{1,38})\.git/?", parsed.path)
    if parsed.host in hosts and parsed.port == settings.ssh_port and found is not None:
        return found.group(1)
    return None


def _local_path(text: str, data_dir: Path) -> str:
    """A local path outside the data dir (the file system is not probed)."""
    resolved = Path(text).absolute().resolve()
    if resolved == data_dir.resolve() or data_dir.resolve() in resolved.parents:
        raise CloneURLError(f"{text[:100]} is inside crewship's data directory: use the app's "
                            "git URL instead")
    return str(resolved)


async def read_source(repo: Path, sealer: Sealer) -> Source | None:
    kind = (await _git(repo, "config", "--get", "crewship.source", check=False)).text.strip()
    if kind not in ("zip", "git"):
        return None
    url = (await _git(repo, "config", "--get", "crewship.cloneUrl", check=False)).text.strip()
    return Source(kind, sealer.open(url) if url else None)


async def write_source(repo: Path, source: Source, sealer: Sealer) -> None:
    """Remembered in the repo's git config; the clone URL sealed (it may hold a token)."""
    await _git(repo, "config", "crewship.source", source.kind)
    if source.clone_url:
        await _git(repo, "config", "crewship.cloneUrl", sealer.seal(source.clone_url))
    else:
        await _git(repo, "config", "--unset-all", "crewship.cloneUrl", check=False)
