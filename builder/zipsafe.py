"""Unpacking an uploaded project ZIP (``crewai deploy``'s upload) without trusting it.

``check`` reads only the archive's directory and refuses, with one clear message
(``UnsafeArchiveError``), anything that could write outside the destination or
exhaust the disk:

* not a ZIP file, an empty one, or an encrypted entry;
* more than ``MAX_ENTRIES`` entries, or more than ``MAX_BYTES`` unpacked;
* a name that is absolute (``/x``, ``C:x``), holds a ``..`` part, a backslash or a
  NUL byte, or names a ``.git`` directory (git would read it as a nested repository);
* a symlink or any other special file (only regular files and directories pass);
* the same path twice, or a path that is both a file and a directory.

``extract`` re-checks and writes regular files only (``O_EXCL``, mode 0644, or 0755
when the entry was executable), counting the bytes it really writes, so a header
that lies about sizes cannot get past ``MAX_BYTES`` either.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crewship.errors import InvalidInputError

MAX_ENTRIES = 20_000
MAX_BYTES = 200 * 1024 * 1024
_CHUNK = 1024 * 1024


class UnsafeArchiveError(InvalidInputError):
    """The upload is not a ZIP crewship will unpack; nothing was written."""


@dataclass(frozen=True)
class Entry:
    name: str          # the normalised relative POSIX path
    size: int
    executable: bool
    is_dir: bool


def _mb(value: int) -> str:
    return f"{value / (1024 * 1024):.0f} MB"


def safe_name(raw: str) -> str:
    """``raw`` as a relative POSIX path inside the archive root, or ``UnsafeArchiveError``."""
    shown = raw[:80]
    if "\x00" in raw or "\\" in raw:
        raise UnsafeArchiveError(f"unsafe path {shown!r} in the ZIP (backslash or NUL byte)")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(f"absolute path {shown!r} in the ZIP: entries must be "
                                 "relative to the project root")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise UnsafeArchiveError(f"path {shown!r} in the ZIP leaves the project (it has '..')")
    if any(p.lower() == ".git" for p in parts):
        raise UnsafeArchiveError(f"path {shown!r} in the ZIP is inside a .git directory: "
                                 "upload the project's files, not its repository")
    if not parts:
        raise UnsafeArchiveError(f"empty path {shown!r} in the ZIP")
    return "/".join(parts)


def _entry(info: zipfile.ZipInfo) -> Entry:
    name = safe_name(info.filename)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeArchiveError(f"{name!r} in the ZIP is a symlink: crewship does not "
                                 "unpack links (upload the file it points to instead)")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(f"{name!r} in the ZIP is a special file (not a regular file)")
    if info.flag_bits & 0x1:
        raise UnsafeArchiveError(f"{name!r} in the ZIP is encrypted")
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    return Entry(name, 0 if is_dir else info.file_size, bool(mode & 0o111), is_dir)


def _check_layout(entries: list[Entry]) -> None:
    files: set[str] = set()
    dirs: set[str] = set()
    for entry in entries:
        if entry.is_dir:
            dirs.add(entry.name)
            continue
        if entry.name in files:
            raise UnsafeArchiveError(f"{entry.name!r} appears twice in the ZIP")
        files.add(entry.name)
        parents = PurePosixPath(entry.name).parents
        dirs.update(str(p) for p in parents if str(p) != ".")
    clash = sorted(files & dirs)
    if clash:
        raise UnsafeArchiveError(f"{clash[0]!r} in the ZIP is both a file and a directory")
    if not files:
        raise UnsafeArchiveError("the ZIP holds no files")


def check(path: Path, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> list[Entry]:
    """The archive's entries if it is safe to unpack; ``UnsafeArchiveError`` otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise UnsafeArchiveError("the upload is not a ZIP archive") from None
    if len(infos) > max_entries:
        raise UnsafeArchiveError(f"the ZIP has {len(infos)} entries; crewship unpacks at "
                                 f"most {max_entries}")
    entries = [_entry(info) for info in infos]
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise UnsafeArchiveError(f"the ZIP unpacks to {_mb(total)}; crewship unpacks at most "
                                 f"{_mb(max_bytes)}")
    _check_layout(entries)
    return entries


def extract(path: Path, dest: Path, *, max_entries: int = MAX_ENTRIES,
            max_bytes: int = MAX_BYTES) -> list[Entry]:
    """Check ``path`` and unpack it into the empty directory ``dest``."""
    entries = check(path, max_entries=max_entries, max_bytes=max_bytes)
    written = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info, entry in zip(archive.infolist(), entries, strict=True):
                target = dest.joinpath(*entry.name.split("/"))
                if entry.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = _copy(archive, info, target, entry, written, max_bytes)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise UnsafeArchiveError(f"the ZIP could not be unpacked: {exc}") from None
    return entries


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, entry: Entry,
          written: int, max_bytes: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o755 if entry.executable else 0o644)
    with os.fdopen(fd, "wb") as out, archive.open(info) as source:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise UnsafeArchiveError(f"the ZIP unpacks to more than {_mb(max_bytes)}")
            out.write(chunk)
    return written
