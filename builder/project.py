"""What a CrewAI project is, read from its files without running any of its code.

Value types (``Finding``, ``ProjectInfo``), ``pyproject.toml`` helpers, a JSONC
reader, the structural check of a JSON crew (``crew.jsonc`` + ``agents/``) and a
bounded scan for environment variables the code reads.
The checks themselves, in the crewai CLI's order, live in ``builder.validate``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

Severity = Literal["error", "warning"]
Kind = Literal["crew", "json_crew", "flow", "declarative_flow", "entrypoint"]

KNOWN_API_KEYS = frozenset({
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY",
    "AZURE_OPENAI_API_KEY", "AZURE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "COHERE_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "TAVILY_API_KEY", "SERPER_API_KEY",
    "SERPLY_API_KEY", "PERPLEXITY_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY",
    "FIRECRAWL_API_KEY", "EXA_API_KEY", "BROWSERBASE_API_KEY",
})
_PY_ENV_REF = re.compile(
    r"""(?x)
    (?:os\.environ\s*(?:\[\s*|\.get\s*\(\s*)
      |os\.getenv\s*\(\s*
      |getenv\s*\(\s*)
    ['"]([A-Z][A-Z0-9_]*)['"]
    """
)
_TEXT_ENV_REF = re.compile(r"\$\{?([A-Z][A-Z0-9_]+)\}?")
# Bounds that keep validation fast on any tree.
_MAX_SCANNED_FILES = 2000
_MAX_VISITED_ENTRIES = 20000
_MAX_SCANNED_BYTES = 1_000_000
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "env", "node_modules", "__pycache__"})
JSON_EXTENSIONS = (".jsonc", ".json")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# A comma whose next significant character closes an object or array.
_TRAILING_COMMA = re.compile(r"\s*(?://[^\n]*(?:\n|$)\s*|/\*.*?\*/\s*)*[}\]]", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """One result of a pre-deploy check; ``code`` is the crewai CLI's code."""

    code: str
    severity: Severity
    message: str
    fix: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ProjectInfo:
    """How the runner loads the project.

    ``package`` is always the normalized ``[project].name``; ``definition`` is the
    ``[tool.crewai].definition`` path relative to the project root (JSON crews,
    declarative flows); ``entrypoint`` is ``[tool.crewship].entrypoint``.
    """

    name: str
    package: str
    kind: Kind
    definition: str | None = None
    entrypoint: str | None = None
    requires_python: str | None = None


def normalize_package_name(project_name: str) -> str:
    """The scaffolded package name for a project name (crewai cli:utils.py:73-76)."""
    folder = project_name.replace(" ", "_").replace("-", "_").lower()
    return re.sub(r"[^a-zA-Z0-9_]", "", folder)


def read_pyproject(path: Path) -> dict[str, Any]:
    """Parse ``pyproject.toml``; raises ``tomllib.TOMLDecodeError`` or ``OSError``."""
    with path.open("rb") as f:
        return tomllib.load(f)


def table(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A nested TOML table, ``{}`` when absent or not a table."""
    current: Any = data
    for key in keys:
        current = current.get(key) if isinstance(current, dict) else None
    return current if isinstance(current, dict) else {}


def detect_kind(pyproject: dict[str, Any]) -> tuple[Kind, str | None, str | None]:
    """``(kind, definition, entrypoint)`` from ``[tool.crewship]`` and ``[tool.crewai]``.

    An explicit crewship entrypoint wins; then the crewai type and definition.
    """
    entrypoint = table(pyproject, "tool", "crewship").get("entrypoint")
    if entrypoint is not None:
        return "entrypoint", None, str(entrypoint)
    crewai = table(pyproject, "tool", "crewai")
    kind = crewai.get("type")
    raw = crewai.get("definition")
    definition = raw.strip() if isinstance(raw, str) else None
    has_definition = "definition" in crewai
    if kind == "flow":
        return ("declarative_flow" if has_definition else "flow"), definition, None
    if kind == "crew" and has_definition:
        return "json_crew", definition, None
    return "crew", None, None


def definition_error(definition: object, root: Path) -> str | None:
    """Why ``[tool.crewai].definition`` is unusable (crewai_core project.py:98-149)."""
    if not isinstance(definition, str):
        return ("[tool.crewai] definition must be a string project-local path; "
                f"got {definition!r}.")
    text = definition.strip()
    if not text:
        return "[tool.crewai] definition must be a non-empty project-local path."
    if text.startswith("~"):
        return f"[tool.crewai] definition must be a project-local path; got {text!r}."
    if PurePosixPath(text).is_absolute() or re.match(r"^[A-Za-z]:[\\/]|^\\\\", text):
        return f"[tool.crewai] definition must be relative to the project root; got {text!r}."
    base = root.resolve()
    candidate = (base / text).resolve()
    if not candidate.is_relative_to(base):
        return f"[tool.crewai] definition must resolve inside the project root; got {text!r}."
    if not candidate.exists():
        return f"[tool.crewai] definition must point to an existing file; got {text!r}."
    if not candidate.is_file():
        return f"[tool.crewai] definition must point to a regular file; got {text!r}."
    return None


def _skip_string(text: str, i: int, out: list[str]) -> int:
    """Copy the JSON string starting at ``text[i] == '"'``; return the index after it."""
    out.append('"')
    i += 1
    while i < len(text):
        char = text[i]
        out.append(char)
        i += 1
        if char == "\\" and i < len(text):
            out.append(text[i])
            i += 1
        elif char == '"':
            break
    return i


def strip_jsonc(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments and trailing commas outside strings."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char, pair = text[i], text[i:i + 2]
        if char == '"':
            i = _skip_string(text, i, out)
        elif pair == "//":
            while i < len(text) and text[i] not in "\r\n":
                i += 1
        elif pair == "/*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated block comment in JSONC input")
            out.append("\n" * text.count("\n", i, end))
            i = end + 2
        elif char == "," and _TRAILING_COMMA.match(text, i + 1):
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def parse_jsonc(text: str, source: str) -> Any:
    """Parse JSON or JSONC; raises ``ValueError`` naming the file, line and column."""
    try:
        return json.loads(strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc


def find_json_file(directory: Path, stem: str) -> Path | None:
    """``stem.jsonc`` or ``stem.json`` in ``directory``, preferring JSONC."""
    for ext in JSON_EXTENSIONS:
        candidate = directory / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _load_object(path: Path, label: str) -> dict[str, Any]:
    data = parse_jsonc(path.read_text(encoding="utf-8", errors="replace"), label)
    if not isinstance(data, dict):
        raise ValueError(f"{label}: expected a JSON object")
    return data


def _agent_errors(agents_dir: Path, name: object, source: str) -> tuple[list[str], bool]:
    """Errors of one referenced agent file, and whether it loaded."""
    if not isinstance(name, str) or not name:
        return [f"{source}: each agent reference must be a non-empty string"], False
    path = find_json_file(agents_dir, name)
    if path is None:
        return [f"{source}: agent '{name}' not found in {agents_dir.name}/ "
                f"(tried {name}.jsonc and {name}.json)"], False
    label = f"{agents_dir.name}/{path.name}"
    try:
        agent = _load_object(path, label)
    except ValueError as exc:
        return [str(exc)], False
    if agent.get("from_repository"):
        return [], True
    missing = [f"{label}: missing required field '{field}'"
               for field in ("role", "goal", "backstory") if agent.get(field) is None]
    return missing, True


def _task_errors(tasks: object, known_agents: set[str], process: object,
                 source: str) -> list[str]:
    if not isinstance(tasks, list) or not tasks:
        return [f"{source}: 'tasks' must be a non-empty list"]
    errors: list[str] = []
    for index, task in enumerate(tasks):
        where = f"{source}: tasks[{index}]"
        if not isinstance(task, dict):
            errors.append(f"{where} must be an object")
            continue
        errors += [f"{where} missing required field '{field}'"
                   for field in ("description", "expected_output") if field not in task]
        agent = task.get("agent")
        if agent is None and process != "hierarchical":
            errors.append(f"{where} has no 'agent' (required unless process is hierarchical)")
        elif agent is not None and agent not in known_agents:
            errors.append(f"{where} references agent '{agent}' which does not match "
                          "a loaded agent definition")
    return errors


def json_crew_errors(crew_path: Path, agents_dir: Path, source: str) -> list[str]:
    """Structural errors of a JSON crew (mirrors crewai's ``validate_crew_project``)."""
    try:
        crew = _load_object(crew_path, source)
    except ValueError as exc:
        return [str(exc)]
    errors: list[str] = []
    crew_name = crew.get("name")
    if not isinstance(crew_name, str) or not crew_name.strip():
        errors.append(f"{source}: 'name' must be a non-empty string")
    names = crew.get("agents")
    if not isinstance(names, list) or not names:
        errors.append(f"{source}: 'agents' must be a non-empty list")
        names = []
    known: set[str] = set()
    for name in names:
        agent_errors, loaded = _agent_errors(agents_dir, name, source)
        errors += agent_errors
        if loaded:
            known.add(str(name))
    errors += _task_errors(crew.get("tasks"), known, crew.get("process"), source)
    return errors


def json_crew_agent_files(crew_path: Path, agents_dir: Path) -> list[Path]:
    """The agent files a (structurally valid) JSON crew references."""
    try:
        names = _load_object(crew_path, crew_path.name).get("agents") or []
    except (ValueError, OSError):
        return []
    found = [find_json_file(agents_dir, n) for n in names if isinstance(n, str) and n]
    return [p for p in found if p is not None]


def walk_files(base: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``base`` with one of ``suffixes``, skipping venvs and VCS dirs, bounded."""
    count = visited = 0
    stack = [base]
    while stack and count < _MAX_SCANNED_FILES and visited < _MAX_VISITED_ENTRIES:
        try:
            entries = sorted(stack.pop().iterdir())
        except OSError:
            continue
        visited += len(entries)
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in _SKIP_DIRS:
                    stack.append(entry)
            elif entry.suffix in suffixes and count < _MAX_SCANNED_FILES:
                count += 1
                yield entry


def read_small(path: Path) -> str:
    try:
        if path.stat().st_size > _MAX_SCANNED_BYTES:
            return ""
        return path.read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return ""


def env_refs(py_files: Iterable[Path], text_files: Iterable[Path]) -> set[str]:
    """Variable names read in Python code (``os.environ[..]``, ``os.getenv``) or as ``${VAR}``."""
    found: set[str] = set()
    for path in py_files:
        found.update(_PY_ENV_REF.findall(read_small(path)))
    for path in text_files:
        found.update(_TEXT_ENV_REF.findall(read_small(path)))
    return found


def dotenv_keys(root: Path) -> set[str]:
    keys: set[str] = set()
    for raw in read_small(root / ".env").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            keys.add(line.split("=", 1)[0].removeprefix("export ").strip())
    return keys
