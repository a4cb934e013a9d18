"""Backup archives: one tar file holding a consistent copy of a data directory's state.

    crewship-backup-<id>.tar
        manifest.json           format, versions, apps, and size + sha256 of every member
        manifest.sha256         the sha256 of manifest.json
        state.db                SQLite's online backup of state.db (consistent while written)
        repos/<app>.bundle      ``git bundle create --all`` of each app repository
        host_keys/<file>        the SSH host key (same fingerprint after a restore)
        secrets.key             the config encryption key, when the data dir has one

Environments, builds and images are not in it: a restore rebuilds them from each live
release's commit and lock file. An archive is staged under ``tmp/``, written to a
temporary name beside its final one, fsynced and renamed, so an interrupted backup never
leaves a file that looks complete. ``verify`` re-reads every member against the manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from crewship.config import Layout
from crewship.errors import CrewshipError, InvalidInputError
from crewship.model import validate_app_name

FORMAT = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
STATE = "state.db"
CHUNK = 1 << 20
GIT_TIMEOUT = 600.0


class ArchiveError(CrewshipError):
    """An archive is unreadable, incomplete, or a checksum does not match."""


@dataclass(frozen=True)
class Member:
    name: str
    source: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def apps(self) -> list[str]:
        return [str(a) for a in self.data.get("apps", [])]

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        members: dict[str, dict[str, Any]] = self.data["members"]
        return members

    @property
    def repos(self) -> dict[str, dict[str, Any]]:
        repos: dict[str, dict[str, Any]] = self.data.get("repos", {})
        return repos


def new_backup_id(moment: dt.datetime | None = None) -> str:
    """``20261201T073500.123456Z``: the time it was made, so ids sort by time."""
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _git(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    result = subprocess.run(["git", *args], capture_output=True, text=True, env=env,
                            timeout=GIT_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ArchiveError(f"git {args[0] if args[0] != '-C' else args[2]} failed: {tail}")
    return result.stdout


# ------------------------------------------------------------------------ snapshot
def snapshot_state(db_path: Path, dest: Path) -> int:
    """A consistent copy of ``db_path`` through SQLite's online backup API.

    A reader of a WAL database does not block writers: the copy is taken in one step
    (one read transaction), so it is the state at one moment. Returns the schema version.
    """
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(str(dest))
    try:
        source.backup(target)
        version = int(target.execute("PRAGMA user_version").fetchone()[0])
    finally:
        target.close()
        source.close()
    dest.chmod(0o600)
    return version


def bundle_repo(repo: Path, dest: Path) -> dict[str, Any]:
    """``git bundle create --all`` of one bare repo; an empty repo has no bundle."""
    head = _git("-C", str(repo), "symbolic-ref", "-q", "HEAD").strip() or "refs/heads/main"
    refs = _git("-C", str(repo), "for-each-ref", "--format=%(objectname) %(refname)")
    found: dict[str, str] = {}
    for line in refs.splitlines():
        sha, _, name = line.partition(" ")
        if name:
            found[name] = sha
    info: dict[str, Any] = {"head": head, "refs": found}
    if found:
        _git("-C", str(repo), "bundle", "create", "--quiet", str(dest), "--all")
    return info


def stage(layout: Layout, work: Path) -> tuple[list[Member], dict[str, Any]]:
    """Copy what a backup holds into ``work``; (members, facts for the manifest)."""
    members: list[Member] = []

    def add(name: str, path: Path) -> None:
        members.append(Member(name, path, sha256_file(path), path.stat().st_size))

    schema = snapshot_state(layout.state_db, work / STATE)
    add(STATE, work / STATE)
    (work / "repos").mkdir()
    repos: dict[str, dict[str, Any]] = {}
    for repo in sorted(layout.repos.glob("*.git")):
        if not (repo / "HEAD").exists():
            continue
        app = repo.name.removesuffix(".git")
        bundle = work / "repos" / f"{app}.bundle"
        repos[app] = bundle_repo(repo, bundle)
        if bundle.exists():
            add(f"repos/{app}.bundle", bundle)
    for key in sorted(layout.host_keys.glob("*")):
        if key.is_file() and not key.name.endswith(".tmp"):
            add(f"host_keys/{key.name}", key)
    if layout.secrets_key.is_file():
        add(layout.secrets_key.name, layout.secrets_key)
    return members, {"schema_version": schema, "repos": repos}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        crewship = version("crewship")
    except PackageNotFoundError:
        crewship = "unknown"
    git = _git("--version").strip().removeprefix("git version ")
    return {"crewship": crewship, "sqlite": sqlite3.sqlite_version, "git": git}


# -------------------------------------------------------------------------- write
def write_archive(dest: Path, members: list[Member], facts: dict[str, Any],
                  backup_id: str, apps: list[str]) -> Manifest:
    """Write the tar to a temporary name, fsync it, rename it to ``dest``, fsync the dir."""
    manifest = Manifest({
        "format": FORMAT, "id": backup_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace(
            "+00:00", "Z"),
        "versions": versions(), "apps": apps, **facts,
        "members": {m.name: {"sha256": m.sha256, "size": m.size} for m in members},
    })
    blob = json.dumps(manifest.data, indent=2, sort_keys=True).encode()
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with tmp.open("xb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, blob)
                _add_bytes(tar, MANIFEST_SUM, hashlib.sha256(blob).hexdigest().encode())
                for member in members:
                    _add_file(tar, member)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.chmod(0o600)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(dest.parent)
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(blob), 0o600, int(dt.datetime.now().timestamp())
    tar.addfile(info, io.BytesIO(blob))


def _add_file(tar: tarfile.TarFile, member: Member) -> None:
    info = tarfile.TarInfo(member.name)
    info.size, info.mode = member.size, 0o600
    info.mtime = int(member.source.stat().st_mtime)
    with member.source.open("rb") as fh:
        tar.addfile(info, fh)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- verify
@contextlib.contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    if not path.is_file():
        raise InvalidInputError(f"no such backup archive: {path}")
    try:
        with tarfile.open(path, mode="r:") as tar:
            yield tar
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path.name} is not a readable backup archive ({exc}): "
                           "it is damaged; use another backup") from exc


def _manifest(tar: tarfile.TarFile, name: str) -> Manifest:
    blobs: dict[str, bytes] = {}
    for wanted in (MANIFEST, MANIFEST_SUM):
        try:
            fh = tar.extractfile(wanted)
        except KeyError:
            fh = None
        if fh is None:
            raise ArchiveError(f"{name} has no {wanted}: it is not a crewship backup")
        blobs[wanted] = fh.read()
    if hashlib.sha256(blobs[MANIFEST]).hexdigest() != blobs[MANIFEST_SUM].decode(
            errors="replace").strip():
        raise ArchiveError(f"{name}: the manifest's checksum does not match: the archive is "
                           "damaged; use another backup")
    data = json.loads(blobs[MANIFEST])
    if data.get("format") != FORMAT:
        raise ArchiveError(f"{name} has archive format {data.get('format')!r}; this crewship "
                           f"reads format {FORMAT}")
    return Manifest(data)


def read_manifest(path: Path) -> Manifest:
    with _open(path) as tar:
        return _manifest(tar, path.name)


def verify(path: Path) -> Manifest:
    """Re-read every member of the archive against the manifest; raises ``ArchiveError``."""
    with _open(path) as tar:
        manifest = _manifest(tar, path.name)
        seen: set[str] = set()
        for info in tar:
            if info.name in (MANIFEST, MANIFEST_SUM):
                continue
            expected = manifest.members.get(info.name)
            if expected is None or not info.isfile():
                raise ArchiveError(f"{path.name} holds {info.name!r}, which its manifest does "
                                   "not list: the archive is damaged or was altered")
            fh = tar.extractfile(info)
            assert fh is not None
            if _digest(fh) != expected["sha256"] or info.size != expected["size"]:
                raise ArchiveError(f"{path.name}: the checksum of {info.name} does not match "
                                   "its manifest: the archive is damaged; use another backup")
            seen.add(info.name)
        missing = sorted(set(manifest.members) - seen)
        if missing:
            raise ArchiveError(f"{path.name} lacks {', '.join(missing)}: it is incomplete")
    return manifest


def _digest(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def extract(path: Path, dest: Path, manifest: Manifest) -> None:
    """Extract the members of a verified archive into ``dest`` (checked against the manifest)."""
    with _open(path) as tar:
        for info in tar:
            if info.name in (MANIFEST, MANIFEST_SUM):
                continue
            if info.name not in manifest.members or not info.isfile():
                raise ArchiveError(f"{path.name} holds an unexpected member {info.name!r}")
            target = (dest / info.name).resolve()
            if dest.resolve() not in target.parents:
                raise ArchiveError(f"{path.name} holds a path outside the data dir")
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = tar.extractfile(info)
            assert fh is not None
            with target.open("xb") as out:
                shutil.copyfileobj(fh, out, CHUNK)
            target.chmod(0o600)
            if sha256_file(target) != manifest.members[info.name]["sha256"]:
                raise ArchiveError(f"{path.name}: {info.name} changed while it was read")


HEAD_RE = re.compile(r"^refs/heads/[A-Za-z0-9][A-Za-z0-9._/-]{0,200}$")


def restore_repo(bundle: Path | None, repo: Path, head: str) -> None:
    """A bare repo at ``repo`` holding every ref of ``bundle`` (None: an empty repo)."""
    validate_app_name(repo.name.removesuffix(".git"))
    if not HEAD_RE.fullmatch(head) or ".." in head:
        raise ArchiveError(f"the backup names {head[:60]!r} as a repository's HEAD, which is "
                           "not a branch: the archive was altered")
    _git("init", "--quiet", "--bare", "--initial-branch=main", str(repo))
    _git("-C", str(repo), "config", "receive.denyDeletes", "true")
    _git("-C", str(repo), "config", "receive.denyNonFastForwards", "false")
    if bundle is not None:
        _git("-C", str(repo), "fetch", "--quiet", str(bundle), "+refs/*:refs/*")
    _git("-C", str(repo), "symbolic-ref", "HEAD", head)
