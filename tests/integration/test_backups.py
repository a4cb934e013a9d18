"""Backup archives and restore on real files: SQLite's online backup while a writer runs,
real git bundles, checksums, flipped bytes, keep/prune, restic (local and sftp: through
OpenSSH's sshd on 127.0.0.1)."""

from __future__ import annotations

import json
import shlex
import sqlite3
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.sshd import OpenSSHServer
from crewship.config import Layout, Settings
from crewship.errors import CrewshipError, InvalidInputError
from crewship.events import BackupFinished
from crewship.service.backups import BackupService, restic_from
from crewship.service.restore import Rebuilder, restore
from crewship.store import archive
from crewship.store.accounts import Accounts
from crewship.store.apps import AppStore
from crewship.store.releases import ReleaseStore, TokenStore
from crewship.store.state import Database, now
from gitserver.server import load_host_key
from tests.support.server import GIT_IDENTITY, SSH_OPTIONS, make_key


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **GIT_IDENTITY}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout


def refs(repo: Path) -> str:
    return git("-C", str(repo), "for-each-ref", "--format=%(objectname) %(refname)")


class DataDir:
    """A data dir as a server leaves it: state, two repos (one empty), host key, secrets key."""

    def __init__(self, root: Path) -> None:
        self.layout = Layout(root)
        self.layout.ensure()
        self.db = Database(self.layout.state_db)
        self.accounts, self.apps = Accounts(self.db), AppStore(self.db)
        admin = self.accounts.ensure_user("admin", admin=True)
        self.demo = self.apps.create("demo", admin.id)
        self.apps.create("empty", admin.id)
        self.token = TokenStore(self.db).rotate(self.demo)
        releases = ReleaseStore(self.db)
        for version in (1, 2):
            releases.create(self.demo, kind="push", commit="a" * 40, config={"K": "v"},
                            created_by="admin", description=f"v{version}")
            releases.set_artifact(self.demo, version,
                                  str(self.layout.release_dir("demo", version)))
        releases.mark_live(self.demo, 2)
        self.db.execute("INSERT INTO kickoffs (id, app_id, release, state, inputs_json, "
                        "created_at) VALUES ('k1', ?, 2, 'SUCCESS', '{}', ?)", self.demo.id, now())
        self.host_key = load_host_key(self.layout.host_keys)
        self.secrets_key = self.layout.secrets_key.read_bytes()  # made by Database on first open
        work = root.parent / f"{root.name}-work"
        git("init", "-q", "-b", "main", str(work))
        for text in ("one", "two"):
            (work / "f.txt").write_text(text)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", text, cwd=work)
        git("branch", "feature", cwd=work)
        for name in ("demo", "empty"):
            git("init", "-q", "--bare", "-b", "main", str(self.layout.repo(name)))
        git("push", "-q", str(self.layout.repo("demo")), "main", "feature", cwd=work)

    def service(self, **settings: object) -> BackupService:
        values: dict[str, object] = {"data_dir": self.layout.root, **settings}
        made = Settings(**values)  # type: ignore[arg-type]
        return BackupService(made, self.layout, restic_from(made, self.layout),
                             on_event=self.events.append)

    events: list[object] = []


@pytest.fixture
def data(tmp_path: Path) -> Iterator[DataDir]:
    made = DataDir(tmp_path / "data")
    made.events = []
    yield made
    made.db.close()


