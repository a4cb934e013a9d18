"""Git objects and refs of the apps' bare repos, read and written in-process with dulwich.

The transport stays the real ``git-receive-pack``/``git-upload-pack`` (DESIGN 2); what the
daemon itself does to a repo (resolve a ref, move it back after a failed deploy with a
compare-and-swap, read a file or a commit's author and message, turn a directory into a
commit for a ZIP deployment) goes through dulwich instead of a ``git`` child process each.
Dulwich takes git's own ``.lock`` files, so a concurrent push and a ref update here never
overwrite each other. Every function blocks: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dulwich.errors import NotGitRepository
from dulwich.index import commit_tree
from dulwich.objects import Blob, Commit, ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from crewship.errors import ConflictError, InvalidInputError, NotFoundError

ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    message: str
    time: int  # seconds since the epoch (author time)


def _ref(name: str) -> Ref:
    return Ref(name.encode())


def _oid(sha: str) -> ObjectID:
    return ObjectID(sha.encode())


def _open(repo: Path) -> Repo:
    try:
        return Repo(str(repo))
    except NotGitRepository as exc:
        raise NotFoundError(f"no git repository at {repo.name}") from exc


def ref_target(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` points at (``FETCH_HEAD`` included), or None."""
    with _open(repo) as r:
        if ref == "FETCH_HEAD":
            fetched = Path(r.controldir()) / "FETCH_HEAD"
            first = fetched.read_text().split("\t", 1)[0].strip() if fetched.exists() else ""
            return first if len(first) == 40 else None
        try:
            sha = r.refs[_ref(ref)]
        except KeyError:
            return None
        obj = r.object_store[sha] if sha in r.object_store else None  # noqa: SIM401
        return sha.decode() if isinstance(obj, Commit) else None


def set_ref(repo: Path, ref: str, new: str, old: str | None) -> None:
    """``ref`` := ``new`` only if it still is ``old`` (None or ZERO_SHA: only if absent);
    ``new`` == ZERO_SHA deletes it. ``ConflictError`` when the ref moved meanwhile."""
    expected = None if old is None or old == ZERO_SHA else _oid(old)
    with _open(repo) as r:
        if new == ZERO_SHA:
            done = r.refs.remove_if_equals(_ref(ref), expected)
        elif expected is None:
            done = r.refs.add_if_new(_ref(ref), _oid(new))
        else:
            done = r.refs.set_if_equals(_ref(ref), expected, _oid(new))
    if not done:
        raise ConflictError(f"{ref.removeprefix('refs/heads/')} moved meanwhile (someone pushed): "
                            "try again")


def branches(repo: Path) -> list[str]:
    with _open(repo) as r:
        return sorted(f"refs/heads/{name.decode()}" for name in r.refs.keys(base=_ref("refs/heads/")))


def commit_info(repo: Path, sha: str) -> CommitInfo:
    with _open(repo) as r:
        try:
            obj = r.object_store[_oid(sha)]
        except KeyError as exc:
            raise NotFoundError(f"no commit {sha[:12]} in this repository") from exc
        if not isinstance(obj, Commit):
            raise NotFoundError(f"{sha[:12]} is not a commit")
        return CommitInfo(sha, obj.author.decode(errors="replace"),
                          obj.message.decode(errors="replace").strip(), obj.author_time)


def read_file(repo: Path, commit: str, path: str) -> bytes | None:
    """The bytes of ``path`` at ``commit``, or None when the commit has no such file."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise InvalidInputError(f"not a repository path: {path!r}")
    with _open(repo) as r:
        try:
            obj = r.object_store[_oid(commit)]
            if not isinstance(obj, Commit):
                return None
            tree = r.object_store[obj.tree]
            _, sha = tree.lookup_path(r.object_store.__getitem__, path.encode())  # type: ignore[attr-defined]
            blob = r.object_store[sha]
        except KeyError:
            return None
        return blob.as_raw_string() if isinstance(blob, Blob) else None


def commit_directory(repo: Path, work: Path, *, parent: str | None, author: str,
                     message: str) -> str:
    """A commit of every file under ``work`` (regular files, executables and symlinks; ``.git``
    skipped) with ``parent``, authored by ``author``; returns its id. Moves no ref."""
    with _open(repo) as r:
        store = r.object_store
        entries: list[tuple[bytes, ObjectID, int]] = []
        for path in sorted(_files(work)):
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                blob, mode = Blob.from_string(os.readlink(path).encode()), 0o120000
            else:
                blob = Blob.from_string(path.read_bytes())
                mode = 0o100755 if info.st_mode & 0o111 else 0o100644
            store.add_object(blob)
            entries.append((path.relative_to(work).as_posix().encode(), blob.id, mode))
        commit = Commit()
        commit.tree = commit_tree(store, entries)
        commit.parents = [_oid(parent)] if parent else []
        commit.author = f"{author} <{author}@crewship>".encode()
        commit.committer = b"crewship <crewship@localhost>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.encoding = b"UTF-8"
        commit.message = message.encode() + (b"" if message.endswith("\n") else b"\n")
        store.add_object(commit)
        return commit.id.decode()


def _files(root: Path) -> list[Path]:
    """Files and symlinks under ``root`` (a symlink to a directory is stored as a link)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        links = [d for d in dirnames if Path(dirpath, d).is_symlink()]
        found += [Path(dirpath, name) for name in filenames + links]
    return found
