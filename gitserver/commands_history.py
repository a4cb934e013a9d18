"""SSH commands for watching apps: kickoffs (execution history), alerts, alerts:add/remove."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from crewship.errors import InvalidInputError
from crewship.service.traces import timeline
from crewship.store.alerts import EVENTS
from gitserver.command import ArgumentParser, Context, app_arg, command, when


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _kickoffs_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("-n", "--num", type=int, default=20, help="how many (default 20, max 1000)")
    p.add_argument("--state", help="only PENDING, RUNNING, PENDING_HUMAN_INPUT (or WAITING), "
                                    "SUCCESS, FAILURE or REVOKED")
    p.add_argument("--trace", metavar="ID",
                   help="one kickoff's execution trace as an indented timeline")


def _kickoff_row(k: dict[str, Any]) -> list[str]:
    usage = k.get("token_usage") or {}
    error = (k.get("error") or "").splitlines()[0][:60] if k.get("error") else ""
    return [k["kickoff_id"], k["state"], f"v{k['release']}" if k.get("release") else "-",
            when(k.get("created_at")), _seconds(k.get("execution_time")),
            str(usage.get("total_tokens", "-")), error]


@command("kickoffs", "list an app's kickoffs, newest first (execution history), or one's "
         "trace (--trace ID)",
         _kickoffs_args, read=True)
async def kickoffs(ctx: Context, args: argparse.Namespace) -> int:
    if args.trace:
        return await _trace(ctx, args)
    found = ctx.platform.monitoring.kickoff_history(ctx.user, args.app, limit=args.num, state=args.state)
    which = f" in state {args.state.upper()}" if args.state else ""
    return ctx.listing(args.json, found, empty=f"{args.app} has no kickoffs{which} yet",
                       title=f"{args.app} kickoffs", row=_kickoff_row,
                       headers=["KICKOFF", "STATE", "RELEASE", "STARTED (UTC)", "DURATION", "TOKENS",
                                "ERROR"])


async def _trace(ctx: Context, args: argparse.Namespace) -> int:
    trace = await ctx.platform.monitoring.kickoff_trace_live(ctx.user, args.app, args.trace)
    spans = trace["spans"]
    if args.json:
        ctx.out_json(spans)
        return 0
    if not spans:
        ctx.out(f"kickoff {args.trace} ({trace['state']}) has no trace yet")
        return 0
    ctx.out(f"{args.app} kickoff {args.trace} ({trace['state']}): {len(spans)} spans "
            "(start, duration, what, status, tokens)")
    for line in timeline(spans):
        ctx.out(line)
    return 0


@command("alerts", "list an app's alert receivers", app_arg, read=True)
async def alerts(ctx: Context, args: argparse.Namespace) -> int:
    found = [a.info() for a in ctx.platform.monitoring.alert_receivers(ctx.user, args.app)]
    return ctx.listing(
        args.json, found, title=f"{args.app} alerts", headers=["ID", "URL", "EVENTS", "BY"],
        empty=f"{args.app} has no alert receivers; add one with 'alerts:add {args.app} URL'",
        row=lambda a: [str(a["id"]), a["url"], ",".join(a["events"]), a["created_by"]])


def _add_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("url")
    p.add_argument("--events", help=f"comma-separated, of {','.join(EVENTS)} "
                                    "(default: deploy_failed,crashed,kickoff_failed)")


@command("alerts:add", "POST JSON alerts about an app to URL", _add_args)
async def alerts_add(ctx: Context, args: argparse.Namespace) -> int:
    alert = await asyncio.to_thread(ctx.platform.monitoring.add_alert, ctx.user, args.app,
                                    args.url, args.events)
    ctx.out(f"alert {alert.id}: {', '.join(alert.events)} -> {alert.url}")
    return 0


def _remove_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("id", help="the alert's id (see 'alerts NAME')")


@command("alerts:remove", "stop sending an app's alerts to one receiver", _remove_args)
async def alerts_remove(ctx: Context, args: argparse.Namespace) -> int:
    try:
        alert_id = int(args.id)
    except ValueError:
        raise InvalidInputError(f"{args.id[:20]!r} is not an alert id (a number)") from None
    alert = ctx.platform.monitoring.remove_alert(ctx.user, args.app, alert_id)
    ctx.out(f"removed alert {alert.id} ({alert.url})")
    return 0
