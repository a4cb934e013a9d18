"""The sandbox's cost (issue 10 item 5): the same crew, sandboxed and not, in one run.

Two ``crewship server``s run side by side on the process runtime, one as shipped
(every instance under bubblewrap, its own uid when root) and one with
``--insecure-no-sandbox``; each deploys the real classic-crew fixture (the shared test
envs dir: a cache hit after the first run) against one fake LLM. Then, the pairs
interleaved and the servers let go idle before each timed step (``settle``):

- cold start: ``kill -9`` of the instance until the crew API's health answers 200 again
  (the daemon restarts it at once: ``CREWSHIP_RESTART_DELAY=0``); nearly all of it is
  the new process importing crewai, which is where a sandbox would cost;
- kickoff round trip: ``POST /apps/NAME/kickoff`` until ``GET /status`` says SUCCESS,
  through the daemon and the runner, on a warm instance;
- the sandbox's own part of a cold start, without the daemon's noise: the live release's
  interpreter importing crewai and building the crew, started through the very bwrap
  argv the process runtime uses (``Sandbox.launch``) and started bare.

Goal: sandboxed at most 5 % slower than unsandboxed (ratio <= 1.05).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.deploy import row as deploy_row
from bench.timing import settle, wait_for
from builder.release import load_release
from crewship.service.specs import TELEMETRY_OFF
from runtime.backend import InstanceSpec
from runtime.sandbox import Sandbox
from tests.support.crewenv import cache_root, locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

NAME = "sandbox"
APP = "bench-sandbox"
INPUTS = {"topic": "sandboxes", "audience": "operators"}
GOAL = 1.05
POLL = 0.01


IMPORT = ("import sys; sys.path[:0] = ['.', 'src']; import crewai; "
          "from demo_crew.crew import DemoCrew; DemoCrew().crew(); import resource; "
          "r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)")


def row(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {**deploy_row(*args, **kwargs), "benchmark": NAME}


def log(message: str) -> None:
    print(f"  sandbox: {message}", file=sys.stderr, flush=True)


class Side:
    """One server with the crew deployed: sandboxed or not."""

    def __init__(self, root: Path, llm: FakeLLM, *, sandboxed: bool) -> None:
        args = [] if sandboxed else ["--insecure-no-sandbox"]
        env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
               "CREWSHIP_RESTART_DELAY": "0", "CREWSHIP_CRASH_LIMIT": "1000"}
        self.label = "sandboxed" if sandboxed else "unsandboxed"
        self.srv = CrewshipServer(root / self.label, args=args, env=env)
        self.llm = llm
        self.http = httpx.Client(timeout=30, trust_env=False)
        self.base = ""

    def start(self, project: Path) -> None:
        srv, key = self.srv.start(), self.srv.admin_key
        srv.ssh(key, "apps:create", APP, check=True)
        srv.ssh(key, "config:set", APP, *[f"{k}={v}" for k, v in self.llm.env().items()],
                check=True)
        token = srv.ssh(key, "tokens", APP, check=True).stdout.strip()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.base = f"{srv.http_url}/apps/{APP}"
        pushed = srv.git(key, "push", srv.git_url(APP), "main", cwd=project, check=False,
                         timeout=900)
        if pushed.returncode != 0:
            raise RuntimeError(f"{self.label}: push failed:\n{pushed.stderr[-3000:]}")
        self.kickoff()  # warm: the first run imports what a run needs

    def close(self) -> None:
        self.http.close()
        self.srv.close()

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get(f"{self.base}/").status_code == 200
        return False

    def pid(self) -> int:
        status = self.srv.ssh_json(self.srv.admin_key, "status", APP)
        return int(next(i["pid"] for i in status["instances"] if i["state"] == "up"))

    def cold_start(self) -> float:
        """kill -9 until the crew API's health is 200 again (a new instance)."""
        old = self.pid()
        settle(self.srv.pid)
        started = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not self.healthy(), 10, f"{self.label}: the daemon to notice")
        took = wait_for(self.healthy, 120, f"{self.label}: health 200") - started
        if self.pid() == old:
            raise RuntimeError(f"{self.label}: the same instance answered after kill -9")
        return took

    def kickoff(self) -> float:
        """POST /kickoff until GET /status says SUCCESS."""
        started = time.perf_counter()
        resp = self.http.post(f"{self.base}/kickoff", json={"inputs": INPUTS})
        resp.raise_for_status()
        kickoff_id = resp.json()["kickoff_id"]
        states: list[str] = []

        def done() -> bool:
            states.append(self.http.get(f"{self.base}/status/{kickoff_id}").json().get("state"))
            return states[-1] in ("SUCCESS", "FAILURE", "REVOKED")

        ended = wait_for(done, 120, f"{self.label}: the kickoff")
        if states[-1] != "SUCCESS":
            raise RuntimeError(f"{self.label}: kickoff ended {states[-1]}")
        return ended - started


