"""Read a commit out of a bare repository: its whole tree, or one file.

``git archive`` streams the tree as a tar file; Python's ``tarfile`` unpacks it with
``filter="data"``, which refuses absolute paths, ``..`` entries, links that point out
of the tree and device files, and drops set-uid bits. The child git gets the
server's environment minus the variables git sets for hooks (``proc.base_env``), so
the export works from inside a post-receive hook's quarantine too.
"""

from __future__ import annotations

import asyncio
import re
import tarfile
import tempfile
from pathlib import Path

from crewship import proc
from crewship.errors import BuildError, InvalidInputError
from crewship.store import gitobjects

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
EXPORT_TIMEOUT = 300.0


def _check_commit(commit: str) -> None:
    """Only full object ids: never a ref name, never something git reads as an option."""
    if not _SHA.match(commit):
        raise InvalidInputError(f"not a full commit id: {commit!r}")


def _prepare_dest(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BuildError(f"export destination is not empty: {dest}")


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


async def export_commit(repo: Path, commit: str, dest: Path) -> None:
    """Write the tree of ``commit`` in bare ``repo`` into the empty directory ``dest``."""
    _check_commit(commit)
    _prepare_dest(dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
        archive = Path(tmp) / "tree.tar"
        argv = ["git", "--git-dir", str(repo), "archive", "--format=tar",
                f"--output={archive}", commit]
        try:
            await proc.run(argv, env=proc.base_env(), timeout=EXPORT_TIMEOUT)
        except proc.CommandError as exc:
            raise BuildError(f"cannot export commit {commit[:12]}: {exc.output.strip()}") from exc
        try:
            await asyncio.to_thread(_extract, archive, dest)
        except (tarfile.TarError, OSError) as exc:
            raise BuildError(f"cannot unpack commit {commit[:12]}: {exc}") from exc


async def read_file_at(repo: Path, commit: str, path: str) -> bytes | None:
    """The bytes of ``path`` at ``commit``, or None when the commit has no such file."""
    _check_commit(commit)
    return await asyncio.to_thread(gitobjects.read_file, repo, commit, path)
