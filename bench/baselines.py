"""The deploy benchmark's baselines (bench/deploy.py): the same work without crewship.

On the live release of the benchmark's app, with the release's own interpreter:

- ``cold_start``: the release's runner started by hand (its channel secret down stdin, as
  the daemon does), from exec until ``/healthz`` answers 200, then one run through its
  ``POST /runs``: the part of a redeploy nothing can avoid.
- ``bare_import``: ``import crewai`` and building the crew, no runner and no HTTP.
- ``offline_sync``: ``uv venv`` + ``uv pip sync --offline --compile-bytecode`` of a lock's
  requirements into a fresh venv: what a dependency change costs by hand (``uv``, with
  the environment a developer's uv would have).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.timing import settle, wait_for
from builder.release import load_release, runner_argv
from crewship.service.specs import TELEMETRY_OFF
from runtime.runner.signing import SIGNATURE_HEADER, sign
from tests.support.crewenv import uv_binary
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, free_port

BASELINE_SECRET = b"bench-baseline-secret-0123456789"


def uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env.update({"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"})
    if "UV_CACHE_DIR" in os.environ:
        env["UV_CACHE_DIR"] = os.environ["UV_CACHE_DIR"]
    return env


def uv(*args: str, cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run([uv_binary(), *args], cwd=cwd, env=uv_env(), capture_output=True,
                            text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"uv {' '.join(args)} failed: {result.stderr}")
    return result.stdout + result.stderr


class Baselines:
    """The baselines of ``app``'s live release on ``srv`` (see the module docstring)."""

    def __init__(self, root: Path, srv: CrewshipServer, llm: FakeLLM, http: httpx.Client,
                 app: str, inputs: dict[str, Any]) -> None:
        self.root = root
        self.srv = srv
        self.llm = llm
        self.http = http
        self.app = app
        self.inputs = inputs

    def cold_start(self) -> tuple[float, float]:
        """The live release's runner by hand: (exec until /healthz 200, + one run)."""
        status = self.srv.ssh_json(self.srv.admin_key, "status", self.app)
        meta = load_release(self.srv.data_dir / "releases" / self.app / str(status["release"]))
        port = free_port()
        home = self.root / "baseline-home"
        home.mkdir(exist_ok=True)
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        env.update(self.llm.env())
        env.update(TELEMETRY_OFF)
        env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        settle(self.srv.pid)
        with (self.root / "baseline-runner.log").open("ab") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(runner_argv(meta, "127.0.0.1", port, "baseline"), env=env,
                                    cwd=meta.app_dir, stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(BASELINE_SECRET + b"\n")  # the channel secret, as the daemon does
        proc.stdin.close()
        try:
            def up() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"baseline runner exited {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    return self._signed("GET", url, "/healthz").status_code == 200
                return False

            healthy = wait_for(up, 60, "the baseline runner's /healthz") - started
            result = self._signed("POST", url, "/runs", {"kickoff_id": "baseline",
                                                         "inputs": self.inputs}).json()
            while result.get("state") not in ("SUCCESS", "FAILURE", "REVOKED"):
                result = self._signed("GET", url, "/runs/baseline?wait=30").json()
            ran = time.perf_counter() - started
            if result.get("state") != "SUCCESS":
                raise RuntimeError(f"baseline run ended {result.get('state')}: {result}")
            return healthy, ran
        finally:
            stop(proc)

    def _signed(self, method: str, url: str, path: str,
                body: Any = None) -> httpx.Response:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {SIGNATURE_HEADER: sign(BASELINE_SECRET, method, path, data)}
        return self.http.request(method, url + path, content=data, headers=headers,
                                 timeout=120)

    def bare_import(self) -> float:
        """``import crewai`` + build the crew in the release's interpreter (no runner, no HTTP)."""
        status = self.srv.ssh_json(self.srv.admin_key, "status", self.app)
        meta = load_release(self.srv.data_dir / "releases" / self.app / str(status["release"]))
        code = ("import sys; sys.path[:0] = ['.', 'src']; import crewai; "
                "from demo_crew.crew import DemoCrew; DemoCrew().crew()")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root / "baseline-home"),
               **TELEMETRY_OFF, **self.llm.env()}
        settle(self.srv.pid)
        started = time.perf_counter()
        subprocess.run([str(meta.python_path), "-c", code], cwd=meta.app_dir, env=env,
                       capture_output=True, check=True, timeout=120)
        return time.perf_counter() - started

    def offline_sync(self, reqs: Path) -> float:
        """``uv venv`` + ``uv pip sync --offline --compile-bytecode`` into a fresh venv."""
        venv = self.root / "baseline-venv"
        settle(self.srv.pid)
        started = time.perf_counter()
        uv("venv", "-q", "--python", sys.executable, str(venv), cwd=self.root)
        uv("pip", "sync", "-q", "--offline", "--compile-bytecode", "-p", str(venv / "bin/python"),
           str(reqs), cwd=self.root, timeout=1800)
        took = time.perf_counter() - started
        shutil.rmtree(venv)
        return took


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
