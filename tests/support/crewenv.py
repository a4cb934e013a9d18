"""Real crewAI environments for the test crews in ``tests/fixtures/``, built once per lock file.

``prepare(fixture)`` copies a fixture project to a temp dir, locks it with ``uv lock`` and
returns the interpreter of its dependency environment. Everything expensive is cached under
``cache_root()`` (``$CREWSHIP_TEST_CACHE``, default ``~/.cache/crewship-tests``), across
test runs, for every test and every test server:

- ``locks/``: the ``uv.lock`` ``uv lock`` made for a ``pyproject.toml`` (keyed by its bytes,
  uv's version and the index settings). A copy starts from it and still runs ``uv lock``,
  which checks it against the project in milliseconds instead of resolving for seconds.
- ``server-envs/`` (``shared_envs_dir()``): dependency environments exactly as a crewship
  server builds them (``builder.env.EnvBuilder``: same key, same layout, same ready marker),
  so test servers started with ``CREWSHIP_ENVS_DIR`` pointing there (``shared_envs_server``,
  ``server_factory(shared_envs=True)``) find them built, and the runner tests run crews in
  the very same environment. ``ensure_env`` builds one under a file lock (pytest-xdist
  workers, parallel test runs), so no two processes ever build the same key at once.

The fixtures differ only in their project's name, so they all share one environment.
Bytecode is compiled at install time: this machine exports PYTHONDONTWRITEBYTECODE=1,
and importing crewai from source alone takes about 12 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

from builder.env import READY_MARKER, EnvBuilder, Interpreter, env_key
from crewship.reporter import NullReporter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LOCK_TIMEOUT = 600
# What decides a resolution besides the pyproject: where packages come from.
_INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX",
               "UV_FIND_LINKS", "UV_PRERELEASE", "UV_RESOLUTION", "UV_EXCLUDE_NEWER")


class CrewEnvError(RuntimeError):
    """A fixture could not be locked or installed; the message carries uv's output."""


def cache_root() -> Path:
    explicit = os.environ.get("CREWSHIP_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crewship-tests"


def shared_envs_dir() -> Path:
    """The ``CREWSHIP_ENVS_DIR`` every test server may share (one env per lock file)."""
    return cache_root() / "server-envs"


def uv_binary() -> str:
    beside = Path(sys.executable).parent / "uv"
    if beside.exists():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        raise CrewEnvError("uv not found beside the interpreter or on PATH")
    return found


def _uv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env.update({k: v for k, v in os.environ.items() if k in _INDEX_VARS})
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_CACHE_DIR"] = os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    env.update(extra or {})
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise CrewEnvError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """An exclusive lock across processes (test workers, parallel runs) on ``name``."""
    locks = cache_root() / "locks.d"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_UV_VERSION: dict[str, str] = {}


def _uv_version(uv: str) -> str:
    if uv not in _UV_VERSION:
        _UV_VERSION[uv] = _run([uv, "--version"], Path.cwd(), _uv_env(), 60).strip()
    return _UV_VERSION[uv]


def lock_key(pyproject: bytes, uv: str) -> str:
    """What decides the lock ``uv lock`` writes for a project without a lock of its own:
    the pyproject.toml without the ``[tool.*]`` tables uv does not read (``crewai create``
    writes a new ``[tool.crewai] project_id`` every time)."""
    data = tomllib.loads(pyproject.decode())
    data["tool"] = {k: v for k, v in data.get("tool", {}).items() if k == "uv"}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    digest.update(f"\0{_uv_version(uv)}\0{sys.version}".encode())
    for name in _INDEX_VARS:
        digest.update(f"\0{name}={os.environ.get(name, '')}".encode())
    return digest.hexdigest()[:24]


def lock(project: Path) -> None:
    """``uv lock`` in ``project``, as a developer would before a push.

    A lock made before for the same ``pyproject.toml`` is copied in first (when the project
    has none), so uv only checks it; the result is what ``uv lock`` alone would give."""
    uv = uv_binary()
    target = project / "uv.lock"
    argv = [uv, "lock", "--python", sys.executable]
    if target.exists():
        _run(argv, project, _uv_env(), LOCK_TIMEOUT)
        return
    key = lock_key((project / "pyproject.toml").read_bytes(), uv)
    cached = cache_root() / "locks" / f"{key}.lock"
    with _file_lock(f"uvlock-{key}"):
        if cached.is_file():
            shutil.copyfile(cached, target)
        _run(argv, project, _uv_env(), LOCK_TIMEOUT)
        if not cached.is_file() or cached.read_bytes() != target.read_bytes():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            shutil.copyfile(target, tmp)
            os.replace(tmp, cached)


def locked_copy(fixture: str | Path, dest: Path) -> Path:
    """Copy ``fixture`` into ``dest`` and generate its ``uv.lock`` (never committed)."""
    source = Path(fixture) if Path(fixture).is_absolute() else FIXTURES / fixture
    project = dest / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    lock(project)
    return project


def prepare(fixture: str | Path, workdir: Path | None = None) -> tuple[Path, Path]:
    """Copy ``fixture`` (a name under tests/fixtures or a path), lock it, sync its env.

    Returns ``(project_dir, env_python)``.
    """
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="crewship-fixture-"))
    project = locked_copy(fixture, base)
    return project, ensure_env(project)


def interpreter() -> Interpreter:
    """This interpreter as ``EnvBuilder.interpreter()`` sees it (servers build with it)."""
    return Interpreter(sys.executable, platform.python_version(), sys.version,
                       os.path.realpath(sys.executable))


def ensure_env(project: Path) -> Path:
    """The shared environment of ``project``'s uv.lock, built once (under a file lock)
    exactly as a crewship server builds it; returns its interpreter."""
    key = env_key((project / "uv.lock").read_bytes(), interpreter())
    path = shared_envs_dir() / key
    if not (path / READY_MARKER).is_file():
        with _file_lock(f"env-{key}"):
            built = asyncio.run(EnvBuilder(shared_envs_dir(), sys.executable, uv_binary())
                                .ensure(project, NullReporter()))
            if built.key != key:
                raise CrewEnvError(f"the server would key this env {built.key}, not {key}")
    return path / "bin" / "python"


def warm(fixture: str = "classic_crew") -> Path:
    """Build (or find) the shared environment of a fixture's lock; returns its interpreter."""
    with tempfile.TemporaryDirectory(prefix="crewship-warm-") as tmp:
        return prepare(fixture, Path(tmp))[1]
