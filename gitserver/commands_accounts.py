"""SSH commands: help, whoami, keys, keys:add, keys:remove."""

from __future__ import annotations

import argparse

from crewship.model import Key
from gitserver.command import REGISTRY, ArgumentParser, Context, command


def _key_json(key: Key) -> dict[str, str]:
    return {"user": key.user, "name": key.name, "fingerprint": key.fingerprint,
            "created_at": key.created_at}


def _topic(p: ArgumentParser) -> None:
    p.add_argument("topic", nargs="?")


@command("help", "list the commands, or show one command's usage", _topic)
async def help_(ctx: Context, args: argparse.Namespace) -> int:
    if args.topic:
        cmd = REGISTRY.get(args.topic)
        if cmd is None:
            ctx.err(f"unknown command {args.topic!r}; run 'help' for the list")
            return 1
        ctx.out(f"usage: {cmd.usage()}\n\n{cmd.summary}")
        return 0
    ctx.out("crewship: push-to-deploy for CrewAI crews\n")
    ctx.out("  git push ssh://git@HOST:PORT/APP.git main    deploy APP (created on first push)\n")
    for name in sorted(REGISTRY.commands):
        cmd = REGISTRY.commands[name]
        ctx.out(f"  {name:<18} {cmd.summary}")
    ctx.out("\nrun 'help COMMAND' for a command's arguments")
    return 0


@command("whoami", "show who you are authenticated as", read=True)
async def whoami(ctx: Context, args: argparse.Namespace) -> int:
    key_fp = ctx.env.get("key_fp", "")
    if args.json:
        ctx.out_json({"user": ctx.user.name, "admin": ctx.user.is_admin, "key": key_fp})
    else:
        role = " (admin)" if ctx.user.is_admin else ""
        ctx.out(f"{ctx.user.name}{role}")
    return 0


def _user_flag(p: ArgumentParser) -> None:
    p.add_argument("--user", help="another user's keys (admins only)")


def _keys_args(p: ArgumentParser) -> None:
    _user_flag(p)
    p.add_argument("--all", action="store_true", help="every user's keys (admins only)")


@command("keys", "list SSH keys (yours, --user USER's, or --all)", _keys_args, read=True)
async def keys(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.platform.list_keys(ctx.user, args.user, everyone=args.all)
    return ctx.listing(args.json, found, empty="no keys", to_json=_key_json,
                       row=lambda k: [k.user, k.name, k.fingerprint, k.created_at],
                       headers=["USER", "NAME", "FINGERPRINT", "ADDED"])


def _add_args(p: ArgumentParser) -> None:
    p.add_argument("name", help="a name for the key, e.g. laptop")
    _user_flag(p)


@command("keys:add", "add an SSH public key (read from stdin); admins may add for --user",
         _add_args)
async def keys_add(ctx: Context, args: argparse.Namespace) -> int:
    text = (await ctx.read_stdin()).decode(errors="replace")
    key = ctx.platform.add_key(ctx.user, args.name, text, args.user)
    ctx.out(f"added key {key.name} ({key.fingerprint}) for {key.user}")
    return 0


@command("keys:remove", "remove one of your SSH keys by name", _add_args)
async def keys_remove(ctx: Context, args: argparse.Namespace) -> int:
    key = ctx.platform.remove_key(ctx.user, args.name, args.user)
    ctx.out(f"removed key {key.name} ({key.fingerprint}) of {key.user}")
    return 0
