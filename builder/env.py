"""Dependency environments, one per (uv.lock, interpreter), shared by every release.

``envs/<key>/`` is built in place by ``uv sync --frozen --no-install-project`` with
``UV_PROJECT_ENVIRONMENT`` pointing at it; the project's own code is never installed
(the runner puts the release's ``app/`` and ``app/src`` on ``sys.path``). The marker
``.crewship-ready`` is written last: a directory without it is a half-built env and
is removed and rebuilt. A cache hit touches nothing in the env.

``CREWSHIP_ENVS_DIR`` may be shared by several servers: a build holds the key's file lock
(``.lock-<key>``, ``flock``) besides the server's own asyncio lock, so two processes never
build one key at once, and the second finds the first's env ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from builder.validate import lockfile_finding
from crewship import proc
from crewship.errors import BuildError, ValidationError
from crewship.reporter import Reporter

READY_MARKER = ".crewship-ready"
TRASH_PREFIX = ".removing-"
LOCK_PREFIX = ".lock-"     # a key's cross-process build lock (never removed: see _key_lock)
LOCK_POLL = 0.2            # seconds between two tries for a lock another process holds
SYNC_TIMEOUT = 1800.0
KEY_LENGTH = 24  # hex chars; short enough to keep script shebangs well under 127 bytes
_PROBE = ("import json, os, platform, sys; print(json.dumps({'version': platform.python_version(),"
          " 'full': sys.version, 'executable': os.path.realpath(sys.executable)}))")


@dataclass(frozen=True)
class Interpreter:
    """The Python crew environments are built with, as it reports itself."""

    path: str
    version: str       # "3.11.7"
    full: str          # sys.version: version, build, compiler
    executable: str    # realpath of sys.executable


@dataclass(frozen=True)
class EnvRef:
    key: str
    path: Path
    python_path: Path
    python_version: str
    cache_hit: bool


def default_uv() -> str:
    """The uv next to our own interpreter (a dependency of crewship), else uv on PATH."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise BuildError("uv not found: install crewship's dependencies (uv is one of them)")
    return found


def lock_identity(lock: bytes) -> bytes:
    """What of a ``uv.lock`` decides the environment ``uv sync --no-install-project`` makes.

    The project's own entry (``source = { editable = "." }`` or ``virtual = "."``) keeps its
    dependencies but loses its name and version, which the env never sees: two projects
    made by ``crewai create`` with the same dependencies share one environment. A lock
    that is not TOML is taken as it is.
    """
    try:
        data = tomllib.loads(lock.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return lock
    packages = data.get("package")
    if not isinstance(packages, list):
        return lock
    for package in packages:
        source = package.get("source") if isinstance(package, dict) else None
        if isinstance(source, dict) and "." in (source.get("editable"), source.get("virtual")):
            package["name"] = "<project>"
            package.pop("version", None)
    packages.sort(key=lambda package: json.dumps(package, sort_keys=True))
    return json.dumps(data, sort_keys=True).encode()


def env_key(lock: bytes, interpreter: Interpreter) -> str:
    digest = hashlib.sha256(lock_identity(lock))
    digest.update(b"\0" + interpreter.full.encode() + b"\0" + interpreter.executable.encode())
    return digest.hexdigest()[:KEY_LENGTH]


def requires_python_error(requires: str | None, interpreter: Interpreter) -> BuildError | None:
    """Why the project's ``requires-python`` excludes the server's interpreter, if it does."""
    if not requires:
        return None
    try:
        spec = SpecifierSet(requires)
    except InvalidSpecifier:
        return ValidationError(
            "invalid_pyproject", f"requires-python = {requires!r} is not a valid specifier",
            'Use a PEP 440 specifier such as ">=3.10,<3.14".')
    if spec.contains(interpreter.version, prereleases=True):
        return None
    return BuildError(
        f"the project requires Python {requires} but this server builds with Python "
        f"{interpreter.version} ({interpreter.path}); widen requires-python in pyproject.toml "
        f"(and run `uv lock`), or start the server with CREWSHIP_PYTHON=<path to a Python "
        f"matching {requires}>")


def _requires_python(project_dir: Path) -> str | None:
    try:
        with (project_dir / "pyproject.toml").open("rb") as f:
            value = tomllib.load(f).get("project", {}).get("requires-python")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) else None


