"""SSH commands for what apps use and may use: ps, quotas, quotas:set."""

from __future__ import annotations

import argparse
from typing import Any

from crewship.model import human_bytes
from gitserver.command import Context, app_arg, command


def usage_text(row: dict[str, Any]) -> str:
    """``mem 312.4 MB  cpu 3.1%  fds 14  threads 9`` (``-`` for what is not sampled yet)."""
    cpu = row.get("cpu_percent")
    fds, threads = row.get("fds"), row.get("threads")
    return (f"mem {human_bytes(row.get('memory_bytes'))}  "
            f"cpu {'-' if cpu is None else f'{cpu:.1f}%'}  "
            f"fds {'-' if fds is None else fds}  threads {'-' if threads is None else threads}")


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@command("ps", "show an app's instances with memory, CPU, open files, threads and uptime",
         app_arg, read=True)
async def ps(ctx: Context, args: argparse.Namespace) -> int:
    rows = ctx.platform.monitoring.processes(ctx.user, args.app)
    if args.json:
        ctx.out_json(rows)
        return 0
    if not rows:
        ctx.out(f"{args.app} runs no instance (scale it with 'ps:scale {args.app} 1')")
        return 0
    ctx.out(f"=== {args.app}: {len(rows)} instance(s)")
    for row in rows:
        ctx.out(f"{row['id']}: {row['state']} for {_uptime(row['uptime_seconds'])}  "
                f"{usage_text(row)}  pid {row['pid'] or '-'}  port {row['port'] or '-'}")
    return 0


def _quota_cell(field: str, cell: dict[str, Any]) -> str:
    quota, used = cell["quota"], cell["used"]
    if field == "memory":
        return f"{human_bytes(used)} of {'unlimited' if quota is None else human_bytes(quota)}"
    return f"{used} of {'unlimited' if quota is None else quota}"


def _quotas_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", nargs="?", metavar="USER", help="whose (default: yours)")
    p.add_argument("--all", action="store_true", help="every user (admins)")


@command("quotas", "show a user's quotas of apps, instances and memory, and their use",
         _quotas_args, read=True)
async def quotas(ctx: Context, args: argparse.Namespace) -> int:
    service = ctx.platform.quotas
    rows = service.show_all(ctx.user) if args.all else service.show(ctx.user, args.user)
    return ctx.listing(args.json, rows, empty="no users",
                       row=lambda r: [r["user"], _quota_cell("apps", r["apps"]),
                                      _quota_cell("instances", r["instances"]),
                                      _quota_cell("memory", r["memory"]), r["source"]],
                       headers=["USER", "APPS", "INSTANCES", "MEMORY", "QUOTA"])


def _quotas_set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", metavar="USER")
    p.add_argument("pairs", nargs="+", metavar="apps=N|instances=N|memory=SIZE",
                   help="none: unlimited; default: the server's default")


@command("quotas:set", "set a user's quotas: apps=N instances=N memory=SIZE (admins)",
         _quotas_set_args)
async def quotas_set(ctx: Context, args: argparse.Namespace) -> int:
    row = ctx.platform.quotas.set(ctx.user, args.user, args.pairs)
    ctx.out(f"quotas of {row['user']}: apps {_quota_cell('apps', row['apps'])}, "
            f"instances {_quota_cell('instances', row['instances'])}, "
            f"memory {_quota_cell('memory', row['memory'])}")
    return 0


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("app_name", nargs="?", metavar="APP", help="one app (its admins may read it)")
    p.add_argument("-n", "--num", type=int, default=50, help="entries, newest first (default 50)")
    p.add_argument("--app", dest="app_opt", metavar="APP", help="same as APP")
    p.add_argument("--user", metavar="USER", help="only what USER did")


@command("audit", "who did what: state-changing actions, newest first (admins; an app's "
         "admins: audit APP)", _audit_args, read=True)
async def audit(ctx: Context, args: argparse.Namespace) -> int:
    app = args.app_name or args.app_opt
    rows = ctx.platform.audit.trail(ctx.user, limit=args.num, app=app, user=args.user)
    return ctx.listing(args.json, rows, empty="no audit entries",
                       row=lambda r: [r["at"].replace("T", " ").removesuffix("Z"),
                                      r["user"] or "-", r["app"] or "-", r["action"],
                                      r["outcome"], r["summary"], r["credential"] or "-"],
                       headers=["AT (UTC)", "USER", "APP", "ACTION", "OUTCOME", "SUMMARY",
                                "KEY/TOKEN"])
