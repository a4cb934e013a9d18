"""Errors crewship raises on purpose.

Every error here carries a message a user can act on; the front doors (SSH, HTTP,
client) print ``str(error)`` as one line and map the class to an exit status or an
HTTP code. Anything that is not a ``CrewshipError`` is a bug: it is logged with its
traceback and reported as ``internal error (ref <id>)``.

    CrewshipError
    ├── InvalidInputError      bad name, bad argument, malformed JSON, oversized upload (400/422)
    │   ├── MissingInputsError a kickoff without the crew's required inputs (422)
    │   ├── TooLargeError      a request body or kickoff input over its limit (413)
    │   └── UnprocessableInputError  well-formed but invalid, like a state id that is no UUID (422)
    ├── NotFoundError          unknown app/user/key/release, or no access to it (404)
    ├── PermissionDeniedError  known thing, not allowed (403)
    │   └── QuotaExceededError  over a user's quota of apps, instances or memory (403)
    ├── ConflictError          already exists, or busy (409)
    ├── UnavailableError       nothing is running to answer (503)
    │   └── StorageFullError   the data dir's disk is full, nothing written (503)
    ├── QueueFullError         an app's kickoff queue is full (429, Retry-After)
    ├── BuildError             the builder refused or failed the commit
    │   └── ValidationError    a project check with a code (missing_tasks_yaml, ...)
    └── DeployError            the release did not become live (health check, start)
"""

from __future__ import annotations


class CrewshipError(Exception):
    """Root of every error crewship raises deliberately."""

    http_status = 500
    exit_status = 1


class InvalidInputError(CrewshipError):
    http_status = 400


class MissingInputsError(InvalidInputError):
    http_status = 422

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"missing required inputs: {', '.join(missing)}")


class TooLargeError(InvalidInputError):
    http_status = 413


class UnprocessableInputError(InvalidInputError):
    http_status = 422


class NotFoundError(CrewshipError):
    http_status = 404


class PermissionDeniedError(CrewshipError):
    http_status = 403


class QuotaExceededError(PermissionDeniedError):
    """Creating, scaling or limiting an app would take its owner past a quota."""


class ConflictError(CrewshipError):
    http_status = 409


class UnavailableError(CrewshipError):
    http_status = 503


class StorageFullError(UnavailableError):
    """The data dir's filesystem is full: nothing was written; free space and retry."""


class QueueFullError(CrewshipError):
    http_status = 429

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BuildError(CrewshipError):
    """The builder could not turn a commit into a release."""

    http_status = 422


class ValidationError(BuildError):
    """A pre-deploy check failed; ``code`` matches the crewai CLI's check codes."""

    def __init__(self, code: str, message: str, fix: str = "") -> None:
        self.code = code
        self.message = message
        self.fix = fix
        text = f"{code}: {message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class DeployError(CrewshipError):
    """A built release could not be made live; the old release keeps serving."""

    http_status = 500


def app_not_found(name: str) -> NotFoundError:
    """The one message for both "no such app" and "no access to it"."""
    return NotFoundError(f"app not found: {name!r} (see 'apps' for the apps you can use, "
                         f"or create it with 'apps:create {name}')")
