"""SSH commands for backups (admins only): backups, backups:create, backups:verify."""

from __future__ import annotations

import argparse

from crewship.errors import UnavailableError
from crewship.model import human_bytes
from crewship.service.backups import BackupInfo, BackupService
from gitserver.command import ArgumentParser, Context, command, when


def _service(ctx: Context) -> BackupService:
    if ctx.platform.backups is None:
        raise UnavailableError("backups are not available on this server")
    return ctx.platform.backups


def _verified(info: BackupInfo) -> str:
    if info.verify_error:
        return "FAILED"
    return "yes" if info.verified_at else "no"


def _row(info: BackupInfo) -> list[str]:
    restic = info.restic_snapshot[:8] if info.restic_snapshot else "-"
    return [info.id, when(info.created_at), human_bytes(info.size), str(len(info.apps)),
            _verified(info), "local" + (f", restic {restic}" if info.restic_snapshot else "")]


@command("backups", "list backups: time, size, apps, verified, where (admins)", read=True)
async def backups(ctx: Context, args: argparse.Namespace) -> int:
    service = _service(ctx)
    found = service.listing(ctx.user)
    status = service.status()
    title = f"backups (every {status['interval_seconds'] / 3600:g} h, {status['keep']} kept" + (
        f", also in {status['restic']})" if status["restic"] else ")")
    if not args.json and status["failure"]:
        failure = status["failure"]
        ctx.out(f"last backup FAILED at {when(failure.get('at'))}: {failure.get('error')}")
    return ctx.listing(args.json, found, title=title, to_json=lambda i: i.info(),
                       empty="no backups yet: make one with 'backups:create'", row=_row,
                       headers=["ID", "CREATED (UTC)", "SIZE", "APPS", "VERIFIED", "WHERE"])


@command("backups:create", "make a backup now: state, repos, host key, secrets key (admins)")
async def backups_create(ctx: Context, args: argparse.Namespace) -> int:
    report = ctx.reporter()
    report.step("Backing up state.db, repositories and keys")
    info = await _service(ctx).create(ctx.user)
    report.info(f"{human_bytes(info.size)}, {len(info.apps)} app(s), {info.duration_s:.2f} s")
    if info.restic_snapshot:
        report.info(f"stored in restic:{info.restic_repo} as snapshot {info.restic_snapshot[:8]}")
    report.done(f"backup {info.id} made")
    return 0


def _verify_args(p: ArgumentParser) -> None:
    p.add_argument("id", nargs="?", help="the backup (default: the newest; see 'backups')")


@command("backups:verify", "re-read a backup and check every checksum (admins)", _verify_args)
async def backups_verify(ctx: Context, args: argparse.Namespace) -> int:
    info = await _service(ctx).verify(ctx.user, args.id)
    ctx.out(f"backup {info.id} is intact: every checksum matches ({human_bytes(info.size)}, "
            f"{len(info.apps)} app(s))")
    return 0
