"""Uploaded ZIPs: each unsafe case refused with one clear message, nothing written."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from builder import zipsafe
from builder.zipsafe import UnsafeArchiveError


def make_zip(path: Path, entries: dict[str, bytes], *, mode: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode and name in mode:
                info.external_attr = mode[name] << 16
            archive.writestr(info, data)
    return path


PROJECT = {"pyproject.toml": b"[project]\nname='demo'\n", "src/demo/crew.py": b"print(1)\n"}


def test_a_project_zip_unpacks_with_its_modes(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "ok.zip", {**PROJECT, "bin/run.sh": b"#!/bin/sh\n"},
                      mode={"bin/run.sh": stat.S_IFREG | 0o755})
    dest = tmp_path / "out"
    dest.mkdir()
    entries = zipsafe.extract(upload, dest)
    assert sorted(e.name for e in entries) == ["bin/run.sh", "pyproject.toml", "src/demo/crew.py"]
    assert (dest / "src/demo/crew.py").read_bytes() == b"print(1)\n"
    assert (dest / "bin/run.sh").stat().st_mode & 0o111
    assert not (dest / "pyproject.toml").stat().st_mode & 0o111


@pytest.mark.parametrize(("name", "words"), [
    ("../evil.py", "leaves the project"),
    ("src/../../evil.py", "leaves the project"),
    ("/etc/passwd", "absolute path"),
    ("C:/windows/evil.py", "absolute path"),
    ("src\\..\\evil.py", "backslash"),
    (".git/hooks/post-checkout", ".git directory"),
    ("sub/.GIT/config", ".git directory"),
])
def test_unsafe_names_are_refused(tmp_path: Path, name: str, words: str) -> None:
    upload = make_zip(tmp_path / "bad.zip", {**PROJECT, name: b"x"})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=words):
        zipsafe.extract(upload, dest)
    assert list(dest.iterdir()) == []


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "link.zip", {**PROJECT, "secrets": b"/etc/shadow"},
                      mode={"secrets": stat.S_IFLNK | 0o777})
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        zipsafe.check(upload)


def test_a_special_file_is_refused(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "fifo.zip", {**PROJECT, "pipe": b""},
                      mode={"pipe": stat.S_IFIFO | 0o644})
    with pytest.raises(UnsafeArchiveError, match="special file"):
        zipsafe.check(upload)


def test_a_zip_bomb_by_size_is_refused_before_writing(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "bomb.zip", {**PROJECT, "zeros": b"\0" * (3 * 1024 * 1024)})
    assert upload.stat().st_size < 100 * 1024
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="unpacks to 3 MB"):
        zipsafe.extract(upload, dest, max_bytes=2 * 1024 * 1024)
    assert list(dest.iterdir()) == []


def test_the_default_size_limit_is_200_mb(tmp_path: Path) -> None:
    upload = tmp_path / "big.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pyproject.toml", b"x")
        with archive.open("zeros", "w", force_zip64=True) as out:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(201):
                out.write(chunk)
    with pytest.raises(UnsafeArchiveError, match=r"unpacks to 201 MB; crewship unpacks at most 200"):
        zipsafe.check(upload)


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    upload = tmp_path / "many.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for i in range(zipsafe.MAX_ENTRIES + 1):
            archive.writestr(f"f/{i}", b"")
    with pytest.raises(UnsafeArchiveError, match="20001 entries; crewship unpacks at most 20000"):
        zipsafe.check(upload)


def test_sizes_that_lie_in_the_header_still_stop_at_the_limit(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "liar.zip", {**PROJECT, "big": b"A" * 5000})
    data = bytearray(upload.read_bytes())
    # Patch the central directory's uncompressed size of "big" down to 10 bytes.
    with zipfile.ZipFile(upload) as archive:
        info = archive.getinfo("big")
    index = data.rfind(b"PK\x01\x02")
    while index != -1:
        name_len = int.from_bytes(data[index + 28:index + 30], "little")
        if data[index + 46:index + 46 + name_len] == b"big":
            data[index + 24:index + 28] = (10).to_bytes(4, "little")
            break
        index = data.rfind(b"PK\x01\x02", 0, index)
    upload.write_bytes(bytes(data))
    assert info.file_size == 5000
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError):
        zipsafe.extract(upload, dest, max_bytes=1000)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken", b"\x1f\x8b\x08"])
def test_non_zip_uploads_are_refused(tmp_path: Path, content: bytes) -> None:
    upload = tmp_path / "x.zip"
    upload.write_bytes(content)
    with pytest.raises(UnsafeArchiveError, match="not a ZIP archive"):
        zipsafe.check(upload)


def test_duplicates_clashes_empty_and_encrypted_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as archive:
        archive.writestr("a.py", b"1")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("a.py", b"2")
    with pytest.raises(UnsafeArchiveError, match="twice"):
        zipsafe.check(dup)
    clash = make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b": b"inside"})
    with pytest.raises(UnsafeArchiveError, match="both a file and a directory"):
        zipsafe.check(clash)
    empty = make_zip(tmp_path / "empty.zip", {"src/": b""})
    with pytest.raises(UnsafeArchiveError, match="no files"):
        zipsafe.check(empty)
    secret = make_zip(tmp_path / "enc.zip", PROJECT)
    data = bytearray(secret.read_bytes())
    for marker, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        index = data.find(marker)
        while index != -1:
            data[index + offset] |= 0x1
            index = data.find(marker, index + 4)
    secret.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        zipsafe.check(secret)


@pytest.mark.parametrize(("raw", "clean"), [("./src/a.py", "src/a.py"), ("src//a.py", "src/a.py"),
                                            ("dir/", "dir")])
def test_harmless_names_are_normalised(raw: str, clean: str) -> None:
    assert zipsafe.safe_name(raw) == clean
