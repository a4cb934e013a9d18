"""Value types and pure rules: names, access levels, config keys. No I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from crewship.errors import InvalidInputError

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,38}$")
USER_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,38}$")
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
CONFIG_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class AccessLevel(enum.IntEnum):
    """Soft Serve's ladder: none < read (clone, status, logs) < deploy (push) < admin."""

    NONE = 0
    READ = 1
    DEPLOY = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> AccessLevel:
        try:
            level = cls[text.upper()]
        except KeyError:
            raise InvalidInputError(
                f"unknown access level {text!r}: use read, deploy or admin") from None
        if level is cls.NONE:
            raise InvalidInputError("use access:remove to take access away")
        return level

    def __str__(self) -> str:
        return self.name.lower()


def validate_app_name(name: str) -> str:
    """Return ``name`` if it is a valid app name; never rewrite it."""
    if not APP_NAME_RE.fullmatch(name):
        shown = name if len(name) <= 50 else name[:47] + "..."
        raise InvalidInputError(
            f"invalid app name {shown!r}: use 2-39 characters, lowercase letters, digits "
            "and '-', starting with a letter")
    return name


def validate_user_name(name: str) -> str:
    if not USER_NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid user name {name[:50]!r}: use lowercase letters, digits, '_', '.', '-', "
            "starting with a letter, at most 39 characters")
    return name


def validate_key_name(name: str) -> str:
    if not KEY_NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid key name {name[:70]!r}: use letters, digits, '_', '.', '@', '-' "
            "(at most 64 characters)")
    return name


def validate_config_key(key: str) -> str:
    if not CONFIG_KEY_RE.fullmatch(key):
        raise InvalidInputError(
            f"invalid config name {key[:70]!r}: use uppercase letters, digits and '_', "
            "not starting with a digit (like OPENAI_API_KEY)")
    return key


@dataclass(frozen=True)
class RefUpdate:
    """One ref a push moved: ``old`` and ``new`` are commit ids (40 zeros: none)."""

    old: str
    new: str
    ref: str


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class Key:
    id: int
    user: str
    name: str
    fingerprint: str
    public_key: str
    created_at: str


@dataclass(frozen=True)
class App:
    id: int
    name: str
    uuid: str
    owner: str | None
    created_at: str
    deploy_branch: str | None = None
    scale: int = 1
    live_release: int | None = None
    memory_limit: int | None = None   # bytes (the docker runtime's ps:limits)
    cpu_limit: float | None = None
    crashed_at: str | None = None      # set when a crash loop stopped restarts
    placement: tuple[str, ...] = ()    # Swarm constraints (the swarm runtime's ps:placement)


_MEMORY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kmgKMG]?)[bB]?$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY = 64 * 1024**2
MAX_CPUS = 256.0


def parse_memory(text: str) -> int | None:
    """``512m``, ``1g``, ``1.5G`` -> bytes; ``none`` -> None (unlimited). At least 64m."""
    if text.lower() in ("none", "0", "unlimited"):
        return None
    found = _MEMORY_RE.fullmatch(text.strip())
    if found is None:
        raise InvalidInputError(f"invalid memory limit {text[:30]!r}: use a size like 512m "
                                "or 1g, or none")
    value = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
    if value < MIN_MEMORY:
        raise InvalidInputError(f"memory limit {text[:30]!r} is too small: at least 64m")
    return value


def parse_cpus(text: str) -> float | None:
    """``1``, ``0.5`` -> CPUs; ``none`` -> None (unlimited)."""
    if text.lower() in ("none", "0", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"invalid CPU limit {text[:30]!r}: use a number like 1 or 0.5, "
                                "or none") from None
    if not 0.01 <= value <= MAX_CPUS:  # also refuses nan and inf
        raise InvalidInputError(f"CPU limit {text[:30]!r} out of range: 0.01 to {MAX_CPUS:g}")
    return value


def format_memory(value: int | None) -> str:
    if value is None:
        return "unlimited"
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def human_bytes(value: float | None) -> str:
    """``512 B``, ``12.3 KB``, ``312.4 MB``, ``1.2 GB``; ``-`` when not known."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def access_level(user: User, app: App | None, grant: AccessLevel | None) -> AccessLevel:
    """A user's level on an app: admin users and owners get admin, else their grant.

    ``app`` None means the app does not exist: any known user may create it by pushing
    (deploy level), as Soft Serve does for registered users.
    """
    if user.is_admin:
        return AccessLevel.ADMIN
    if app is None:
        return AccessLevel.DEPLOY
    if app.owner == user.name:
        return AccessLevel.ADMIN
    return grant or AccessLevel.NONE
