"""``crewship login --crewai``: point the real ``crewai`` CLI at a crewship server.

1. A user API token: made over SSH (``api-tokens:create``, with the client's keys
   and the server from ``--ssh``, ``$CREWSHIP_SERVER`` or the project), or given
   with ``--token`` (one made by ``ssh ... api-tokens:create``).
2. Stored where the crewai CLI reads it: crewai-core's ``TokenManager``, run by the
   interpreter of the ``crewai`` executable on PATH (the token goes over stdin,
   never on a command line).
3. ``crewai config set enterprise_base_url URL`` (``--server``, default
   ``http://<ssh host>:8000``), so ``crewai deploy`` talks to crewship.

It says what it did at each step; nothing is stored when the token cannot be made.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from crewship.client import remote
from crewship.client.context import Client
from crewship.client.errors import ClientError

DEFAULT_DAYS = 90
NEVER_DAYS = 3650
HTTP_PORT = 8000
SAVE = ("import sys; from crewai_core.token_manager import TokenManager; "
        "TokenManager().save_tokens(sys.stdin.readline().strip(), int(sys.argv[1]))")


def add_login_command(sub: Any) -> None:
    """Add ``crewship login`` to the ``crewship`` parser (run by the client's runner)."""
    p = sub.add_parser("login", help="log the crewai CLI in to this crewship server",
                       description="Store a crewship API token where the crewai CLI reads it "
                                   "and point the crewai CLI at this crewship server.")
    p.add_argument("--crewai", action="store_true", required=True,
                   help="store a crewship API token for the 'crewai' CLI (the only mode)")
    p.add_argument("--server", metavar="URL",
                   help="crewship's HTTP URL for crewai (default http://<ssh host>:8000)")
    p.add_argument("--ssh", metavar="URL", help="where to make the token (ssh://git@HOST:2222; "
                   "default $CREWSHIP_SERVER or the project's crewship remote)")
    p.add_argument("--token", help="use this API token instead of making one over SSH")
    p.add_argument("--expires-days", type=int, default=None, metavar="N",
                   help=f"the new token's lifetime (default {DEFAULT_DAYS} days)")
    p.set_defaults(client_handler=login)


def crewai_python(crewai: str | None = None) -> Path:
    """The interpreter of the ``crewai`` executable on PATH."""
    exe = crewai or shutil.which("crewai")
    if exe is None:
        raise ClientError("the 'crewai' command is not on PATH: install it (e.g. 'uv tool "
                          "install crewai-cli') and try again")
    first = Path(exe).read_bytes()[:512].split(b"\n", 1)[0].decode(errors="replace")
    if first.startswith("#!") and "python" in first and " " not in first[2:].strip():
        return Path(first[2:].strip())
    beside = Path(exe).resolve().parent / "python"
    if beside.exists():
        return beside
    raise ClientError(f"cannot tell which Python runs {exe}: use its venv's crewai")


def _make_token(client: Client, args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(token, expires_at ISO or None, where it was made)."""
    days = args.expires_days if args.expires_days is not None else DEFAULT_DAYS
    result = client.remote(["api-tokens:create", "--expires-days", str(days), "--json"],
                           stream=False)
    try:
        made = json.loads(result.stdout)
        return str(made["token"]), made.get("expires_at"), client.server.url
    except (ValueError, KeyError, TypeError):
        raise ClientError("the server's 'api-tokens:create' did not answer a token: is it a "
                          "crewship server with API tokens?") from None


def _expires_unix(expires_at: str | None) -> int:
    if not expires_at:
        return int((dt.datetime.now(dt.UTC) + dt.timedelta(days=NEVER_DAYS)).timestamp())
    return int(dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp())


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClientError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ClientError(f"{what} failed: {said[-1] if said else done.returncode}")


def _check(url: str, token: str) -> str:
    try:
        answer = httpx.get(f"{url}/crewai_plus/api/v1/me/organizations",
                           headers={"Authorization": f"Bearer {token}"}, timeout=5)
    except httpx.HTTPError as exc:
        return f"could not reach {url} to check the token ({type(exc).__name__})"
    if answer.status_code == 200:
        return f"{url} accepts the token"
    return f"{url} answered {answer.status_code} to the token: check --server"


def login(client: Client, args: argparse.Namespace) -> int:
    if not args.ssh:
        return _login(client, args)
    remote.parse_server_url(args.ssh)  # a clear error for a bad URL
    inner = Client(client.console, client.cwd, {**client.environ, remote.ENV_VAR: args.ssh})
    try:
        return _login(inner, args)
    finally:
        inner.close()


def _login(client: Client, args: argparse.Namespace) -> int:
    say = client.console.out
    crewai = shutil.which("crewai")
    python = crewai_python(crewai)
    assert crewai is not None
    if args.token:
        token, expires_at, origin = args.token.strip(), None, "given with --token"
        if args.expires_days is not None:
            expires_at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=args.expires_days)).isoformat()
    else:
        token, expires_at, origin = _make_token(client, args)
        say(f"Made a crewship API token on {origin} (expires {expires_at or 'never'}; "
            "see 'api-tokens' over SSH, revoke with 'api-tokens:revoke ID')")
    url = (args.server or f"http://{client.server.host}:{HTTP_PORT}").rstrip("/")
    _run([str(python), "-c", SAVE, str(_expires_unix(expires_at))],
         "storing the token with crewai-core's TokenManager", stdin=token + "\n")
    say(f"Stored the token for the crewai CLI (crewai-core TokenManager, via {python})")
    _run([crewai, "config", "set", "enterprise_base_url", url], "crewai config set")
    say(f"Set crewai's enterprise_base_url to {url} ('crewai config list' shows it; "
        "$CREWAI_PLUS_URL, when set, wins over it)")
    say(_check(url, token))
    say("Next, in a CrewAI project: crewai deploy create")
    return 0