class Import:
    """The live release's interpreter importing crewai + building the crew, by hand."""

    def __init__(self, side: Side, root: Path) -> None:
        status = side.srv.ssh_json(side.srv.admin_key, "status", APP)
        meta = load_release(side.srv.data_dir / "releases" / APP / str(status["release"]))
        home = root / "import-home"
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), **TELEMETRY_OFF,
               **side.llm.env()}
        self.spec = InstanceSpec(APP, 0, 0, [str(meta.python_path), "-c", IMPORT], env,
                                 meta.app_dir, 0, readonly=(meta.dir, meta.env_path),
                                 home=home, uid=199_999)
        self.sandbox = Sandbox()
        self.sandbox.prepare(self.spec)
        self.pid = side.srv.pid

    def timed(self, sandboxed: bool) -> tuple[float, float]:
        """(wall seconds, CPU seconds the crew's process itself used)."""
        info_r, info_w = os.pipe()
        try:
            argv = (self.sandbox.launch(self.spec, info_w).argv if sandboxed
                    else self.spec.argv)
            settle(self.pid)
            started = time.perf_counter()
            done = subprocess.run(argv, env=self.spec.env, cwd=self.spec.cwd,
                                  pass_fds=(info_w,), capture_output=True, check=True,
                                  timeout=120)
            return time.perf_counter() - started, float(done.stdout.split()[-1])
        finally:
            os.close(info_r)
            os.close(info_w)


def setup_cost(runs: int = 20) -> float:
    """Median seconds bwrap (+ setpriv as root) adds to starting ``/bin/true``."""
    argv = Sandbox().trivial_argv(uid=199_999)
    extra = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        boxed = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(["/bin/true"], check=True, capture_output=True, timeout=30)
        extra.append(boxed - (time.perf_counter() - started))
    return statistics.median(extra)


def measure(sides: tuple[Side, Side], runs: int, kickoffs: int) -> list[dict[str, Any]]:
    sandboxed, bare = sides
    cold: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": []}
    trip: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": []}
    for i in range(runs):
        order = (sandboxed, bare) if i % 2 == 0 else (bare, sandboxed)
        for side in order:
            cold[side.label].append(side.cold_start())
        for side in order:
            side.kickoff()  # the new instance's first run (lazy imports) is not timed
            settle(side.srv.pid)
            for _ in range(kickoffs):
                trip[side.label].append(side.kickoff())
        log(f"run {i + 1}: cold start sandboxed {cold['sandboxed'][-1]:.3f}s, unsandboxed "
            f"{cold['unsandboxed'][-1]:.3f}s; kickoff sandboxed {trip['sandboxed'][-1]:.3f}s, "
            f"unsandboxed {trip['unsandboxed'][-1]:.3f}s")
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    by_hand = Import(sandboxed, Path(sandboxed.srv.root))
    for i in range(runs * 2):
        for flag in ((True, False) if i % 2 == 0 else (False, True)):
            took, used = by_hand.timed(flag)
            wall[flag].append(took)
            cpu[flag].append(used)
    log(f"import crewai + build the crew, wall: sandboxed {wall[True]}, bare {wall[False]}")
    log(f"the same, the crew's own CPU: sandboxed {cpu[True]}, bare {cpu[False]}")
    setup = setup_cost()
    log(f"the sandbox's own setup (bwrap + setpriv around /bin/true): {setup * 1000:.1f} ms")
    return [
        row("sandboxed import crewai + build the crew (by hand, bwrap argv), wall", GOAL,
            "the same, bare", wall[True], wall[False]),
        row("the same, CPU time of the crew's own process (load-insensitive)", GOAL,
            "the same, bare", cpu[True], cpu[False]),
        row("sandboxed crew cold start (kill -9 until health 200)", GOAL,
            "the same, --insecure-no-sandbox", cold["sandboxed"], cold["unsandboxed"],
            sandbox_setup_s=round(setup, 4)),
        row("sandboxed kickoff round trip (POST /kickoff until SUCCESS)", GOAL,
            "the same, --insecure-no-sandbox", trip["sandboxed"], trip["unsandboxed"]),
    ]


def run(deploy_runs: int = 3) -> list[dict[str, Any]]:
    """Both servers, both cases; at least 5 pairs of cold starts (x5 kickoffs each)."""
    runs = max(deploy_runs, 5)
    with tempfile.TemporaryDirectory(prefix="crewship-bench-sandbox-") as tmp:
        root = Path(tmp)
        with FakeLLM() as llm:
            project = locked_copy("classic_crew", root / "src")
            sides = (Side(root, llm, sandboxed=True), Side(root, llm, sandboxed=False))
            for argv in (["init", "-q", "-b", "main"], ["add", "-A"],
                         ["commit", "-q", "-m", "initial"]):
                sides[0].srv.git(None, *argv, cwd=project)
            try:
                for side in sides:
                    side.start(project)
                    log(f"{side.label} server up, crew deployed")
                return measure(sides, runs, kickoffs=5)
            finally:
                for side in sides:
                    side.close()
