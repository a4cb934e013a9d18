"""Security regressions for restore: an archive is untrusted input. Members outside the
data dir, app names that are not app names, and a HEAD that is not a branch are refused
with one clear error, and the target is left as it was."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from crewship.config import Settings
from crewship.errors import CrewshipError
from crewship.service.restore import restore
from crewship.store import archive


def forged(path: Path, files: dict[str, bytes], **extra: Any) -> Path:
    """An archive whose manifest lists ``files`` with correct checksums (a forgery that
    passes ``verify``: only the restore's own checks can refuse it)."""
    manifest = {"format": archive.FORMAT, "id": "20260101T000000.000000Z", "apps": [],
                "schema_version": 1, "repos": {}, **extra,
                "members": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                            for n, b in files.items()}}
    blob = json.dumps(manifest).encode()
    entries = {archive.MANIFEST: blob,
               archive.MANIFEST_SUM: hashlib.sha256(blob).hexdigest().encode(), **files}
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("files", "extra", "message"), [
    ({"../escaped": b"x"}, {}, "outside the data dir"),
    ({"state.db": b"", "/tmp/abs": b"x"}, {}, "outside the data dir"),
    ({}, {"repos": {"../../etc": {"head": "refs/heads/main"}}}, "invalid app name"),
    ({}, {"repos": {"demo": {"head": "--upload-pack=touch /tmp/x"}}}, "is not a branch"),
    ({}, {"repos": {"demo": {"head": "refs/heads/../../config"}}}, "is not a branch"),
])
def test_a_forged_archive_is_refused_and_the_target_left_alone(
        tmp_path: Path, files: dict[str, bytes], extra: dict[str, Any], message: str) -> None:
    files = {"state.db": b"", **files}
    path = forged(tmp_path / "forged.tar", files, **extra)
    assert archive.verify(path).id   # the checksums are right
    target = tmp_path / "target"
    with pytest.raises(CrewshipError, match=message):
        restore(str(path), target, Settings(data_dir=target))
    assert not target.exists()
    assert not (tmp_path / "escaped").exists()


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(archive.ArchiveError, match="not a readable backup archive"):
        restore(str(junk), tmp_path / "t", Settings())
    assert not (tmp_path / "t").exists()
