"""SSH commands for releases and running apps: releases, rollback, restart, ps:scale,
ps:limits."""

from __future__ import annotations

import argparse
from typing import Any

from crewship.errors import InvalidInputError
from crewship.model import format_memory, parse_cpus, parse_memory
from crewship.store.releases import parse_version
from gitserver.command import ArgumentParser, Context, app_arg, command, when


def _releases_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("-n", "--num", type=int, default=20, help="how many (default 20)")


def _release_row(r: dict[str, Any]) -> list[str]:
    return ["*" if r["live"] else "", r["version"], r["kind"], r["commit"][:12],
            r["config_digest"] or "-", r["created_by"], when(r["created_at"]), r["status"],
            r["description"] + ("" if r["build_available"] or not r["build"]
                                else f" (build {r['build']} removed)")]


@command("releases", "list an app's releases, newest first; * marks the live one",
         _releases_args, read=True)
async def releases(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.platform.lifecycle.release_history(ctx.user, args.app, limit=args.num)
    return ctx.listing(args.json, found, empty=f"{args.app} has no releases yet: git push to deploy it",
                       title=f"{args.app} releases", row=_release_row,
                       headers=["", "RELEASE", "KIND", "COMMIT", "CONFIG", "BY", "WHEN (UTC)", "STATUS",
                                "DESCRIPTION"])


def _rollback_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("version", nargs="?", metavar="vN",
                   help="the release to return to (default: the one before the live one)")


@command("rollback", "a new release running an earlier release's build and config "
         "(nothing is installed)", _rollback_args)
async def rollback(ctx: Context, args: argparse.Namespace) -> int:
    version = parse_version(args.version) if args.version is not None else None
    await ctx.platform.lifecycle.rollback(ctx.user, args.app, version, ctx.reporter())
    return 0


@command("restart", "restart the live release through a health-checked swap (a new release)",
         app_arg)
async def restart(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.platform.lifecycle.restart(ctx.user, args.app, ctx.reporter())
    return 0


def _scale_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("count", metavar="N", help="instances to run, 0-10 (0 stops the app)")


@command("ps:scale", "run N instances of the live release (0 stops the app)", _scale_args)
async def ps_scale(ctx: Context, args: argparse.Namespace) -> int:
    if not (args.count.isascii() and args.count.isdigit()):
        raise InvalidInputError(f"N must be a whole number from 0 to 10, not {args.count[:20]!r}")
    await ctx.platform.lifecycle.scale(ctx.user, args.app, int(args.count), ctx.reporter())
    return 0


def _limits_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("--memory", metavar="SIZE", help="memory per instance: 512m, 1g, none")
    p.add_argument("--cpus", metavar="N", help="CPUs per instance: 1, 0.5, none")


@command("ps:limits", "show or set memory/CPU limits per instance (a change restarts the "
         "app)", _limits_args, read=True)
async def ps_limits(ctx: Context, args: argparse.Namespace) -> int:
    memory = parse_memory(args.memory) if args.memory is not None else "keep"
    cpus = parse_cpus(args.cpus) if args.cpus is not None else "keep"
    info = await ctx.platform.lifecycle.limits(ctx.user, args.app, memory, cpus, ctx.reporter())
    if args.json:
        ctx.out_json(info)
    else:
        shown = f"{info['cpus']:g}" if info["cpus"] is not None else "unlimited"
        ctx.out(f"=== {info['app']} limits per instance ({info['runtime']} runtime)")
        ctx.out(f"memory:   {format_memory(info['memory'])}")
        ctx.out(f"cpus:     {shown}")
        ctx.out(f"enforced: {info['enforced_by']}")
    return 0
