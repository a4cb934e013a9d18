"""SSH commands: apps, apps:create, apps:destroy, access, access:add, access:remove."""

from __future__ import annotations

import argparse

from crewship.model import AccessLevel
from gitserver.command import ArgumentParser, Context, app_arg, command, table


@command("apps", "list the apps you can use", read=True)
async def apps(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.platform.apps(ctx.user)
    if args.json:
        ctx.out_json([{"name": a.name, "uuid": a.uuid, "owner": a.owner,
                       "live_release": a.live_release, "created_at": a.created_at,
                       "url": ctx.platform.settings.app_url(a.name)} for a in found])
    elif not found:
        ctx.out("no apps yet: create one with 'apps:create NAME' or by pushing to it")
    else:
        ctx.out(table([[a.name, a.uuid, a.owner or "-",
                        f"v{a.live_release}" if a.live_release else "-"] for a in found],
                      ["NAME", "UUID", "OWNER", "LIVE"]))
    return 0


@command("apps:create", "create an app (prints its name and UUID)", app_arg, read=True)
async def apps_create(ctx: Context, args: argparse.Namespace) -> int:
    app = await ctx.platform.create_app(ctx.user, args.app)
    settings = ctx.platform.settings
    if args.json:
        ctx.out_json({"name": app.name, "uuid": app.uuid, "git_url": settings.git_url(app.name),
                      "url": settings.app_url(app.name)})
    else:
        ctx.out(f"created {app.name} {app.uuid}")
        ctx.out(f"git remote add crewship {settings.git_url(app.name)}")
    return 0


def _destroy_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("--force", action="store_true", help="confirm the removal")


@command("apps:destroy", "remove an app, its repo, releases, config and logs (needs --force)",
         _destroy_args)
async def apps_destroy(ctx: Context, args: argparse.Namespace) -> int:
    app = await ctx.platform.destroy_app(ctx.user, args.app, force=args.force)
    ctx.out(f"destroyed {app.name}")
    return 0


@command("access", "list who may use an app", app_arg, read=True)
async def access(ctx: Context, args: argparse.Namespace) -> int:
    grants = ctx.platform.access(ctx.user, args.app)
    if args.json:
        ctx.out_json([{"user": u, "level": str(level)} for u, level in grants])
    else:
        ctx.out(table([[u, str(level)] for u, level in grants], ["USER", "LEVEL"]))
    return 0


def _grant_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("user")
    p.add_argument("level", nargs="?", default="read", help="read, deploy or admin")


@command("access:add", "give USER read, deploy or admin access to an app", _grant_args)
async def access_add(ctx: Context, args: argparse.Namespace) -> int:
    level = AccessLevel.parse(args.level)
    ctx.platform.access_add(ctx.user, args.app, args.user, level)
    ctx.out(f"{args.user} now has {level} access to {args.app}")
    return 0


def _revoke_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("user")


@command("access:remove", "take USER's access to an app away", _revoke_args)
async def access_remove(ctx: Context, args: argparse.Namespace) -> int:
    ctx.platform.access_remove(ctx.user, args.app, args.user)
    ctx.out(f"{args.user} no longer has access to {args.app}")
    return 0
