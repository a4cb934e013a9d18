"""Client commands for a live app and the account: config, releases, rollback, restart,
scale, kickoff, keys, token, remote. Each maps onto one server command (DESIGN.md 3)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crewship.client import remote
from crewship.client.context import Client
from crewship.client.errors import ClientError
from crewship.errors import InvalidInputError
from crewship.model import validate_config_key

PUBLIC_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def parse_pairs(pairs: list[str], what: str = "KEY=VALUE") -> dict[str, str]:
    """``K=V`` arguments (the value may contain ``=``); a bad one is refused by name."""
    if not pairs:
        raise InvalidInputError(f"give at least one {what}")
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{pair[:60]!r} is not {what}")
        out[key] = value
    return out


def _json_flag(args: argparse.Namespace) -> list[str]:
    return ["--json"] if getattr(args, "json", False) else []


def config_list(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    client.remote(["config", app, *(["--show"] if args.show else []), *_json_flag(args)])
    return 0


def config_set(client: Client, args: argparse.Namespace) -> int:
    pairs = parse_pairs(args.pairs)
    for key in pairs:
        validate_config_key(key)
    app = client.app_name(args.uuid)
    extra = ["--no-restart"] if args.no_restart else []
    client.remote(["config:set", app, *(f"{k}={v}" for k, v in pairs.items()), *extra])
    return 0


def config_unset(client: Client, args: argparse.Namespace) -> int:
    for key in args.keys:
        validate_config_key(key)
    app = client.app_name(args.uuid)
    client.remote(["config:unset", app, *args.keys, *(["--no-restart"] if args.no_restart else [])])
    return 0


def config_purge_history(client: Client, args: argparse.Namespace) -> int:
    validate_config_key(args.key)
    client.remote(["config:purge-history", client.app_name(args.uuid), args.key])
    return 0


def releases(client: Client, args: argparse.Namespace) -> int:
    client.remote(["releases", client.app_name(args.uuid), *_json_flag(args)])
    return 0


def rollback(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    client.remote(["rollback", app, *([args.version] if args.version else [])])
    return 0


def restart(client: Client, args: argparse.Namespace) -> int:
    client.remote(["restart", client.app_name(args.uuid)])
    return 0


def scale(client: Client, args: argparse.Namespace) -> int:
    if args.count < 0:
        raise InvalidInputError("the instance count must be 0 or more")
    client.remote(["ps:scale", client.app_name(args.uuid), str(args.count)])
    return 0


def kickoff(client: Client, args: argparse.Namespace) -> int:
    inputs = parse_pairs(args.inputs or [], "KEY=VALUE") if args.inputs else {}
    app = client.app_name(args.uuid)
    argv = ["kickoff", app, json.dumps(inputs), *(["--wait"] if args.wait else [])]
    result = client.session().run(argv)
    finished = args.wait and result.stdout.lstrip().startswith(b"{")
    if result.status != 0 and not finished:
        raise client.failure(argv, result, shown=False)
    if not args.wait:
        client.console.out(result.stdout.decode().strip())
        client.console.note("the run goes on in the background; add --wait to wait for it")
        return 0
    if args.json:
        client.console.out(result.stdout.decode().strip())
        return result.status
    return _print_run(client, json.loads(result.stdout))


def _print_run(client: Client, outcome: object) -> int:
    """Print a finished run: its result, or why it failed (exit 1)."""
    body = outcome if isinstance(outcome, dict) else {}
    if body.get("state") == "SUCCESS":
        client.console.out(str(body.get("result", "")))
        return 0
    client.console.error(f"the run ended {body.get('state', 'badly')}: "
                         f"{body.get('error') or 'no error message'} (see 'crewship deploy logs')")
    return 1


def _default_public_key() -> Path:
    ssh_dir = Path.home() / ".ssh"
    for name in PUBLIC_KEYS:
        if (ssh_dir / name).is_file():
            return ssh_dir / name
    raise ClientError(f"no public key in {ssh_dir}: give the .pub file, e.g. "
                      "'crewship keys add laptop ~/.ssh/id_ed25519.pub'")


def keys_list(client: Client, args: argparse.Namespace) -> int:
    client.remote(["keys", *(["--user", args.user] if args.user else []), *_json_flag(args)])
    return 0


def keys_add(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser() if args.file else _default_public_key()
    if not path.is_file():
        raise ClientError(f"no such file: {path} (give an OpenSSH .pub file)")
    if not path.read_text(errors="replace").startswith(("ssh-", "ecdsa-", "sk-")):
        raise ClientError(f"{path} is not an OpenSSH public key (give the .pub file, never "
                          "the private key)")
    user = ["--user", args.user] if args.user else []
    client.remote(["keys:add", args.name, *user], stdin=path.read_bytes())
    return 0


def keys_remove(client: Client, args: argparse.Namespace) -> int:
    client.remote(["keys:remove", args.name, *(["--user", args.user] if args.user else [])])
    return 0


def users_list(client: Client, args: argparse.Namespace) -> int:
    client.remote(["users", *_json_flag(args)])
    return 0


def users_remove(client: Client, args: argparse.Namespace) -> int:
    transfer = ["--transfer-to", args.transfer_to] if args.transfer_to else []
    client.remote(["users:remove", args.name, *transfer])
    return 0


def token(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    client.remote(["tokens:rotate" if args.rotate else "tokens", app])
    return 0


def remote_add(client: Client, args: argparse.Namespace) -> int:
    address = remote.parse_server_url(args.url)
    if not remote.is_git_repo(client.cwd):
        remote.git(["init", "-q", "-b", "main"], client.cwd)
        client.console.note(f"initialised a git repository in {client.cwd}")
    remote.store_server(client.cwd, address)
    client.console.out(f"crewship server: {address.url} (kept in git config {remote.CONFIG_KEY})")
    return 0


def remote_show(client: Client, args: argparse.Namespace) -> int:
    address = client.server
    source = ("$" + remote.ENV_VAR if client.environ.get(remote.ENV_VAR)
              else "git config " + remote.CONFIG_KEY
              if remote.git_config_get(client.cwd, remote.CONFIG_KEY) else "git remote crewship")
    client.console.out(f"{address.url}  (from {source})")
    return 0
