"""The swarm runtime's container health check (runtime/swarmspec.py ``HEALTH_SCRIPT``), run
as Swarm runs it (``python -c SCRIPT RUNNER_DIR SECRET_FILE``, the task's env) against a
real runner process speaking the signed channel (tests/support/fakerunner.py, which uses
the runner package's own MAC functions). Healthy only with the instance's secret and a
200 proven by the runner; a wrong secret, a draining or unhealthy runner, or nothing
listening all fail, and so does a runner that is not the task's own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.swarmspec import HEALTH_SCRIPT, task_port
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
FAKERUNNER = ROOT / "tests" / "support" / "fakerunner.py"
RUNNER_DIR = ROOT / "runtime" / "runner"
SECRET = "s" * 64


def check(port: int, secret_file: Path, pid: int) -> int:
    """The check as Swarm runs it; ``pid``: the runner's (PID 1 inside a task)."""
    base = port - task_port(0, 1, "task1")  # so that task1 of slot 1 binds ``port``
    env = {**os.environ, "CREWSHIP_PORT_BASE": str(base), "CREWSHIP_SLOT": "1",
           "CREWSHIP_TASK": "task1", "CREWSHIP_BIND": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", HEALTH_SCRIPT, str(RUNNER_DIR), str(secret_file),
                           str(pid)], env=env, capture_output=True, timeout=30, check=False)
    return done.returncode


def start_runner(port: int, *options: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(FAKERUNNER), "--port", str(port),
                             "--max-life", "60", *options], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(SECRET.encode() + b"\n")
    proc.stdin.close()
    return proc


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "crewship"
    path.write_text(SECRET)
    return path


@pytest.fixture
def runner() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start_runner(port)
    yield port, proc
    proc.kill()
    proc.wait(timeout=10)


def wait_healthy(port: int, secret_file: Path, pid: int) -> None:
    deadline = time.monotonic() + 20
    while check(port, secret_file, pid) != 0:
        assert time.monotonic() < deadline, "the runner never became healthy"
        time.sleep(0.2)


def test_healthy_with_the_secret_and_a_proven_200(runner: tuple[int, subprocess.Popen[bytes]],
                                                  secret_file: Path, tmp_path: Path) -> None:
    port, proc = runner
    wait_healthy(port, secret_file, proc.pid)
    wrong = tmp_path / "wrong"
    wrong.write_text("w" * 64)
    assert check(port, wrong, proc.pid) == 1  # refused, and its answer proves nothing
    # another process (a task being replaced on this port) cannot answer for this one
    assert check(port, secret_file, os.getpid()) == 1
    proc.send_signal(signal.SIGTERM)  # draining: /healthz answers 503
    deadline = time.monotonic() + 10
    while check(port, secret_file, proc.pid) == 0:
        assert time.monotonic() < deadline, "a draining runner stayed healthy"
        time.sleep(0.2)


def test_unhealthy_runner_and_no_listener_fail(secret_file: Path) -> None:
    port = free_port()
    assert check(port, secret_file, os.getpid()) != 0  # nothing listens
    proc = start_runner(port, "--never-healthy")
    try:
        time.sleep(1.5)
        assert check(port, secret_file, proc.pid) != 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
