"""What every client command works with: the console (the client's only output layer),
the project, the server address and one SSH session, opened when first needed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from crewship.client import project as projects
from crewship.client import remote
from crewship.client.errors import ClientError, RemoteError
from crewship.errors import NotFoundError

if TYPE_CHECKING:
    from crewship.client import ssh

NOT_FOUND_MARK = "app not found"
UNKNOWN_COMMAND_MARK = "unknown command"


class Console:
    """The client's output: results on stdout, notes and progress on stderr."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 stdin: TextIO | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stdin = stdin or sys.stdin

    def out(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.stderr, flush=True)

    def confirm(self, question: str, *, assume_yes: bool = False) -> bool:
        """Ask ``question [y/N]``; end of input counts as no."""
        if assume_yes:
            return True
        self.stderr.write(f"{question} [y/N] ")
        self.stderr.flush()
        answer = self.stdin.readline()
        if not answer:
            self.stderr.write("\n")
        return answer.strip().lower() in ("y", "yes")

    @property
    def binary_out(self) -> Any:
        return getattr(self.stdout, "buffer", None)

    @property
    def binary_err(self) -> Any:
        return getattr(self.stderr, "buffer", None)


class Client:
    """One invocation of the client, run in ``cwd``."""

    def __init__(self, console: Console | None = None, cwd: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.console = console or Console()
        self.cwd = cwd or Path.cwd()
        self.environ = dict(os.environ if environ is None else environ)
        self._session: ssh.Session | None = None
        self._server: remote.ServerAddress | None = None

    # --------------------------------------------------------------- resolving
    def project(self) -> projects.Project:
        return projects.find_project(self.cwd)

    @property
    def server(self) -> remote.ServerAddress:
        if self._server is None:
            self._server = remote.resolve_server(self.cwd, self.environ)
        return self._server

    def session(self) -> ssh.Session:
        if self._session is None:
            from crewship.client import ssh  # paramiko takes ~1 s to import: only when needed

            self._session = ssh.connect(self.server, notify=self.console.note)
        return self._session

    def app_name(self, uuid: str | None = None, name: str | None = None) -> str:
        """The app: ``name``, else the one with ``uuid``, else the one the ``crewship`` git
        remote points at, else ``[project].name`` of pyproject.toml."""
        if name:
            return name
        if uuid:
            found = projects.app_for_uuid(self.remote_json(["apps"]), uuid)
            if found is None:
                raise NotFoundError(
                    f"no app with uuid {uuid} among your apps on {self.server.display}: "
                    "see 'crewship deploy list'")
            return found
        project = self.project()
        return remote.app_from_remote(project.root) or project.app

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # ----------------------------------------------------------------- remote
    def remote(self, argv: Sequence[str], *, stdin: bytes | None = None,
               stream: bool = True) -> ssh.Result:
        """Run a server command; on failure raise ``RemoteError`` with a hint."""
        console = self.console
        result = self.session().run(
            argv, stdin=stdin, out=console.binary_out if stream else None,
            err=console.binary_err if stream else None)
        if result.status != 0:
            raise self.failure(argv, result, shown=stream)
        return result

    def remote_json(self, argv: Sequence[str]) -> Any:
        result = self.remote([*argv, "--json"], stream=False)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise ClientError(f"'{argv[0]}' did not answer JSON: is the server a crewship "
                              "server of the same version?") from None

    def failure(self, argv: Sequence[str], result: ssh.Result, *, shown: bool) -> RemoteError:
        said = result.stderr.strip().removeprefix("error: ")
        message = "" if shown else said
        if NOT_FOUND_MARK in said:
            app = argv[1] if len(argv) > 1 else "the app"
            message = (f"{app} does not exist on {self.server.display} or is not yours: "
                       "create it with 'crewship deploy create', list yours with 'crewship "
                       "deploy list', or ask its owner for access")
        elif UNKNOWN_COMMAND_MARK in said:
            message = (f"the server at {self.server.display} has no '{argv[0]}' command: "
                       "it runs an older crewship; upgrade it")
        elif shown:
            message = f"'{argv[0]}' failed on the server (see its message above)"
        return RemoteError(message or f"'{argv[0]}' failed (exit {result.status})",
                           result.status, result.stderr)
