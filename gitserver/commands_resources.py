"""SSH commands for what apps use: ps."""

from __future__ import annotations

import argparse
from typing import Any

from gitserver.command import Context, app_arg, command


def human_bytes(value: int | None) -> str:
    """``312.4 MB``; ``-`` when not known."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


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
