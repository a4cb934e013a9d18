"""An ``ssh`` stand-in for git (``GIT_SSH_COMMAND``), so pushes use the client's paramiko
connection: the same keys, agent and known_hosts as every other ``crewship`` command.

git calls it, with ``GIT_SSH_VARIANT=ssh``, as::

    python -m crewship.client.gitssh [-o SendEnv=GIT_PROTOCOL] [-4|-6] [-p PORT] [USER@]HOST COMMAND

It pipes stdin/stdout to the remote command, relays stderr, and exits with the remote
exit status (255 when the connection itself failed, like OpenSSH).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from crewship.client.errors import ClientError
from crewship.client.remote import DEFAULT_USER, ServerAddress
from crewship.client.ssh import connect, feed_stdin, pump
from crewship.errors import InvalidInputError

CONNECTION_FAILED = 255


@dataclass(frozen=True)
class Invocation:
    address: ServerAddress
    command: str


def parse_argv(argv: Sequence[str]) -> Invocation:
    """The destination and command from git's ssh argv (OpenSSH option syntax)."""
    port = 22
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("-4", "-6", "-T", "-q"):
            continue
        if flag in ("-o", "-p") and rest:
            value = rest.pop(0)
            if flag == "-p":
                port = int(value)
            continue
        if flag.startswith("-p") and flag[2:].isdigit():
            port = int(flag[2:])
            continue
        if flag.startswith("-o"):
            continue
        raise InvalidInputError(f"unsupported ssh option {flag!r}")
    if len(rest) < 2:
        raise InvalidInputError("usage: gitssh [-p PORT] [USER@]HOST COMMAND")
    user, _, host = rest[0].rpartition("@")
    return Invocation(ServerAddress(host, port, user or DEFAULT_USER), " ".join(rest[1:]))


def _note(text: str) -> None:
    sys.stderr.write(f"{text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        call = parse_argv(sys.argv[1:] if argv is None else argv)
        env = {"GIT_PROTOCOL": os.environ["GIT_PROTOCOL"]} if "GIT_PROTOCOL" in os.environ else {}
        with connect(call.address, notify=_note) as session:
            channel = session.open(call.command, env)
            feed_stdin(channel, sys.stdin.buffer)
            result = pump(channel, sys.stdout.buffer, sys.stderr.buffer)
            channel.close()
            return result.status
    except (ClientError, InvalidInputError, ValueError) as exc:
        sys.stderr.write(f"crewship: {exc}\n")
        return CONNECTION_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
