"""SSH commands for live apps: status, logs, config, config:set/unset/purge-history, tokens,
kickoff."""

from __future__ import annotations

import argparse
import asyncio
import json

from crewship.errors import CrewshipError, InvalidInputError
from crewship.model import human_bytes
from crewship.service.operations import parse_assignments
from gitserver.command import ArgumentParser, Context, app_arg, command
from gitserver.commands_resources import usage_text


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@command("status", "show an app's state, live release, uptime, restarts and URL", app_arg,
         read=True)
async def status(ctx: Context, args: argparse.Namespace) -> int:
    info = ctx.platform.ops.status(ctx.user, args.app)
    if args.json:
        ctx.out_json(info)
        return 0
    ctx.out(f"=== {info['app']} ({info['uuid']})")
    rows = [["state", info["state"]], ["release", info["release"] or "-"],
            ["commit", (info["commit"] or "-")[:12]], ["uptime", _duration(info["uptime_seconds"])],
            ["restarts", str(info["restarts"])], ["scale", str(info["scale"])],
            ["kickoffs", f"{info['kickoffs']['running']} running, "
                         f"{info['kickoffs']['queued']} queued, "
                         f"{info['kickoffs'].get('waiting', 0)} waiting for human input"],
            ["url", info["url"]], ["git", info["git_url"]],
            ["sandbox", info["sandbox_note"]]]
    for key, value in rows:
        ctx.out(f"{key + ':':<10} {value}")
    for inst in info["instances"]:
        ctx.out(f"  {inst['id']:<8} {inst['state']:<10} pid {inst['pid']}  port {inst['port']}"
                f"  {usage_text(inst)}")
    for event in info.get("memory_exceeded", [])[:3]:
        ctx.out(f"  {event['instance']} memory_exceeded: stopped for using "
                f"{human_bytes(event['memory_bytes'])} (limit {human_bytes(event['limit_bytes'])})")
    return 0


def _logs_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("-n", "--num", type=int, default=100, help="lines of history (default 100)")
    p.add_argument("-t", "--tail", action="store_true", help="keep following")


@command("logs", "show an app's log; -t follows across restarts and deploys", _logs_args)
async def logs(ctx: Context, args: argparse.Namespace) -> int:
    stream = ctx.platform.ops.logs(ctx.user, args.app, lines=args.num, follow=args.tail)

    async def pump() -> None:
        async for line in stream:
            ctx.out(line)
            await ctx.process.stdout.drain()

    if not args.tail:
        await pump()
        return 0
    # Follow until the client goes away, even while the log is quiet.
    pumping = asyncio.ensure_future(pump())
    closed = asyncio.ensure_future(ctx.process.wait_closed())
    try:
        await asyncio.wait({pumping, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, closed):
            task.cancel()
        await asyncio.gather(pumping, closed, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
    failure = pumping.exception() if pumping.done() and not pumping.cancelled() else None
    if isinstance(failure, CrewshipError):  # e.g. no such app; a closed channel is not one
        raise failure
    return 0


def _config_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("--show", action="store_true", help="show the values (they are secrets)")


@command("config", "list an app's config vars (values hidden unless --show)", _config_args,
         read=True)
async def config(ctx: Context, args: argparse.Namespace) -> int:
    values = ctx.platform.ops.config(ctx.user, args.app, show=args.show)
    if args.json:
        ctx.out_json(values)
    elif not values:
        ctx.out(f"{args.app} has no config vars; set some with 'config:set {args.app} KEY=VALUE'")
    else:
        for key, value in values.items():
            ctx.out(f"{key}={value}" if args.show else f"{key}  {value}")
    return 0


def _set_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--no-restart", action="store_true", help="store only; apply on next deploy")


@command("config:set", "set config vars; a live app restarts through a health-checked swap",
         _set_args)
async def config_set(ctx: Context, args: argparse.Namespace) -> int:
    changes = parse_assignments(args.pairs)
    await ctx.platform.ops.config_set(ctx.user, args.app, changes, ctx.reporter(),
                                  restart=not args.no_restart)
    return 0


def _unset_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--no-restart", action="store_true", help="store only; apply on next deploy")


@command("config:unset", "remove config vars (a new release, like config:set)", _unset_args)
async def config_unset(ctx: Context, args: argparse.Namespace) -> int:
    changes = {key: "" for key in args.keys}
    await ctx.platform.ops.config_set(ctx.user, args.app, changes, ctx.reporter(), unset=True,
                                  restart=not args.no_restart)
    return 0


def _purge_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("key", metavar="KEY", help="a config var already removed with config:unset")


@command("config:purge-history", "remove an unset config var from every stored release "
         "(app admin; a rollback to those releases is then refused)", _purge_args)
async def config_purge_history(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.platform.lifecycle.purge_config_history(ctx.user, args.app, args.key,
                                                      ctx.reporter())
    return 0


@command("tokens", "show the app's crew API token (made and shown once on first use)", app_arg,
         read=True)
async def tokens(ctx: Context, args: argparse.Namespace) -> int:
    prefix, created, token = ctx.platform.ops.token_info(ctx.user, args.app)
    if args.json:
        ctx.out_json({"prefix": prefix, "created_at": created, "token": token})
    elif token:
        ctx.out(token)
        ctx.err("this token is shown once: keep it (tokens:rotate makes a new one)")
    else:
        ctx.out(f"{prefix}...  created {created}")
        ctx.err(f"tokens are stored hashed; run 'tokens:rotate {args.app}' for a new one")
    return 0


@command("tokens:rotate", "replace the app's crew API token and print the new one", app_arg)
async def tokens_rotate(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out(ctx.platform.ops.rotate_token(ctx.user, args.app))
    return 0


def _kickoff_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("inputs", nargs="?", default="{}", help="JSON object of inputs")
    p.add_argument("--wait", action="store_true", help="wait and print the result")


@command("kickoff", "start a run of the crew with JSON inputs (--wait for the result)",
         _kickoff_args)
async def kickoff(ctx: Context, args: argparse.Namespace) -> int:
    from crewship.model import AccessLevel

    app = ctx.platform.app_for(ctx.user, args.app, AccessLevel.DEPLOY)
    try:
        inputs = json.loads(args.inputs)
    except ValueError:
        raise InvalidInputError("inputs must be a JSON object, e.g. '{\"topic\": \"AI\"}'") from None
    kickoff_id = await ctx.platform.ops.user_kickoff(ctx.user, args.app, inputs)
    if not args.wait:
        ctx.out(kickoff_id)
        return 0
    while True:
        result = await ctx.platform.ops.kickoff_status(app, kickoff_id)
        if result["state"] in ("SUCCESS", "FAILURE", "REVOKED", "PENDING_HUMAN_INPUT"):
            break  # a kickoff waiting for a human goes on after POST /resume
        await asyncio.sleep(0.5)
    ctx.out_json(result)
    return 0 if result["state"] in ("SUCCESS", "PENDING_HUMAN_INPUT") else 1
