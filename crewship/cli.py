"""The ``crewship`` command: the server, offline admin tasks, and the deploy client."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crewship import config
from crewship.errors import CrewshipError

if TYPE_CHECKING:
    from crewship.service.platform import Platform


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="state and repos (default ./.crewship)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--ssh-port", type=int, help="SSH port (default 2222)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--runtime", choices=config.RUNTIMES, help="where crews run (default process)")
    p.add_argument("--insecure-no-sandbox", action="store_true", default=None,
                   help="run crews without the bubblewrap sandbox (process runtime): every "
                        "crew can then read the whole data dir; shown everywhere")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crewship", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run the crewship server")
    _server_args(server)

    admin = sub.add_parser("admin", help="offline administration of a data directory")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    add_key = admin_sub.add_parser("add-key", help="register an admin's public key")
    add_key.add_argument("name", help="the admin's user name")
    add_key.add_argument("pubkey_file", type=Path)
    add_key.add_argument("--data-dir", type=Path)
    boot = admin_sub.add_parser(
        "bootstrap", help="make the operator's ~/.ssh/id_*.pub the first admin if none exists")
    boot.add_argument("--data-dir", type=Path)
    boot.add_argument("--ssh-dir", type=Path, default=Path.home() / ".ssh")

    backup = sub.add_parser("backup", help="make a backup archive of a data directory "
                            "(offline or while its server runs)")
    backup.add_argument("--data-dir", type=Path)
    restore = sub.add_parser("restore", help="restore a backup into a new data directory "
                             "(offline); the next 'crewship server' there rebuilds every app")
    restore.add_argument("source", metavar="ARCHIVE_OR_SNAPSHOT",
                         help="a crewship-backup-*.tar file, or a restic snapshot id")
    restore.add_argument("--data-dir", type=Path, required=True,
                         help="the new data directory (must not exist or be empty)")

    from crewship.client.parser import add_client_commands

    add_client_commands(sub)
    from crewship.client.crewai_login import add_login_command

    add_login_command(sub)
    return parser


@contextlib.contextmanager
def _open_platform(data_dir: Path | None) -> Iterator[tuple[config.Settings, Platform]]:
    """The offline commands' service layer over the data dir's database, closed after."""
    from crewship.config import Layout
    from crewship.service.platform import Platform
    from crewship.store.state import Database

    settings = config.from_env(data_dir=data_dir)
    layout = Layout(settings.data_dir.resolve())
    layout.ensure()
    db = Database(layout.state_db)
    try:
        yield settings, Platform(settings, layout, db)
    finally:
        db.close()


def admin_add_key(name: str, pubkey_file: Path, data_dir: Path | None) -> int:
    if not pubkey_file.is_file():
        raise CrewshipError(f"no such file: {pubkey_file} (give the path of an OpenSSH .pub file)")
    with _open_platform(data_dir) as (_, platform):
        key = platform.register_admin_key(name, pubkey_file.read_text(),
                                          key_name=pubkey_file.stem)
    print(f"{name} is an admin with key {key.fingerprint}")
    return 0


def admin_bootstrap(data_dir: Path | None, ssh_dir: Path) -> int:
    with _open_platform(data_dir) as (settings, platform):
        return _bootstrap(settings, platform, ssh_dir)


def _bootstrap(settings: config.Settings, platform: Platform, ssh_dir: Path) -> int:
    if platform.accounts.has_admin():
        admins = [u.name for u in platform.accounts.users() if u.is_admin]
        print(f"admin already registered ({', '.join(admins)})")
        return 0
    candidates = sorted(ssh_dir.glob("id_*.pub"))
    if not candidates:
        print(f"no admin yet and no public key in {ssh_dir}: make one with "
              "'ssh-keygen -t ed25519' and run 'make run' again, or register any key with "
              f"'{_crewship_command()} admin add-key NAME FILE.pub'", file=sys.stderr)
        return 0
    name = _safe_user_name(getpass.getuser())
    key = platform.register_admin_key(name, candidates[0].read_text(), candidates[0].stem)
    print(f"registered {candidates[0]} as admin {name!r} ({key.fingerprint})")
    print(f"next: in a CrewAI project, git remote add crewship {settings.git_url('APP')}")
    return 0


def backup(data_dir: Path | None) -> int:
    from crewship.config import Layout
    from crewship.service.backups import BackupService, restic_from

    settings = config.from_env(data_dir=data_dir)
    layout = Layout(settings.data_dir.resolve())
    if not layout.state_db.is_file():
        raise CrewshipError(f"{layout.root} is not a crewship data dir (no state.db): "
                            "give the server's --data-dir")
    service = BackupService(settings, layout, restic_from(settings, layout))
    info = service.create_sync()
    print(f"backup {info.id}: {layout.backup_archive(info.id)} ({info.size} bytes, "
          f"{len(info.apps)} app(s), {info.duration_s:.2f} s)")
    if info.restic_snapshot:
        print(f"stored in restic:{info.restic_repo} as snapshot {info.restic_snapshot}")
    return 0


def restore(source: str, data_dir: Path) -> int:
    from crewship.service.restore import restore as restore_backup

    settings = config.from_env(data_dir=data_dir)
    done = restore_backup(source, data_dir, settings)
    print(f"restored backup {done.backup} from {done.source} into {done.data_dir} "
          f"({len(done.apps)} app(s))")
    if done.rebuild:
        print(f"the next 'crewship server --data-dir {data_dir}' rebuilds and starts "
              f"{', '.join(done.rebuild)}")
    return 0


def _crewship_command() -> str:
    """How to run this very ``crewship`` as printed: a path when it is not on PATH."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "crewship":
        found = shutil.which("crewship")
        if found and Path(found).resolve() == argv0.resolve():
            return "crewship"
        return shlex.quote(os.path.relpath(argv0.resolve()) if argv0.is_absolute() else str(argv0))
    return shlex.quote(sys.executable) + " -m crewship.cli"


def _safe_user_name(raw: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9_.-]", "", raw.lower()) or "admin"
    return name if name[0].isalpha() else f"u{name}"[:39]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "client_handler", None) is not None:
            from crewship.client.parser import run

            return run(args)
        if args.command == "server":
            from crewship import daemon

            settings = config.from_env(data_dir=args.data_dir, host=args.host,
                                       ssh_port=args.ssh_port, http_port=args.http_port,
                                       runtime=args.runtime,
                                       insecure_no_sandbox=args.insecure_no_sandbox)
            daemon.run(settings)
            return 0
        if args.command == "backup":
            return backup(args.data_dir)
        if args.command == "restore":
            return restore(args.source, args.data_dir)
        if args.admin_command == "add-key":
            return admin_add_key(args.name, args.pubkey_file, args.data_dir)
        return admin_bootstrap(args.data_dir, args.ssh_dir)
    except CrewshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
