"""Turn a pushed commit into an immutable release directory.

    releases/<app>/v<N>/
        app/                  the commit's tree (read-only)
        crewship_runner/      the stdlib-only runner package, copied from runtime/runner/
        release.json          what the runtime needs to start it (``ReleaseMeta``)

Order: validate (layout errors fail within 2 s, before anything is installed), then
the dependency environment (``EnvBuilder``, shared by key), then the release is
assembled under ``tmp/`` and renamed into place in one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.env import EnvBuilder, EnvRef
from builder.export import export_commit
from builder.project import Finding, ProjectInfo
from builder.validate import check_lockfile, validate
from crewship.config import Layout
from crewship.errors import BuildError, ConflictError, NotFoundError, ValidationError
from crewship.log import get as get_logger
from crewship.reporter import Reporter

log = get_logger(__name__)

RELEASE_FILE = "release.json"
RUNNER_DIR = "crewship_runner"
LEGACY_RUNNER_FILE = "crewship_runner.py"  # releases built before the runner was a package


@dataclass(frozen=True)
class ReleaseMeta:
    """The contents of ``release.json``."""

    app: str
    version: int
    commit: str
    dir: Path
    env_key: str
    env_path: Path
    python: str
    kind: str
    package: str
    definition: str | None
    entrypoint: str | None
    created_at: str
    image: str | None = None   # the docker runtime's image id; None: a venv release

    @property
    def app_dir(self) -> Path:
        return self.dir / "app"

    @property
    def python_path(self) -> Path:
        return self.env_path / "bin" / "python"

    @property
    def runner(self) -> Path:
        return self.dir / RUNNER_DIR


@dataclass(frozen=True)
class BuiltRelease:
    app: str
    version: int
    commit: str
    dir: Path
    env: EnvRef
    info: ProjectInfo
    meta: ReleaseMeta


def default_runner_source() -> Path:
    """``runtime/runner/`` of this installation, found by this package's own path.

    Not ``importlib.util.find_spec("runtime")``: that would take any other installed
    package named ``runtime``. The daemon imports only its ``signing`` module.
    """
    runner = Path(__file__).resolve().parent.parent / "runtime" / "runner"
    if not (runner / "__main__.py").is_file():
        raise BuildError(f"the runner is missing at {runner}: reinstall crewship")
    return runner


def runner_files(source: Path) -> dict[str, bytes]:
    """The runner package's modules by name (no bytecode caches)."""
    return {path.name: path.read_bytes() for path in sorted(source.glob("*.py"))}


def copy_runner(source: Path, target: Path) -> None:
    """Write the runner package at ``target`` (a new directory), its files read-only."""
    target.mkdir()
    for name, data in runner_files(source).items():
        (target / name).write_bytes(data)
        (target / name).chmod(0o444)


def build_dirs(layout: Layout, app: str, version: int) -> tuple[Path, Path]:
    """(where release ``vN`` goes, a fresh temporary work dir for building it)."""
    dest = layout.release_dir(app, version)
    if dest.exists():
        raise ConflictError(f"release v{version} of {app} already exists")
    layout.tmp.mkdir(parents=True, exist_ok=True)
    work = layout.tmp / f"build-{app}-v{version}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return dest, work


