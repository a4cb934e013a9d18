"""Deploy benchmarks (issue #3): push-to-live, dependency changes and crash recovery.

One ``crewship server`` (temp data dir, its own envs dir) serves the real classic-crew
fixture against the fake LLM; every ratio is against a baseline measured in the same
run, the pairs interleaved:

- code-only redeploy: ``git push`` until it exits 0 (it exits only when the new release
  passed its health check and took traffic), and until the first kickoff through the
  daemon's API is SUCCESS; baseline: the crew's own cold start, the same release's
  runner started by hand with the release's interpreter, from exec until ``/healthz``
  answers 200 (then one run through its ``POST /runs``). That process start is the
  part of a redeploy nothing can avoid; everything above it is crewship's overhead.
- dependencies changed, warm uv cache: a push whose ``pyproject.toml`` and ``uv.lock``
  add one small pure-Python package (a new one every run, so every push really builds
  a new environment); baseline: ``uv venv`` + ``uv pip sync --offline
  --compile-bytecode`` of the same lock exported to requirements, into a fresh venv
  (the server's ``uv sync`` compiles bytecode too, so both do the same work). A second
  row compares only the push's install step (from the timestamps of its progress lines).
- crash until healthy: ``kill -9`` of the instance until ``status --json`` shows a new
  ``up`` instance and the crew API's health answers 200; baseline: the cold start.
  Each crash follows a fresh deploy, so it is a "first crash" (restart immediately).

Before each timed step the server's process tree is let go idle (``settle``,
bench/timing.py), so one side never pays for the other's background work (a new
instance's warm-up imports). The baselines themselves are bench/baselines.py.
The server builds into its own temp envs dir, never the shared ``CREWSHIP_ENVS_DIR``,
so a lock from an earlier bench run can never turn a measured build into a cache hit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.baselines import Baselines, uv
from bench.timing import settle, wait_for
from tests.support.crewenv import locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

NAME = "deploy"
APP = "bench-crew"
INPUTS = {"topic": "benchmarks", "audience": "operators"}
# Small pure-Python packages that crewai 1.15.30's lock does not already hold.
EXTRA_PACKAGES = ("inflection", "humanize", "toolz", "tabulate", "termcolor", "text-unidecode")
GOALS = {"redeploy": 1.5, "kickoff": 1.5, "deps": 1.5, "install": 1.2, "crash": 1.5}


def log(message: str) -> None:
    print(f"  deploy: {message}", file=sys.stderr, flush=True)


def row(case: str, goal: float, baseline: str, ours: list[float], theirs: list[float],
        **extra: Any) -> dict[str, Any]:
    crewship_s, baseline_s = statistics.median(ours), statistics.median(theirs)
    ratio = crewship_s / baseline_s
    return {"benchmark": NAME, "case": case, "runs": len(ours),
            "crewship_s": round(crewship_s, 4), "baseline": baseline,
            "baseline_s": round(baseline_s, 4), "ratio": round(ratio, 3),
            "goal": goal, "met": ratio <= goal,
            "crewship_all_s": [round(t, 4) for t in ours],
            "baseline_all_s": [round(t, 4) for t in theirs], **extra}


class Bench:
    def __init__(self, root: Path, srv: CrewshipServer, llm: FakeLLM) -> None:
        self.root = root
        self.srv = srv
        self.llm = llm
        self.http = httpx.Client(timeout=30, trust_env=False)
        self.project = root / "src" / "classic_crew"
        self.token = ""
        self.edits = 0
        self.baselines = Baselines(root, srv, llm, self.http, APP, INPUTS)

    # ------------------------------------------------------------- setup
    def setup(self) -> None:
        srv, key = self.srv, self.srv.admin_key
        srv.ssh(key, "apps:create", APP, check=True)
        srv.ssh(key, "config:set", APP, *[f"{k}={v}" for k, v in self.llm.env().items()],
                check=True)
        self.token = srv.ssh(key, "tokens", APP, check=True).stdout.strip()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        locked_copy("classic_crew", self.project.parent)
        srv.git(None, "init", "-q", "-b", "main", cwd=self.project)
        self.commit("initial")
        took, phases = self.push()  # warm-up: builds the crewai env into this server's envs dir
        log(f"warm-up push (cold env build) {took:.1f}s {phases}")

    def commit(self, message: str) -> None:
        self.srv.git(None, "add", "-A", cwd=self.project)
        self.srv.git(None, "commit", "-q", "-m", message, cwd=self.project)

    def push(self) -> tuple[float, dict[str, float]]:
        """Timed ``git push``; returns its duration and when each build step was reported."""
        argv = ["git", "push", self.srv.git_url(APP), "main"]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=self.project, env=self.srv.git_env(self.srv.admin_key),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        phases: dict[str, float] = {}
        lines: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            text = line.removeprefix("remote:").strip()
            if text.startswith(("----->", "=====>", "Installed", "Bytecode compiled", "Prepared")):
                phases[text[:60]] = round(time.perf_counter() - started, 3)
        status = proc.wait(timeout=900)
        took = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"git push exited {status}:\n{''.join(lines)[-3000:]}")
        return took, phases

    # ------------------------------------------------------------- crewship side
    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get(f"{self.srv.http_url}/apps/{APP}/").status_code == 200
        return False

    def up_pid(self) -> int | None:
        status = self.srv.ssh_json(self.srv.admin_key, "status", APP)
        pids = [int(i["pid"]) for i in status["instances"] if i["state"] == "up"]
        return pids[0] if pids else None

    def first_kickoff(self) -> None:
        base = f"{self.srv.http_url}/apps/{APP}"
        resp = self.http.post(f"{base}/kickoff", json={"inputs": INPUTS})
        resp.raise_for_status()
        kickoff_id = resp.json()["kickoff_id"]
        states: list[str] = []

        def done() -> bool:
            states.append(self.http.get(f"{base}/status/{kickoff_id}").json().get("state"))
            return states[-1] in ("SUCCESS", "FAILURE", "REVOKED")

        wait_for(done, 120, "the first kickoff")
        if states[-1] != "SUCCESS":
            raise RuntimeError(f"first kickoff after the redeploy ended {states[-1]}")

    def redeploy(self) -> tuple[float, float, dict[str, float]]:
        """Code-only push; (until live, until first kickoff SUCCESS, phases)."""
        self.edits += 1
        tasks = self.project / "src/demo_crew/config/tasks.yaml"
        tasks.write_text(tasks.read_text().replace("briefing", f"briefing ({self.edits})", 1))
        self.commit(f"reword {self.edits}")
        settle(self.srv.pid)
        started = time.perf_counter()
        live, phases = self.push()
        if "cache hit" not in " ".join(phases):
            raise RuntimeError(f"a code-only push rebuilt its environment: {phases}")
        self.first_kickoff()
        return live, time.perf_counter() - started, phases

    def crash(self) -> tuple[float, float]:
        """kill -9 the instance; (until health 200 and a new pid up, until health 200)."""
        old = self.up_pid()
        if old is None:
            raise RuntimeError("no instance up to kill")
        settle(self.srv.pid)
        started = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not self.healthy(), 10, "the daemon to notice the crash")
        health_at = wait_for(self.healthy, 120, "the crew API health to answer 200")
        back_at = wait_for(lambda: self.healthy() and self.up_pid() not in (None, old), 120,
                           "status to show a new up instance")
        return back_at - started, health_at - started

    def add_dependency(self, index: int) -> Path:
        """Add one package, ``uv lock``, commit (all untimed); returns its requirements file."""
        package = EXTRA_PACKAGES[index]
        pyproject = self.project / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(text.replace('"crewai==1.15.30"', f'"crewai==1.15.30",\n    "{package}"'))
        uv("lock", "--python", sys.executable, cwd=self.project)
        reqs = self.root / f"requirements-{index}.txt"  # outside the repo, never committed
        uv("export", "--frozen", "--no-hashes", "--no-dev", "--no-emit-project", "-o", str(reqs),
           cwd=self.project)
        self.warm_cache(reqs, package)
        self.commit(f"add {package}")
        return reqs

    def deps_push(self) -> tuple[float, float, dict[str, float]]:
        """The timed push of a changed lock; (until live, the install step, phases)."""
        settle(self.srv.pid)
        took, phases = self.push()
        if "cache hit" in " ".join(phases):
            raise RuntimeError(f"a dependency change reused an environment: {phases}")
        install = phases_between(phases, "-----> Installing dependencies", "-----> Starting")
        return took, install, phases

    def warm_cache(self, reqs: Path, package: str) -> None:
        """Fetch the new package into the uv cache, as a developer's earlier install would."""
        pins = [line.strip() for line in reqs.read_text().splitlines()
                if line.lower().startswith(package.lower().replace("_", "-") + "==")]
        scratch = self.root / "scratch-venv"
        uv("venv", "-q", "--python", sys.executable, str(scratch), cwd=self.root)
        uv("pip", "install", "-q", "--no-deps", "-p", str(scratch / "bin/python"), *pins,
           cwd=self.root)
        shutil.rmtree(scratch)