class EnvBuilder:
    """Builds and reuses ``envs/<key>/``; one build per key at a time."""

    def __init__(self, envs_dir: Path, python: str, uv: str | None = None) -> None:
        self.envs_dir = envs_dir
        self.python = python
        self.uv = uv or default_uv()
        self._interpreter: Interpreter | None = None
        self._keys: dict[bytes, str] = {}   # sha256 of a uv.lock -> its key (parsing is slow)
        self._locks: dict[str, asyncio.Lock] = {}

    async def interpreter(self) -> Interpreter:
        """Ask the configured interpreter who it is (once)."""
        if self._interpreter is None:
            try:
                result = await proc.run([self.python, "-c", _PROBE], timeout=30.0)
                data = json.loads(result.text)
            except (proc.CommandError, OSError, ValueError) as exc:
                raise BuildError(f"cannot run the build interpreter {self.python}: {exc} "
                                 "(set CREWSHIP_PYTHON to a working python)") from exc
            self._interpreter = Interpreter(self.python, str(data["version"]),
                                            str(data["full"]), str(data["executable"]))
        return self._interpreter

    def _ref(self, key: str, interpreter: Interpreter, cache_hit: bool) -> EnvRef:
        path = self.envs_dir / key
        return EnvRef(key, path, path / "bin" / "python", interpreter.version, cache_hit)

    async def key_for(self, project_dir: Path) -> str:
        """The env key of a project tree (raises ``missing_lockfile`` without uv.lock)."""
        finding = lockfile_finding(project_dir)
        if finding is not None:
            raise ValidationError(finding.code, finding.message, finding.fix)
        lock = (project_dir / "uv.lock").read_bytes()
        interpreter = await self.interpreter()
        digest = hashlib.sha256(lock).digest()
        key = self._keys.get(digest)
        if key is None:  # a crewai lock is ~1 MB of TOML: ~0.3 s to parse, off the loop
            key = await asyncio.to_thread(env_key, lock, interpreter)
            self._keys[digest] = key
        return key

    async def ensure(self, project_dir: Path, report: Reporter) -> EnvRef:
        """The environment for ``project_dir``'s uv.lock, built unless it exists."""
        key = await self.key_for(project_dir)
        interpreter = await self.interpreter()
        error = requires_python_error(_requires_python(project_dir), interpreter)
        if error is not None:
            raise error
        lock = self._locks.setdefault(key, asyncio.Lock())
        path = self.envs_dir / key
        async with lock, self._key_lock(key, report):  # held by a build only: a hit is instant
            if (path / READY_MARKER).is_file():  # built before, or by another server meanwhile
                report.step("Installing dependencies (cache hit)")
                return self._ref(key, interpreter, cache_hit=True)
            report.step("Installing dependencies")
            await self._build(project_dir, path, report)
            _write_marker(path, key, interpreter)
            return self._ref(key, interpreter, cache_hit=False)

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str, report: Reporter) -> AsyncIterator[None]:
        """The key's lock across processes (servers sharing ``CREWSHIP_ENVS_DIR``).

        Polled without blocking, so a cancelled build never leaves a thread waiting to take
        it; closing the file releases it, also when the process dies. The file stays: a
        lock file removed while another process waits on it would no longer exclude."""
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.envs_dir / f"{LOCK_PREFIX}{key}", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        report.info("another server is building this environment: waiting")
                        told = True
                    await asyncio.sleep(LOCK_POLL)
            yield
        finally:
            os.close(fd)

    async def _build(self, project_dir: Path, path: Path, report: Reporter) -> None:
        await asyncio.to_thread(_reset_dir, path)
        argv = [self.uv, "sync", "--frozen", "--no-install-project", "--no-dev",
                "--compile-bytecode",
                "--python", self.python]
        env = proc.base_env({
            "UV_PROJECT_ENVIRONMENT": str(path),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
        })
        for name in ("VIRTUAL_ENV", "UV_PYTHON", "PYTHONHOME", "PYTHONPATH"):
            env.pop(name, None)
        def show(line: str) -> None:
            # One line per installed package is noise for the pusher; uv's summary
            # lines ("Installed 137 packages in 0.6s") say enough.
            if not line.lstrip().startswith(("+ ", "- ", "~ ")):
                report.info(line)

        try:
            await proc.stream(argv, show, env=env, cwd=project_dir, timeout=SYNC_TIMEOUT)
        except (proc.CommandError, OSError) as exc:
            await asyncio.to_thread(shutil.rmtree, path, True)
            tail = "\n".join(getattr(exc, "output", str(exc)).strip().splitlines()[-8:])
            raise BuildError(f"installing dependencies failed (uv sync):\n{tail}") from exc

    def gc(self, keep: set[str]) -> list[str]:
        """Remove every env whose key is not in ``keep`` (and not being built)."""
        detached = self.detach(keep)
        for _name, path in detached:
            remove_detached(path)
        return [name for name, _path in detached]

    def detach(self, keep: set[str]) -> list[tuple[str, Path]]:
        """Rename every env not in ``keep`` (and not being built) out of the way.

        Fast and synchronous, so no build on the event loop can pick one of them up
        halfway through; delete the returned paths with ``remove_detached`` later.
        """
        detached: list[tuple[str, Path]] = []
        if not self.envs_dir.is_dir():
            return detached
        for entry in sorted(self.envs_dir.iterdir()):
            lock = self._locks.get(entry.name)
            if entry.name in keep or (lock is not None and lock.locked()) \
                    or entry.name.startswith(LOCK_PREFIX):
                continue
            trash = entry if entry.name.startswith(TRASH_PREFIX) else \
                entry.with_name(f"{TRASH_PREFIX}{entry.name}-{os.getpid()}-{id(entry):x}")
            if trash != entry:
                entry.rename(trash)
            detached.append((entry.name, trash))
            # its build lock too (gc runs only on an envs dir no other server shares)
            (self.envs_dir / f"{LOCK_PREFIX}{entry.name}").unlink(missing_ok=True)
        return detached


def remove_detached(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _reset_dir(path: Path) -> None:
    """Remove a half-built env and make sure its parent exists."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _write_marker(path: Path, key: str, interpreter: Interpreter) -> None:
    data = {"key": key, "python": interpreter.path, "python_version": interpreter.version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = path / f"{READY_MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path / READY_MARKER)
