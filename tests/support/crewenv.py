"""Real crewAI environments for the test crews in ``tests/fixtures/``.

``prepare(fixture)`` copies a fixture project to a temp dir, locks it with ``uv lock``
and syncs its dependencies (``uv sync --frozen --no-install-project``) into a venv
cached under ``$CREWSHIP_TEST_CACHE`` (default ``/tmp/crewship-test-cache``), keyed by
sha256(uv.lock + python version), so only the first test run pays for the install.
Bytecode is compiled at install time: this machine exports PYTHONDONTWRITEBYTECODE=1,
and importing crewai from source alone takes about 12 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from builder.env import lock_identity

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LOCK_TIMEOUT = 600
SYNC_TIMEOUT = 1800


class CrewEnvError(RuntimeError):
    """A fixture could not be locked or installed; the message carries uv's output."""


def cache_root() -> Path:
    return Path(os.environ.get("CREWSHIP_TEST_CACHE", "/tmp/crewship-test-cache"))


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
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_CACHE_DIR"] = os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    env.update(extra or {})
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int) -> None:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise CrewEnvError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")


def env_key(lock_text: str) -> str:
    """Keyed like the server's envs: projects differing only in their own name share one."""
    version = f"{platform.python_implementation()}-{platform.python_version()}"
    identity = lock_identity(lock_text.encode())
    return hashlib.sha256(identity + f"\0{version}".encode()).hexdigest()[:24]


def prepare(fixture: str | Path, workdir: Path | None = None) -> tuple[Path, Path]:
    """Copy ``fixture`` (a name under tests/fixtures or a path), lock it, sync its env.

    Returns ``(project_dir, env_python)``.
    """
    source = Path(fixture) if Path(fixture).is_absolute() else FIXTURES / fixture
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="crewship-fixture-"))
    project = base / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    uv = uv_binary()
    _run([uv, "lock", "--python", sys.executable], project, _uv_env(), LOCK_TIMEOUT)
    python = ensure_env(project)
    return project, python


def ensure_env(project: Path) -> Path:
    """The cached venv for ``project``'s uv.lock, built once under a file lock."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = env_key((project / "uv.lock").read_text())
    venv = root / "envs" / key
    python = venv / "bin" / "python"
    with open(root / f"{key}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            uv_binary(),
            "sync",
            "--frozen",
            "--no-install-project",
            "--compile-bytecode",
            "--python",
            sys.executable,
        ]
        _run(argv, project, _uv_env({"UV_PROJECT_ENVIRONMENT": str(venv)}), SYNC_TIMEOUT)
        (venv / ".complete").write_text(key)
    return python


def lock(project: Path) -> None:
    """``uv lock`` in ``project``, as a developer would before a push."""
    _run([uv_binary(), "lock", "--python", sys.executable], project, _uv_env(), LOCK_TIMEOUT)


def locked_copy(fixture: str | Path, dest: Path) -> Path:
    """Copy ``fixture`` into ``dest`` and generate its ``uv.lock`` (never committed)."""
    source = Path(fixture) if Path(fixture).is_absolute() else FIXTURES / fixture
    project = dest / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    lock(project)
    return project
