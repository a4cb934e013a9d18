"""SSH commands for who gets in: users, users:remove (admins), and API tokens:
api-tokens, api-tokens:create, api-tokens:revoke (admins: anyone's)."""

from __future__ import annotations

import argparse
from typing import Any

from crewship.errors import InvalidInputError
from crewship.store.apitokens import ApiToken
from gitserver.command import ArgumentParser, Context, command, when


@command("users", "list every user: admin, keys, tokens, apps owned, last seen (admins)",
         read=True)
async def users(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.platform.users.overview(ctx.user)
    return ctx.listing(args.json, found, empty="no users",
                       row=lambda u: [u["name"], "yes" if u["admin"] else "",
                                      ",".join(u["keys"]) or "-", str(u["tokens"]),
                                      ",".join(u["apps"]) or "-", when(u["last_seen_at"])],
                       headers=["USER", "ADMIN", "KEYS", "TOKENS", "APPS OWNED", "LAST SEEN (UTC)"])


def _remove_args(p: ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the user to remove")
    p.add_argument("--transfer-to", metavar="USER", help="give NAME's apps to USER first")


@command("users:remove", "remove a user with their keys, API tokens, access grants and "
         "dashboard sessions (admins)", _remove_args)
async def users_remove(ctx: Context, args: argparse.Namespace) -> int:
    done = ctx.platform.users.remove(ctx.user, args.name, args.transfer_to)
    moved = (f"; {', '.join(done['apps_transferred'])} now owned by {done['transfer_to']}"
             if done["apps_transferred"] else "")
    ctx.out(f"removed {done['user']}: {done['keys']} keys, {done['tokens']} API tokens, "
            f"{done['sessions']} dashboard sessions{moved}")
    return 0


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "prefix": token.prefix, "created_at": token.created_at,
            "expires_at": token.expires_at, "last_used_at": token.last_used_at,
            "expired": token.expired()}


def _list_args(p: ArgumentParser) -> None:
    p.add_argument("--user", metavar="USER", help="another user's tokens (admins only)")


@command("api-tokens", "list API tokens for the HTTP API: expiry and last use (never the "
         "tokens themselves)", _list_args, read=True)
async def api_tokens(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.platform.list_api_tokens(ctx.user, args.user)
    return ctx.listing(args.json, found, empty="no API tokens yet: make one with 'api-tokens:create'",
                       to_json=_token_json, row=_token_row,
                       headers=["ID", "TOKEN", "CREATED", "EXPIRES", "LAST USED", ""])


def _token_row(t: ApiToken) -> list[str]:
    return [str(t.id), f"{t.prefix}...", when(t.created_at),
            when(t.expires_at) if t.expires_at else "never",
            when(t.last_used_at), "expired" if t.expired() else ""]


def _create_args(p: ArgumentParser) -> None:
    p.add_argument("--expires-days", type=int, default=None, metavar="N",
                   help="expire after N days (default: the server's CREWSHIP_API_TOKEN_DAYS, 90)")


@command("api-tokens:create", "make an API token for the HTTP API (shown once)", _create_args,
         read=True)
async def api_tokens_create(ctx: Context, args: argparse.Namespace) -> int:
    record, token = ctx.platform.create_api_token(ctx.user, args.expires_days)
    if args.json:
        ctx.out_json({**_token_json(record), "token": token})
    else:
        ctx.out(token)
        ctx.err(f"API token {record.id} is shown once: keep it (expires "
                f"{when(record.expires_at) if record.expires_at else 'never'}; "
                f"'api-tokens:revoke {record.id}' disables it)")
    return 0


def _revoke_args(p: ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the token's id (see 'api-tokens')")


@command("api-tokens:revoke", "revoke an API token by id (yours; admins: anyone's); its "
         "dashboard sessions end too", _revoke_args)
async def api_tokens_revoke(ctx: Context, args: argparse.Namespace) -> int:
    if not (args.id.isascii() and args.id.isdigit()) or len(args.id) > 12:
        raise InvalidInputError(f"ID must be a token id number (see 'api-tokens'), "
                                f"not {args.id[:20]!r}")
    record = ctx.platform.revoke_api_token(ctx.user, int(args.id))
    ctx.out(f"revoked API token {record.id} ({record.prefix}...)")
    return 0
