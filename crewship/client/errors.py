"""Errors of the ``crewship`` client; each message says what to do next.

    CrewshipError (crewship.errors)
    └── ClientError             anything the client refuses or cannot do
        ├── NoServerError       no server configured (remote add / CREWSHIP_SERVER)
        ├── NotAProjectError    not run inside a CrewAI project
        ├── UnreachableError    TCP connect to the server failed or timed out
        ├── HostKeyError        the server's host key changed since first use
        ├── AuthError           every offered key was refused (names the keys)
        ├── RemoteError         a server command exited non-zero (its message was shown)
        └── ChecksFailedError   local pre-deploy validation found errors

The client's entry point prints ``error: <message>`` and exits 1; nothing is changed
on the server after any of these.
"""

from __future__ import annotations

from crewship.errors import CrewshipError


class ClientError(CrewshipError):
    """Root of the client's own errors."""


class NoServerError(ClientError):
    pass


class NotAProjectError(ClientError):
    pass


class UnreachableError(ClientError):
    pass


class HostKeyError(ClientError):
    pass


class AuthError(ClientError):
    pass


class RemoteError(ClientError):
    """A server command failed; ``status`` is its exit status, ``stderr`` what it said."""

    def __init__(self, message: str, status: int = 1, stderr: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.stderr = stderr


class ChecksFailedError(ClientError):
    pass