def flip_byte(path: Path, member: str) -> None:
    """Flip one byte in the middle of ``member``'s data inside the tar at ``path``."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_backup_holds_state_repos_and_keys_and_restore_brings_them_back(
        data: DataDir, tmp_path: Path) -> None:
    info = data.service().create_sync()
    path = data.layout.backup_archive(info.id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    manifest = archive.verify(path)
    assert set(manifest.members) == {"state.db", "repos/demo.bundle", "secrets.key",
                                     "host_keys/ssh_host_ed25519_key",
                                     "host_keys/ssh_host_ed25519_key.pub"}
    assert manifest.apps == ["demo", "empty"] == info.apps
    assert {"crewship", "sqlite", "git"} <= set(manifest.data["versions"])
    assert info.sha256 == archive.sha256_file(path)
    assert [b.id for b in data.service().list()] == [info.id]

    target = tmp_path / "restored"
    done = restore(str(path), target, Settings(data_dir=target))
    new = Layout(target)
    assert (done.backup, done.apps, done.rebuild) == (info.id, ["demo", "empty"], ["demo"])
    assert refs(new.repo("demo")) == refs(data.layout.repo("demo")) != ""
    assert refs(new.repo("empty")) == ""
    assert (new.repo("demo") / "hooks" / "post-receive").is_file()
    key = "ssh_host_ed25519_key"
    assert (new.host_keys / key).read_bytes() == (data.layout.host_keys / key).read_bytes()
    assert load_host_key(new.host_keys).get_fingerprint("sha256") == \
        data.host_key.get_fingerprint("sha256")
    assert new.secrets_key.read_bytes() == data.secrets_key
    assert stat.S_IMODE(new.secrets_key.stat().st_mode) == 0o600
    assert json.loads(new.rebuild_marker.read_text()) == {"backup": info.id, "apps": ["demo"]}

    db = Database(new.state_db)
    try:
        demo = AppStore(db).get("demo")
        assert demo is not None
        assert demo.live_release == 2
        assert TokenStore(db).check(demo, data.token)
        assert [r["id"] for r in db.all("SELECT id FROM kickoffs")] == ["k1"]
        artifacts = [r.artifact for r in ReleaseStore(db).all(demo)]
        assert artifacts == [str(new.release_dir("demo", 2)), str(new.release_dir("demo", 1))]
    finally:
        db.close()


def test_a_flipped_byte_is_refused_by_verify_and_by_restore(data: DataDir, tmp_path: Path) -> None:
    service = data.service()
    info = service.create_sync()
    assert service.verify_sync(info.id).verified_at is not None
    path = data.layout.backup_archive(info.id)
    flip_byte(path, "repos/demo.bundle")
    with pytest.raises(archive.ArchiveError, match="does not match"):
        service.verify_sync(info.id)
    listed = service.get(info.id)
    assert listed.verified_at is None
    assert listed.verify_error
    with pytest.raises(archive.ArchiveError, match=r"checksum of repos/demo\.bundle"):
        archive.verify(path)
    target = tmp_path / "restored"
    with pytest.raises(archive.ArchiveError):
        restore(str(path), target, Settings(data_dir=target))
    assert not target.exists()


def test_a_flipped_byte_in_the_manifest_is_refused(data: DataDir, tmp_path: Path) -> None:
    info = data.service().create_sync()
    path = data.layout.backup_archive(info.id)
    flip_byte(path, archive.MANIFEST)
    target = tmp_path / "restored"
    target.mkdir()
    with pytest.raises(archive.ArchiveError, match="manifest"):
        restore(str(path), target, Settings(data_dir=target))
    assert list(target.iterdir()) == []


def test_restore_refuses_a_non_empty_target_and_changes_nothing(data: DataDir,
                                                                tmp_path: Path) -> None:
    info = data.service().create_sync()
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="is not empty"):
        restore(str(data.layout.backup_archive(info.id)), target, Settings(data_dir=target))
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    with pytest.raises(InvalidInputError, match="no such archive"):
        restore(str(tmp_path / "nope.tar"), tmp_path / "new", Settings())


def test_a_backup_taken_while_a_writer_commits_is_consistent(data: DataDir,
                                                             tmp_path: Path) -> None:
    """Each writer transaction inserts two rows; a consistent copy never holds an odd count."""
    writer = Database(data.layout.state_db)
    stop = threading.Event()
    commits = 0

    def write() -> None:
        nonlocal commits
        while not stop.is_set():
            with writer.tx() as c:
                for _ in range(2):
                    c.execute("INSERT INTO kickoffs (id, app_id, state, inputs_json, created_at) "
                              "VALUES (lower(hex(randomblob(8))), ?, 'SUCCESS', '{}', ?)",
                              (data.demo.id, now()))
            commits += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        infos = [data.service().create_sync() for _ in range(3)]
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert commits > 0
    for info in infos:
        work = tmp_path / info.id
        work.mkdir()
        manifest = archive.verify(data.layout.backup_archive(info.id))
        archive.extract(data.layout.backup_archive(info.id), work, manifest)
        conn = sqlite3.connect(str(work / "state.db"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = conn.execute("SELECT COUNT(*) FROM kickoffs").fetchone()[0]
        conn.close()
        assert count % 2 == 1   # 'k1' plus pairs


def test_only_the_newest_backups_are_kept(data: DataDir) -> None:
    service = data.service(backup_keep=2)
    made = [service.create_sync().id for _ in range(3)]
    assert [b.id for b in service.list()] == made[:0:-1]
    assert not data.layout.backup_archive(made[0]).exists()
    assert not service.sidecar(made[0]).exists()


def test_a_failed_backup_leaves_no_archive_and_reports_once(data: DataDir) -> None:
    objects = data.layout.repo("demo") / "objects" / "pack"
    for pack in objects.glob("*"):
        pack.unlink()
    for loose in (data.layout.repo("demo") / "objects").glob("??"):
        for obj in loose.iterdir():
            obj.unlink()
    service = data.service()
    with pytest.raises(CrewshipError, match="backup failed"):
        service.create_sync()
    assert list(data.layout.backups.glob("*.tar")) == []
    assert list(data.layout.backups.glob(".*partial")) == []
    assert list(data.layout.tmp.iterdir()) == []
    status = service.status()
    assert status["last_good"] is None
    assert "git" in status["failure"]["error"]
    events = [e for e in data.events if isinstance(e, BackupFinished)]
    assert [e.outcome for e in events] == ["failed"]
    with pytest.raises(CrewshipError):
        service.create_sync()
    second = [e for e in data.events if isinstance(e, BackupFinished)][-1]
    assert second.failing_since == events[0].failing_since == events[0].backup


def restic_settings(tmp_path: Path, repo: str, options: tuple[str, ...] = ()) -> dict[str, object]:
    password = tmp_path / "restic-password"
    password.write_text("correct horse battery staple\n")
    return {"backup_restic_repo": repo, "backup_restic_password_file": password,
            "backup_restic_options": options}


def check_restic_round_trip(data: DataDir, tmp_path: Path, options: dict[str, object]) -> None:
    service = data.service(backup_keep=2, **options)
    infos = [service.create_sync() for _ in range(3)]
    assert all(i.restic_snapshot for i in infos)
    assert service.restic is not None
    snapshots = service.restic.snapshots()
    assert [s.id for s in snapshots] == [i.restic_snapshot for i in infos[1:]]
    assert any(p.startswith("restic:") for p in service.list()[0].places)
    data.layout.backup_archive(infos[-1].id).unlink()   # the local copy is lost
    target = tmp_path / "from-restic"
    settings = Settings(data_dir=target, **options)  # type: ignore[arg-type]
    assert infos[-1].restic_snapshot is not None
    done = restore(infos[-1].restic_snapshot[:8], target, settings)
    assert done.backup == infos[-1].id
    assert done.source.startswith("restic:")
    assert refs(Layout(target).repo("demo")) == refs(data.layout.repo("demo"))


@pytest.mark.slow
def test_restic_local_repository_stores_each_backup_and_restores_by_snapshot(
        data: DataDir, tmp_path: Path) -> None:
    check_restic_round_trip(data, tmp_path, restic_settings(tmp_path, str(tmp_path / "restic")))


@pytest.mark.slow
def test_restic_sftp_repository_through_openssh_on_loopback(data: DataDir,
                                                            tmp_path: Path) -> None:
    key = make_key(tmp_path / "client" / "id_ed25519")
    sshd = OpenSSHServer(tmp_path / "sshd", key,
                         extra_config="Subsystem sftp internal-sftp\n")
    with sshd:
        command = shlex.join(["ssh", "-p", str(sshd.port), "-i", str(key), *SSH_OPTIONS,
                              f"{sshd.user}@127.0.0.1", "-s", "sftp"])
        repo = f"sftp:{sshd.user}@127.0.0.1:{tmp_path / 'remote-restic'}"
        check_restic_round_trip(data, tmp_path,
                                restic_settings(tmp_path, repo, (f"sftp.command={command}",)))
    assert (tmp_path / "remote-restic" / "config").is_file()


def test_rebuilder_reads_the_marker_a_restore_wrote(data: DataDir, tmp_path: Path) -> None:
    info = data.service().create_sync()
    target = tmp_path / "restored"
    restore(str(data.layout.backup_archive(info.id)), target, Settings(data_dir=target))
    rebuilder = Rebuilder(Layout(target), deployer=None)  # type: ignore[arg-type]
    assert rebuilder.pending() == ["demo"]
    rebuilder._done("demo")
    assert rebuilder.pending() == []
    assert not Layout(target).rebuild_marker.exists()
