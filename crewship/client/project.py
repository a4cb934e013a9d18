"""The CrewAI project the client runs in: its app name, its ``.env``, its checks.

Pure functions over files; nothing here talks to the server.

* The app name is ``[project].name`` of ``./pyproject.toml`` made lowercase with ``_``
  and spaces turned into ``-`` (``demo_crew`` -> ``demo-crew``), then validated like the
  server does: a name that is still invalid is refused with the ``--name`` hint.
* ``.env`` is read like the crewai CLI reads it (crewai-cli utils.py:172-191): each
  non-blank, non-``#`` line is split on the first ``=``, key and value stripped, inline
  comments kept. Unlike the crewai CLI, one pair of surrounding quotes is removed, a
  leading ``export`` is dropped, and a malformed line is an error naming the line
  (the crewai CLI silently drops the whole file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.project import Finding, read_pyproject, table
from crewship.client.errors import NotAProjectError
from crewship.errors import InvalidInputError
from crewship.model import APP_NAME_RE, CONFIG_KEY_RE


@dataclass(frozen=True)
class Project:
    root: Path
    name: str  # [project].name as written

    @property
    def app(self) -> str:
        return normalize_app_name(self.name)


def normalize_app_name(name: str) -> str:
    """``[project].name`` as an app name; ``InvalidInputError`` if no valid name results."""
    candidate = re.sub(r"[_\s]+", "-", name.strip().lower())
    if not APP_NAME_RE.fullmatch(candidate):
        raise InvalidInputError(
            f"[project].name {name[:50]!r} does not make a valid app name ({candidate[:50]!r}): "
            "app names are 2-39 characters, lowercase letters, digits and '-', starting with "
            "a letter; pass one with --name")
    return candidate


def _is_crewai_project(pyproject: Mapping[str, Any]) -> bool:
    deps = table(dict(pyproject), "project").get("dependencies") or []
    mentions = isinstance(deps, list) and any("crewai" in str(d).lower() for d in deps)
    tools = table(dict(pyproject), "tool")
    return mentions or "crewai" in tools or "crewship" in tools


def find_project(cwd: Path) -> Project:
    """The project whose ``pyproject.toml`` is in ``cwd``, or ``NotAProjectError``."""
    path = cwd / "pyproject.toml"
    hint = ("run crewship in the root of a CrewAI project (where pyproject.toml is), "
            "or make one with 'crewai create crew NAME'")
    if not path.is_file():
        raise NotAProjectError(f"not in a CrewAI project: no pyproject.toml in {cwd}; {hint}")
    try:
        data = read_pyproject(path)
    except (OSError, ValueError) as exc:
        raise NotAProjectError(f"pyproject.toml is not valid TOML ({exc}); fix it first") from None
    name = table(data, "project").get("name")
    if not isinstance(name, str) or not name.strip():
        raise NotAProjectError(
            "pyproject.toml has no [project].name: set name = \"...\" under [project]")
    if not _is_crewai_project(data):
        raise NotAProjectError(
            f"not a CrewAI project: {path} neither depends on crewai nor has a "
            f"[tool.crewai] table; {hint}")
    return Project(cwd, name.strip())


# ------------------------------------------------------------------------ .env
def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_dotenv(text: str, source: str = ".env") -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (see the module docstring)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not sep or not key:
            raise InvalidInputError(
                f"{source} line {number} is not KEY=VALUE: fix or remove it, then try again")
        if not CONFIG_KEY_RE.fullmatch(key):
            raise InvalidInputError(
                f"{source} line {number}: {key[:60]!r} is not a valid config name (uppercase "
                "letters, digits and '_', not starting with a digit): rename it")
        values[key] = _unquote(value.strip())
    return values


def read_dotenv(root: Path) -> dict[str, str]:
    """The project's ``.env`` values; ``{}`` when there is none."""
    path = root / ".env"
    if not path.is_file():
        return {}
    return parse_dotenv(path.read_text(errors="replace"), str(path.name))


# ------------------------------------------------------------------- findings
def format_findings(findings: Iterable[Finding]) -> list[str]:
    """One block per finding: ``ERROR code: message`` then ``  fix: ...``."""
    lines: list[str] = []
    for finding in findings:
        lines.append(f"{finding.severity.upper()} {finding.code}: {finding.message}")
        if finding.detail:
            lines.extend(f"  {part}" for part in finding.detail.splitlines())
        if finding.fix:
            fix = finding.fix.splitlines()
            lines.append(f"  fix: {fix[0]}")
            lines.extend(f"       {part}" for part in fix[1:])
    return lines


# ------------------------------------------------------------------------ apps
def app_for_uuid(apps: Iterable[Mapping[str, Any]], uuid: str) -> str | None:
    """The name of the app with ``uuid`` in an ``apps --json`` listing."""
    wanted = uuid.strip().lower()
    for app in apps:
        if str(app.get("uuid", "")).lower() == wanted:
            return str(app["name"])
    return None