def publish(work: Path, dest: Path) -> None:
    """Move a finished build into place in one rename (a release dir is never half there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(work, dest)
    except OSError as exc:
        raise ConflictError(f"release {dest.name} of {dest.parent.name} already exists") from exc


def refresh_runner(target: Path, source: Path | None = None) -> bool:
    """Give an existing venv release this installation's runner (True if it changed).

    The runner is platform code, not the app's: a release built by an older crewship has
    an older runner, which would not speak the current daemon channel (signed requests,
    proven replies). The new package is written beside the old one and renamed into place;
    the files stay read-only. A release from before the runner was a package (only
    ``crewship_runner.py``) gets the package.
    """
    source = source or default_runner_source()
    legacy = target.with_name(LEGACY_RUNNER_FILE)
    if not target.is_dir() and not legacy.is_file():
        return False  # not a release with a runner of its own (an image release)
    with contextlib.suppress(OSError):
        current = {p.name: p.read_bytes() for p in target.glob("*.py")}
        if target.is_dir() and current == runner_files(source):
            return False
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if tmp.exists():
        remove_tree(tmp)
    copy_runner(source, tmp)
    if target.is_dir():
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        os.rename(target, old)
        os.rename(tmp, target)
        remove_tree(old)
    else:
        os.rename(tmp, target)
    return True


def load_release(release_dir: Path) -> ReleaseMeta:
    """Read ``release.json`` of a built release."""
    try:
        data: dict[str, Any] = json.loads((release_dir / RELEASE_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFoundError(f"release not found: {release_dir}") from exc
    except ValueError as exc:
        raise BuildError(f"corrupt {RELEASE_FILE} in {release_dir}: {exc}") from exc
    data["dir"] = release_dir
    data["env_path"] = Path(data["env_path"])
    data["version"] = int(data["version"])
    return ReleaseMeta(**data)


def runner_argv(release: ReleaseMeta | BuiltRelease, host: str, port: int,
                instance: str, *, root: str | None = None) -> list[str]:
    """The command that starts one instance of a release, run from any directory.

    ``root``: where an image holds the release (``/app``: the app's files, the runner
    and ``.venv``), instead of the release directory and its shared environment.
    """
    meta = release.meta if isinstance(release, BuiltRelease) else release
    python, runner, app_dir = str(meta.python_path), str(meta.runner), str(meta.app_dir)
    if root is not None:
        # an image built before the runner was a package holds the one-file runner
        name = LEGACY_RUNNER_FILE if (meta.dir / LEGACY_RUNNER_FILE).is_file() else RUNNER_DIR
        python, runner, app_dir = f"{root}/.venv/bin/python", f"{root}/{name}", root
    argv = [python, runner, "--app-dir", app_dir, "--kind", meta.kind, "--package", meta.package]
    if meta.definition:
        argv += ["--definition", meta.definition]
    if meta.entrypoint:
        argv += ["--entrypoint", meta.entrypoint]
    return [*argv, "--host", host, "--port", str(port), "--instance", instance]


class Steps:
    """Milliseconds each step of a build took (``build_steps`` in the daemon's log)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.ms: dict[str, int] = {}

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.ms[f"{step}_ms"] = round((now - self._last) * 1000)
        self._last = now


def report_findings(findings: list[Finding] | tuple[Finding, ...], report: Reporter) -> None:
    """Every finding as ``<severity> <code>: <message>`` plus its detail and ``fix:`` lines."""
    for finding in findings:
        report.warn(f"{finding.severity} {finding.code}: {finding.message}")
        if finding.detail:
            report.info(finding.detail)
        if finding.fix:
            report.info(f"fix: {finding.fix}")


def _set_writable(root: Path, writable: bool) -> None:
    """Add or remove every write bit below ``root`` (directories keep theirs)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        if writable:
            Path(dirpath).chmod(Path(dirpath).stat().st_mode | stat.S_IWUSR)
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            no_write = mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
            path.chmod(mode | stat.S_IWUSR if writable else no_write)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class ReleaseBuilder:
    """Builds ``releases/<app>/v<N>/`` from a commit of ``repos/<app>.git``."""

    def __init__(self, layout: Layout, envs: EnvBuilder,
                 runner_source: Path | None = None) -> None:
        self.layout = layout
        self.envs = envs
        self.runner_source = runner_source
        self._locks_checked: set[str] = set()   # (pyproject.toml, uv.lock) found consistent

    async def build(self, app: str, version: int, repo: Path, commit: str, report: Reporter,
                    config_keys: AbstractSet[str] = frozenset()) -> BuiltRelease:
        dest, work = build_dirs(self.layout, app, version)
        steps = Steps()
        try:
            report.step("Validating")
            info = await self._validate(repo, commit, work / "app", report, config_keys, steps)
            env = await self.envs.ensure(work / "app", report)
            await asyncio.to_thread(self._assemble, app, version, commit, work, env, info)
            publish(work, dest)
        finally:
            if work.exists():
                await asyncio.to_thread(remove_tree, work)
        meta = await asyncio.to_thread(load_release, dest)
        steps.mark("release")
        log.info("build_steps", app=app, release=version, **steps.ms)
        report.info(f"release v{version}: {info.kind} {info.package}, env {env.key[:12]}, "
                    f"Python {env.python_version}")
        return BuiltRelease(app, version, commit, dest, env, info, meta)

    async def _validate(self, repo: Path, commit: str, tree: Path, report: Reporter,
                        config_keys: AbstractSet[str], steps: Steps) -> ProjectInfo:
        await export_commit(repo, commit, tree)
        steps.mark("export")
        result = await asyncio.to_thread(validate, tree, config_keys)
        findings = list(result.findings)
        if result.ok:
            stale = await self._check_lockfile(tree)
            findings += [stale] if stale else []
        steps.mark("validate")
        report_findings(findings, report)
        if result.errors:
            first = result.errors[0]
            raise ValidationError(first.code, first.message, first.fix)
        assert result.info is not None
        return result.info

    async def _check_lockfile(self, tree: Path) -> Finding | None:
        """``uv lock --check`` once per (pyproject.toml, uv.lock): a code-only push skips it."""
        try:
            digest = hashlib.sha256((tree / "pyproject.toml").read_bytes() + b"\0"
                                    + (tree / "uv.lock").read_bytes()).hexdigest()
        except OSError:
            digest = None
        if digest is not None and digest in self._locks_checked:
            return None
        stale = await check_lockfile(tree, self.envs.uv, self.envs.python)
        if stale is None and digest is not None:
            self._locks_checked.add(digest)
        return stale

    def _place_runner(self, work: Path) -> None:
        runner = self.runner_source or default_runner_source()
        if not (runner / "__main__.py").is_file():
            raise BuildError(f"the runner is missing at {runner}: reinstall crewship")
        if not (work / RUNNER_DIR).is_dir():  # the image builder placed it for its context
            copy_runner(runner, work / RUNNER_DIR)

    def _assemble(self, app: str, version: int, commit: str, work: Path, env: EnvRef,
                  info: ProjectInfo, image: str | None = None) -> None:
        self._place_runner(work)
        dest = self.layout.release_dir(app, version)
        meta = ReleaseMeta(
            app=app, version=version, commit=commit, dir=dest, env_key=env.key,
            env_path=env.path, python=env.python_version, kind=info.kind,
            package=info.package, definition=info.definition, entrypoint=info.entrypoint,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), image=image)
        data = asdict(meta)
        del data["dir"]
        if image is None:
            del data["image"]
        data["env_path"] = str(env.path)
        _write_json(work / RELEASE_FILE, data)
        _set_writable(work, writable=False)

    def remove_release(self, app: str, version: int) -> None:
        """Delete a release directory (restoring write bits first); idempotent."""
        path = self.layout.release_dir(app, version)
        if path.exists():
            remove_tree(path)

    async def gc_artifacts(self, app: str) -> list[str]:
        """What else a build made besides its directory: nothing for a venv release."""
        return []

    async def aclose(self) -> None:
        """Nothing to release for the venv builder."""


def remove_tree(path: Path, *, ignore_errors: bool = False) -> None:
    """Delete a tree that may hold read-only release files; a missing one is fine."""
    if not path.exists():
        return
    _set_writable(path, writable=True)
    shutil.rmtree(path, ignore_errors=ignore_errors)
