"""Off-machine copies of backup archives through restic (Debian's ``restic``).

Any restic backend works (a local path, ``sftp:``, ``s3:``, ``rest:``): restic chunks,
deduplicates and encrypts each archive. An archive is stored from stdin under its own
file name (``/crewship-backup-<id>.tar`` in the snapshot) and tagged ``crewship``, so it
is read back with ``restic dump SNAPSHOT /NAME``. Backend options (``-o sftp.command=...``)
come from ``CREWSHIP_BACKUP_RESTIC_OPTIONS``. Blocking: callers run these in a thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crewship.errors import CrewshipError, InvalidInputError

TAG = "crewship"
TIMEOUT = 3600.0
SNAPSHOT_RE = re.compile(r"^[0-9a-f]{8,64}$")


class ResticError(CrewshipError):
    """restic is missing, or a restic command failed."""


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: str
    paths: tuple[str, ...]

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def file_name(self) -> str:
        return Path(self.paths[0]).name if self.paths else ""


def is_snapshot_id(text: str) -> bool:
    return SNAPSHOT_RE.fullmatch(text) is not None


class Restic:
    def __init__(self, repo: str, password_file: Path, options: Sequence[str] = (),
                 cache_dir: Path | None = None, binary: str = "restic") -> None:
        if not repo:
            raise InvalidInputError("CREWSHIP_BACKUP_RESTIC_REPO is empty")
        if not password_file.is_file():
            raise InvalidInputError(f"the restic password file {password_file} does not exist: "
                                    "set CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE to a file holding "
                                    "the repository's password")
        self.repo = repo
        self.password_file = password_file
        self.options = list(options)
        self.cache_dir = cache_dir
        self.binary = binary

    @property
    def where(self) -> str:
        """The repository as shown to users (never a password: restic keeps it in a file)."""
        return f"restic:{self.repo}"

    def _argv(self, *args: str) -> list[str]:
        found = shutil.which(self.binary)
        if found is None:
            raise ResticError("restic is not installed: apt-get install restic "
                              "(or unset CREWSHIP_BACKUP_RESTIC_REPO)")
        argv = [found]
        for option in self.options:
            argv += ["-o", option]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        return [*argv, *args]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update({"RESTIC_REPOSITORY": self.repo,
                    "RESTIC_PASSWORD_FILE": str(self.password_file)})
        return env

    def _run(self, *args: str, stdin: Any = None, stdout: Any = None,
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = self._argv(*args)
        try:
            result = subprocess.run(argv, env=self._env(), timeout=TIMEOUT, check=False,
                                    stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired as exc:
            raise ResticError(f"restic {args[0]} timed out after {TIMEOUT:g} s") from exc
        if check and result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else f"exit status {result.returncode}"
            raise ResticError(f"restic {args[0]} failed on {self.repo}: {tail}")
        return result

    def ensure_repo(self) -> None:
        """Initialise the repository the first time it is used."""
        if self._run("cat", "config", check=False).returncode != 0:
            self._run("init")

    def store(self, archive: Path) -> str:
        """Store ``archive`` (from stdin, under its own name); returns the snapshot id."""
        self.ensure_repo()
        with archive.open("rb") as fh:
            result = self._run("backup", "--json", "--stdin", "--stdin-filename", archive.name,
                               "--tag", TAG, "--host", TAG, stdin=fh)
        for line in reversed(result.stdout.decode(errors="replace").splitlines()):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return self.find(str(message["snapshot_id"])).id   # the full id
        raise ResticError("restic backup printed no snapshot id")

    def snapshots(self) -> list[Snapshot]:
        result = self._run("snapshots", "--json", "--tag", TAG)
        found = json.loads(result.stdout or b"[]") or []
        return sorted((Snapshot(str(s["id"]), str(s.get("time", "")),
                                tuple(s.get("paths") or ())) for s in found),
                      key=lambda s: s.time)

    def find(self, snapshot_id: str) -> Snapshot:
        if not is_snapshot_id(snapshot_id):
            raise InvalidInputError(f"{snapshot_id[:70]!r} is not a restic snapshot id")
        matches = [s for s in self.snapshots() if s.id.startswith(snapshot_id)]
        if len(matches) != 1:
            what = "no" if not matches else "more than one"
            raise InvalidInputError(f"{what} crewship snapshot {snapshot_id} in {self.repo} "
                                    "(see 'restic snapshots --tag crewship')")
        return matches[0]

    def fetch(self, snapshot_id: str, dest: Path) -> Snapshot:
        """Write the archive of ``snapshot_id`` to ``dest``."""
        snapshot = self.find(snapshot_id)
        with dest.open("xb") as out:
            self._run("dump", snapshot.id, f"/{snapshot.file_name}", stdout=out)
        return snapshot

    def forget(self, keep: int) -> None:
        """Keep the newest ``keep`` crewship snapshots; prune the data of the others."""
        self._run("forget", "--tag", TAG, "--group-by", "host,tags", "--keep-last", str(keep),
                  "--prune")
