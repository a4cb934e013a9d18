"""Server-side equivalents of ``crewai deploy validate`` (layout checks only).

The checks run in the crewai CLI's order (crewai-cli deploy/validate.py:303-329)
and carry its codes, titles and hints, for all four ``crewai create`` layouts plus
``[tool.crewship] entrypoint = "pkg.mod:callable"``. Differences on purpose:

* no import check: a crew that fails to import fails the health check instead;
* a declarative flow (``type = "flow"`` with a ``definition``) needs no ``main.py``
  (the CLI wrongly demands one) but a valid definition (``invalid_flow_definition``);
* only ``uv.lock`` is installable: a ``poetry.lock``-only project is refused;
* ``env_vars_not_in_dotenv`` counts the app's config keys, not the server's environment;
* ``stale_lockfile`` comes from ``uv lock --check --offline`` (``check_lockfile``),
  never from file times, which mean nothing after a git export.

``validate`` is pure and synchronous: it reads files, never runs project code.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from builder.project import (
    ENTRYPOINT_RE,
    KNOWN_API_KEYS,
    Finding,
    Kind,
    ProjectInfo,
    Severity,
    definition_error,
    detect_kind,
    dotenv_keys,
    env_refs,
    json_crew_agent_files,
    json_crew_errors,
    normalize_package_name,
    read_pyproject,
    read_small,
    table,
    walk_files,
)
from crewship import proc

_CREWAI_PIN = re.compile(r'name\s*=\s*"crewai"\s*\nversion\s*=\s*"([^"]+)"')
MISSING_LOCKFILE = Finding(
    "missing_lockfile", "error",
    "Expected to find at least one of these files: uv.lock or poetry.lock",
    fix=("Run `uv lock` (recommended) or `poetry lock` in your project directory, "
         "commit the lockfile, then redeploy."),
)
POETRY_ONLY = Finding(
    "missing_lockfile", "error",
    "Found poetry.lock but no uv.lock: crewship installs dependencies from uv.lock only",
    fix="Run `uv lock` in your project directory, commit uv.lock, then redeploy.",
)


@dataclass(frozen=True)
class Validation:
    """Every finding, in check order, and what the project is (None if unknowable)."""

    info: ProjectInfo | None
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(root: Path, config_keys: Collection[str] = frozenset()) -> Validation:
    """Run the layout checks on the project tree at ``root``."""
    return _Checker(root, config_keys).run()


def lockfile_finding(root: Path) -> Finding | None:
    """``missing_lockfile`` when the tree has no ``uv.lock``, else None."""
    if (root / "uv.lock").is_file():
        return None
    return POETRY_ONLY if (root / "poetry.lock").is_file() else MISSING_LOCKFILE


async def check_lockfile(root: Path, uv: str, python: str | None = None,
                         timeout: float = 3.0) -> Finding | None:
    """``stale_lockfile`` if ``uv lock --check --offline`` says the lock needs updating.

    Anything else (no cache offline, timeout, uv missing) is no finding: the build
    installs from the lock as it is, like the CrewAI platform does.
    """
    if not (root / "uv.lock").is_file():
        return None
    argv = [uv, "lock", "--check", "--offline"] + (["--python", python] if python else [])
    env = proc.base_env({"UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"})
    try:
        result = await proc.run(argv, env=env, cwd=root, timeout=timeout, check=False)
    except (proc.CommandError, OSError):
        return None
    if result.returncode == 0 or "needs to be updated" not in result.stderr.decode(errors="replace"):
        return None
    return Finding(
        "stale_lockfile", "warning", "uv.lock is out of date with pyproject.toml",
        fix="Run `uv lock` and commit the result.",
        detail=("Your lockfile does not reflect recent dependency changes. The platform "
                "resolves from the lockfile, so deployed dependencies may differ from local."),
    )


class _Checker:
    """One validation run; the methods are the CLI's checks, in its order."""

    def __init__(self, root: Path, config_keys: Collection[str]) -> None:
        self.root = root
        self.config_keys = frozenset(config_keys)
        self.findings: list[Finding] = []
        self.pyproject: dict[str, Any] = {}
        self.name: str | None = None
        self.package = ""
        self.package_dir: Path | None = None
        self.kind: Kind | None = None
        self.definition: str | None = None
        self.entrypoint: str | None = None

    def add(self, code: str, severity: Severity, message: str, fix: str = "",
            detail: str = "") -> None:
        self.findings.append(Finding(code, severity, message, fix, detail))

    def run(self) -> Validation:
        named = self.check_pyproject()
        if self.kind == "json_crew":
            self.run_json_crew()
        elif named:
            self.check_lockfile()
            if self.kind == "entrypoint":
                self.run_entrypoint()
            else:
                self.run_package()
        return Validation(self.info(), tuple(self.findings))

    def info(self) -> ProjectInfo | None:
        if self.name is None or self.kind is None:
            return None
        requires = table(self.pyproject, "project").get("requires-python")
        return ProjectInfo(self.name, self.package, self.kind, self.definition,
                           self.entrypoint, requires if isinstance(requires, str) else None)

    def run_package(self) -> None:
        """Classic crew, Python flow and declarative flow (validate.py:307-329)."""
        if not self.check_package_dir():
            self.check_hatch_wheel_target()
            return
        if self.kind == "flow":
            self.check_flow_main()
        elif self.kind == "declarative_flow":
            self.check_flow_definition()
        else:
            self.check_crew_py()
            self.check_config_yamls()
        self.check_hatch_wheel_target()
        assert self.package_dir is not None
        self.check_env_vars(list(walk_files(self.package_dir, (".py",))),
                            list(walk_files(self.package_dir, (".yaml", ".yml"))))
        self.check_crewai_pin()

    def run_json_crew(self) -> None:
        """JSON crew suite (validate.py:331-398)."""
        self.check_lockfile()
        error = definition_error(table(self.pyproject, "tool", "crewai").get("definition"),
                                 self.root)
        if error is not None:
            self.add("invalid_crew_definition", "error", "[tool.crewai] definition is invalid",
                     fix="Set `[tool.crewai] definition` to a project-local JSON or JSONC "
                         "crew file.", detail=error)
            return
        assert self.definition is not None
        crew_path = self.root / self.definition
        agents_dir = crew_path.parent / "agents"
        if not agents_dir.is_dir():
            rel = agents_dir.relative_to(self.root)
            self.add("missing_agents_dir", "error", "Cannot find agents/ directory",
                     fix="Create agents/ and add one JSON or JSONC file per agent.",
                     detail=f"JSON crew projects load agent definitions from {rel}/*.jsonc "
                            "or *.json.")
            return
        errors = json_crew_errors(crew_path, agents_dir, self.definition)
        if errors:
            self.add("invalid_crew_json", "error",
                     f"{crew_path.name} has invalid JSON crew configuration",
                     fix="Fix the JSON crew, agent, and task references before deploying.",
                     detail="\n".join(errors))
            return
        texts = [crew_path, *json_crew_agent_files(crew_path, agents_dir)]
        self.check_env_vars(list(walk_files(self.root, (".py",))), texts)
        self.check_crewai_pin()

    def run_entrypoint(self) -> None:
        """``[tool.crewship] entrypoint``: the module must exist in the tree."""
        top = self.check_entrypoint()
        if top is None:
            return
        self.check_env_vars(list(walk_files(top, (".py",))) if top.is_dir() else [top], [])
        self.check_crewai_pin()

    def check_pyproject(self) -> bool:
        path = self.root / "pyproject.toml"
        if not path.is_file():
            self.add("missing_pyproject", "error", "Cannot find pyproject.toml",
                     fix="Run `crewai create crew <name>` to scaffold a valid project layout.",
                     detail="Expected pyproject.toml at the project root. CrewAI projects "
                            "must be installable Python packages.")
            return False
        try:
            self.pyproject = read_pyproject(path)
        except (OSError, ValueError) as exc:
            self.add("invalid_pyproject", "error", "pyproject.toml is not valid TOML",
                     fix="Fix the TOML syntax error in pyproject.toml.", detail=str(exc))
            return False
        self.kind, self.definition, self.entrypoint = detect_kind(self.pyproject)
        name = table(self.pyproject, "project").get("name")
        if not isinstance(name, str) or not name.strip():
            self.add("missing_project_name", "error", "pyproject.toml is missing [project].name",
                     fix='Set a `name = "..."` field under `[project]` in pyproject.toml.',
                     detail="Without a project name the platform cannot resolve your package "
                            "directory (this produces errors like 'Cannot find src//crew.py').")
            return False
        self.name = name
        self.package = normalize_package_name(name)
        return True

    def check_lockfile(self) -> None:
        finding = lockfile_finding(self.root)
        if finding is not None:
            self.findings.append(finding)

    def check_package_dir(self) -> bool:
        src = self.root / "src"
        if not src.is_dir():
            self.add("missing_src_dir", "error", "Missing src/ directory",
                     fix="Run `crewai create crew <name>` to see the expected layout.",
                     detail="CrewAI deployments expect a src-layout project: "
                            f"src/{self.package}/crew.py (or main.py for flows).")
            return False
        entries = sorted(src.iterdir())
        eggs = [p.name for p in entries if p.name.endswith(".egg-info")]
        package_dir = src / self.package
        if not package_dir.is_dir():
            self.add("missing_package_dir", "error", f"Cannot find src/{self.package}/",
                     fix=self._package_dir_fix(entries, eggs),
                     detail="The platform looks for your crew source under "
                            "src/<package_name>/, derived from [project].name.")
            return False
        for egg in eggs:
            self.add("stale_egg_info", "warning", f"Stale build artifact in src/: {egg}",
                     fix=f"Delete src/{egg} and add `*.egg-info/` to .gitignore.",
                     detail=".egg-info directories can be mistaken for your package and "
                            "cause 'Cannot find src/<name>.egg-info/crew.py' errors.")
        self.package_dir = package_dir
        return True

    def _package_dir_fix(self, entries: list[Path], eggs: list[str]) -> str:
        parts = [f'Create src/{self.package}/ to match [project].name = "{self.name}".']
        siblings = [p.name for p in entries if p.is_dir() and not p.name.endswith(".egg-info")]
        if siblings:
            parts.append(f"Found other package directories: {', '.join(siblings)}. Either "
                         f"rename one to '{self.package}' or update [project].name.")
        if eggs:
            parts.append(f"Delete stale build artifacts: {', '.join(eggs)} (these confuse "
                         "the platform's package discovery).")
        return " ".join(parts)

    def check_crew_py(self) -> None:
        if not (self.root / "src" / self.package / "crew.py").is_file():
            self.add("missing_crew_py", "error", f"Cannot find src/{self.package}/crew.py",
                     fix="Create crew.py with an @CrewBase-annotated class, or set "
                         '`[tool.crewai] type = "flow"` in pyproject.toml if this is a flow.',
                     detail="Standard crew projects must define a Crew class decorated with "
                            "@CrewBase inside crew.py.")

    def check_config_yamls(self) -> None:
        config = f"src/{self.package}/config"
        if not (self.root / config).is_dir():
            self.add("missing_config_dir", "error", f"Cannot find {config}",
                     fix="Create a config/ directory with agents.yaml and tasks.yaml.")
            return
        for yaml_name in ("agents.yaml", "tasks.yaml"):
            if not (self.root / config / yaml_name).is_file():
                self.add(f"missing_{yaml_name.replace('.', '_')}", "error",
                         f"Cannot find {config}/{yaml_name}",
                         fix=f"Create {config}/{yaml_name} (see `crewai create crew <name>`).",
                         detail="CrewAI loads agent and task config from these files; missing "
                                "them causes empty-config warnings and runtime crashes.")

    def check_flow_main(self) -> None:
        if not (self.root / "src" / self.package / "main.py").is_file():
            self.add("missing_flow_main", "error", f"Cannot find src/{self.package}/main.py",
                     fix="Create main.py with a `class MyFlow(Flow[...])`.",
                     detail="Flow projects must define a Flow subclass in main.py. This "
                            'project has `[tool.crewai] type = "flow"` set.')

    def check_flow_definition(self) -> None:
        error = definition_error(table(self.pyproject, "tool", "crewai").get("definition"),
                                 self.root)
        if error is not None:
            self.add("invalid_flow_definition", "error", "[tool.crewai] definition is invalid",
                     fix="Set `[tool.crewai] definition` to the project-local flow YAML file, "
                         f'e.g. "src/{self.package}/flow.yaml".', detail=error)

    def check_hatch_wheel_target(self) -> None:
        backend = table(self.pyproject, "build-system").get("build-backend", "")
        if not isinstance(backend, str) or "hatchling" not in backend:
            return
        wheel = table(self.pyproject, "tool", "hatch", "build", "targets", "wheel")
        if wheel.get("packages") or wheel.get("only-include"):
            return
        if self.package_dir is not None and self.package_dir.is_dir():
            return
        self.add("hatch_wheel_target_missing", "error",
                 "Hatchling cannot determine which files to ship",
                 fix=("Add:\n  [tool.hatch.build.targets.wheel]\n"
                      f'  packages = ["src/{self.package}"]'),
                 detail="Your pyproject uses hatchling but has no "
                        "[tool.hatch.build.targets.wheel] configuration and no directory "
                        "matching your project name.")

    def check_entrypoint(self) -> Path | None:
        """The entrypoint's top-level package dir (or module file), if it exists."""
        value = self.entrypoint or ""
        fix = ('Set `[tool.crewship] entrypoint = "package.module:callable"` to a module in '
               "the repository (under src/ or at the root).")
        if not ENTRYPOINT_RE.match(value):
            self.add("invalid_entrypoint", "error",
                     f"[tool.crewship] entrypoint {value!r} is not of the form "
                     "'package.module:callable'", fix=fix)
            return None
        rel = value.split(":", 1)[0].replace(".", "/")
        for base in (self.root / "src", self.root):
            for candidate in (base / f"{rel}.py", base / rel / "__init__.py"):
                if candidate.is_file():
                    top = base / rel.split("/", 1)[0]
                    return top if top.is_dir() else candidate
        self.add("invalid_entrypoint", "error",
                 f"Cannot find the module of [tool.crewship] entrypoint {value!r}",
                 fix=fix, detail=f"Looked for src/{rel}.py, src/{rel}/__init__.py, {rel}.py "
                                 f"and {rel}/__init__.py.")
        return None

    def check_env_vars(self, py_files: list[Path], text_files: list[Path]) -> None:
        known = dotenv_keys(self.root) | self.config_keys
        missing = sorted(v for v in env_refs(py_files, text_files)
                         if v in KNOWN_API_KEYS and v not in known)
        if missing:
            self.add("env_vars_not_in_dotenv", "warning",
                     f"{len(missing)} referenced API key(s) not in .env",
                     fix=f"Set them in the app's config: config:set <app> {missing[0]}=...",
                     detail="These env vars are referenced in your source but are neither in "
                            f".env nor in the app's config: {', '.join(missing)}. Kickoffs "
                            "will fail unless they are set.")

    def check_crewai_pin(self) -> None:
        match = _CREWAI_PIN.search(read_small(self.root / "uv.lock"))
        if not match:
            return
        try:
            old = Version(match.group(1)) < Version("1.13.0")
        except InvalidVersion:
            return
        if old:
            self.add("old_crewai_pin", "warning",
                     f"Lockfile pins crewai=={match.group(1)} (older than 1.13.0)",
                     fix="Run `uv lock --upgrade-package crewai` and redeploy.",
                     detail="Older pinned versions are missing API surface the platform "
                            "builder expects (e.g. `_load_response_format`).")
