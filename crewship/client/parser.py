"""The client's argument parsers, added to ``crewship``'s own, and its entry point."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from crewship.client import commands, manage
from crewship.client.context import Client

Handler = Callable[[Client, argparse.Namespace], int]
Subparsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]


def _cmd(sub: Subparsers, name: str, handler: Handler, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    parser.set_defaults(client_handler=handler)
    return parser


def _uuid(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", help="the app's UUID (default: [project].name)")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the server's JSON")


def _deploy(sub: Subparsers) -> None:
    deploy = sub.add_parser("deploy", help="create, push and manage the project's deployment")
    dsub = deploy.add_subparsers(dest="deploy_command", required=True)
    p = _cmd(dsub, "create", commands.deploy_create,
             "validate, create the app, add the crewship git remote, store .env as config")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
    p.add_argument("--name", help="the app name (default: [project].name, normalised)")
    p.add_argument("--skip-validate", action="store_true", help="skip the local checks")
    p = _cmd(dsub, "push", commands.deploy_push, "push HEAD to the server and deploy it")
    _uuid(p)
    p.add_argument("--force", action="store_true",
                   help="force-push, and redeploy even if the commit is already live")
    p.add_argument("--skip-validate", action="store_true", help="skip the local checks")
    p = _cmd(dsub, "status", commands.deploy_status, "show the app's state and live release")
    _uuid(p)
    _json(p)
    p = _cmd(dsub, "logs", commands.deploy_logs, "show the app's log")
    _uuid(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep following")
    p.add_argument("-n", "--num", type=int, default=100, help="lines of history (default 100)")
    p = _cmd(dsub, "list", commands.deploy_list, "list your apps")
    _json(p)
    p = _cmd(dsub, "remove", commands.deploy_remove, "remove the app from the server")
    _uuid(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
    _cmd(dsub, "validate", commands.deploy_validate, "run the pre-deploy checks locally")


def _config(sub: Subparsers) -> None:
    config = sub.add_parser("config", help="the app's config vars")
    csub = config.add_subparsers(dest="config_command", required=True)
    p = _cmd(csub, "list", manage.config_list, "list config vars (values hidden unless --show)")
    _uuid(p)
    _json(p)
    p.add_argument("--show", action="store_true", help="show the values (secrets)")
    p = _cmd(csub, "set", manage.config_set, "set config vars (a new release when live)")
    _uuid(p)
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--no-restart", action="store_true", help="store only; apply on next deploy")
    p = _cmd(csub, "unset", manage.config_unset, "remove config vars")
    _uuid(p)
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--no-restart", action="store_true", help="store only; apply on next deploy")
    p = _cmd(csub, "purge-history", manage.config_purge_history,
             "remove an unset (leaked) config var from every stored release")
    _uuid(p)
    p.add_argument("key", metavar="KEY")


def _keys(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="your SSH keys on the server")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = _cmd(ksub, "list", manage.keys_list, "list your SSH keys")
    p.add_argument("--user", help="another user's keys (admins only)")
    _json(p)
    p = _cmd(ksub, "add", manage.keys_add, "add an SSH public key (default ~/.ssh/id_*.pub)")
    p.add_argument("name", help="a name for the key, e.g. laptop")
    p.add_argument("file", nargs="?", help="the .pub file")
    p.add_argument("--user", help="add it for another user (admins only)")
    p = _cmd(ksub, "remove", manage.keys_remove, "remove an SSH key by name")
    p.add_argument("name")
    p.add_argument("--user", help="another user's key (admins only)")


def _users(sub: Subparsers) -> None:
    users = sub.add_parser("users", help="the server's users (admins)")
    usub = users.add_subparsers(dest="users_command", required=True)
    p = _cmd(usub, "list", manage.users_list, "every user: keys, tokens, apps owned, last seen")
    _json(p)
    p = _cmd(usub, "remove", manage.users_remove, "remove a user with their keys, API tokens, "
             "access grants and dashboard sessions")
    p.add_argument("name")
    p.add_argument("--transfer-to", metavar="USER", help="give the user's apps to USER first")


def _app_commands(sub: Subparsers) -> None:
    p = _cmd(sub, "releases", manage.releases, "list the app's releases")
    _uuid(p)
    _json(p)
    p = _cmd(sub, "rollback", manage.rollback, "make a release of an earlier one (default: the previous)")
    _uuid(p)
    p.add_argument("version", nargs="?", help="the release to go back to, e.g. v3")
    p = _cmd(sub, "restart", manage.restart, "restart the live release (health-checked swap)")
    _uuid(p)
    p = _cmd(sub, "scale", manage.scale, "run N instances of the live release (0 stops it)")
    _uuid(p)
    p.add_argument("count", type=int, metavar="N")
    p = _cmd(sub, "kickoff", manage.kickoff, "start a run of the crew")
    _uuid(p)
    p.add_argument("-i", "--input", dest="inputs", action="append", metavar="KEY=VALUE",
                   help="an input of the crew (repeat for more)")
    p.add_argument("--wait", action="store_true", help="wait and print the result")
    p.add_argument("--json", action="store_true", help="with --wait: print the whole run record")
    p = _cmd(sub, "token", manage.token, "show the crew API token (--rotate for a new one)")
    _uuid(p)
    p.add_argument("--rotate", action="store_true", help="replace the token")
    remote = sub.add_parser("remote", help="which crewship server this project uses")
    rsub = remote.add_subparsers(dest="remote_command", required=True)
    p = _cmd(rsub, "add", manage.remote_add, "use the server at URL (ssh://git@HOST:2222)")
    p.add_argument("url")
    _cmd(rsub, "show", manage.remote_show, "print the server this project uses")


def add_client_commands(sub: Subparsers) -> None:
    """Add ``deploy``, ``config``, ``keys``, ``releases`` ... to ``crewship``'s parser."""
    _deploy(sub)
    _config(sub)
    _keys(sub)
    _users(sub)
    _app_commands(sub)


def run(args: argparse.Namespace) -> int:
    """Run the chosen client command; errors propagate to the entry point."""
    client = Client()
    try:
        handler: Handler = args.client_handler
        return handler(client, args)
    finally:
        client.close()