def phases_between(phases: dict[str, float], first: str, last: str) -> float:
    start = next((t for k, t in phases.items() if k.startswith(first)), None)
    end = next((t for k, t in phases.items() if k.startswith(last)), None)
    return round(end - start, 3) if start is not None and end is not None else float("nan")


def measure(bench: Bench, runs: int) -> list[dict[str, Any]]:
    live: list[float] = []
    kicked: list[float] = []
    cold: list[float] = []
    cold_run: list[float] = []
    crash: list[float] = []
    crash_health: list[float] = []
    redeploy_phases: list[dict[str, float]] = []
    for i in range(runs):
        if i % 2 == 1:
            cold_pair = bench.baselines.cold_start()
        took, first, phases = bench.redeploy()
        if i % 2 == 0:
            cold_pair = bench.baselines.cold_start()
        live.append(took)
        kicked.append(first)
        redeploy_phases.append(phases)
        cold.append(cold_pair[0])
        cold_run.append(cold_pair[1])
        back, health = bench.crash()  # right after a deploy: a "first" crash
        crash.append(back)
        crash_health.append(health)
        log(f"run {i + 1}: redeploy {live[-1]:.2f}s (kickoff {kicked[-1]:.2f}s), cold start "
            f"{cold[-1]:.2f}s (+run {cold_run[-1]:.2f}s), crash {back:.2f}s; {redeploy_phases[-1]}")
    bare = bench.baselines.bare_import()
    log(f"bare import crewai + DemoCrew().crew(): {bare:.2f}s")

    deps: list[float] = []
    sync: list[float] = []
    install: list[float] = []
    deps_phases: list[dict[str, float]] = []
    for i in range(runs):
        reqs = bench.add_dependency(i)
        if i % 2 == 1:
            sync.append(bench.baselines.offline_sync(reqs))
        took, inst, phases = bench.deps_push()
        deps.append(took)
        install.append(inst)
        deps_phases.append(phases)
        if i % 2 == 0:
            sync.append(bench.baselines.offline_sync(reqs))
        log(f"deps run {i + 1}: push {took:.2f}s (install step {inst:.2f}s), "
            f"uv pip sync --offline {sync[-1]:.2f}s; {phases}")
    cold_name = "crew cold start (release runner to /healthz)"
    return [
        row("code-only redeploy (push until live)", GOALS["redeploy"], cold_name, live, cold,
            phases=redeploy_phases, bare_import_s=round(bare, 3)),
        row("code-only redeploy until first kickoff SUCCESS", GOALS["kickoff"],
            "crew cold start + first run on the runner", kicked, cold_run),
        row("dependencies changed, warm uv cache (push until live)", GOALS["deps"],
            "uv venv + uv pip sync --offline --compile-bytecode", deps, sync,
            phases=deps_phases),
        row("dependencies changed: the install step inside that push", GOALS["install"],
            "uv venv + uv pip sync --offline --compile-bytecode", install, sync),
        row("kill -9 until up and healthy again", GOALS["crash"], cold_name, crash, cold,
            health_200_all_s=[round(t, 4) for t in crash_health]),
    ]


def run(deploy_runs: int = 3) -> list[dict[str, Any]]:
    """Measure every case; returns one result row per case."""
    with tempfile.TemporaryDirectory(prefix="crewship-bench-deploy-") as tmp:
        root = Path(tmp)
        with FakeLLM() as llm, CrewshipServer(root / "crewship") as srv:
            bench = Bench(root, srv, llm)
            try:
                bench.setup()
                return measure(bench, deploy_runs)
            finally:
                bench.http.close()
