"""The SSH command framework: a fixed table, argv from ``shlex``, never a shell.

Each command is a coroutine taking a ``Context`` and parsed arguments; the table
carries its name, usage and one-line summary. ``--json`` is accepted by every read
command.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from crewship.errors import InvalidInputError
from crewship.model import User
from crewship.reporter import LineReporter
from crewship.service.platform import Platform

MAX_STDIN = 64 * 1024


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise InvalidInputError(f"{message} (usage: {self.format_usage().strip()[7:]})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise InvalidInputError(message or "invalid arguments")


@dataclass
class Context:
    """What a command sees: the caller, the service, and the channel's streams."""

    user: User
    platform: Platform
    process: Any  # asyncssh.SSHServerProcess[bytes]
    conn_id: str
    env: dict[str, str] = field(default_factory=dict)

    def out(self, text: str = "") -> None:
        self.process.stdout.write((text + "\n").encode())

    def err(self, text: str) -> None:
        self.process.stderr.write((text + "\n").encode())

    def out_json(self, value: object) -> None:
        self.out(json.dumps(value, indent=2, default=str))

    def listing(self, as_json: bool, found: Sequence[Any], *, empty: str, headers: list[str],
                row: Callable[[Any], list[str]], title: str | None = None,
                to_json: Callable[[Any], object] | None = None) -> int:
        """A read command's output: JSON, a hint when there is nothing, or a table."""
        if as_json:
            self.out_json([to_json(x) for x in found] if to_json else list(found))
        elif not found:
            self.out(empty)
        else:
            if title:
                self.out(f"=== {title}")
            self.out(table([row(x) for x in found], headers))
        return 0

    def reporter(self) -> LineReporter:
        """User-facing progress (``-----> ...``) on this command's stdout."""
        return LineReporter(self.out)

    async def read_stdin(self, limit: int = MAX_STDIN) -> bytes:
        data = b""
        while len(data) <= limit:
            chunk = await self.process.stdin.read(limit + 1 - len(data))
            if not chunk:
                return data
            data += chunk
        raise InvalidInputError(f"input too large (more than {limit} bytes)")


Handler = Callable[[Context, argparse.Namespace], Awaitable[int | None]]
Configure = Callable[[ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    handler: Handler
    configure: Configure | None = None
    read: bool = False  # read commands take --json

    def parser(self) -> ArgumentParser:
        parser = ArgumentParser(prog=self.name, description=self.summary, add_help=False)
        if self.configure is not None:
            self.configure(parser)
        if self.read:
            parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    def usage(self) -> str:
        return self.parser().format_usage().strip()[7:]


class Registry:
    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def command(self, name: str, summary: str, configure: Configure | None = None,
                *, read: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.commands[name] = Command(name, summary, handler, configure, read)
            return handler
        return register

    def get(self, name: str) -> Command | None:
        return self.commands.get(name)


REGISTRY = Registry()
command = REGISTRY.command


def app_arg(p: ArgumentParser) -> None:
    """The APP positional argument most commands take."""
    p.add_argument("app")


def when(stamp: str | None) -> str:
    """An ISO timestamp as the tables show it (UTC, no T/Z)."""
    return stamp.replace("T", " ").removesuffix("Z") if stamp else "-"


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Plain aligned columns, like ``heroku apps``."""
    cells = [headers, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)
