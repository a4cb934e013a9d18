"""Preloaded crew runtimes (issue 15) beside today's cold path, measured in the same run.

Two ``crewship server``s serve the real classic-crew fixture against the fake LLM: one
forks instances from a preloaded parent (the default), the other starts every instance
cold (``CREWSHIP_PRELOAD=0``, the path before issue 15). They share one envs dir (the
crewai environment is built once; every timed push is code-only) and take turns, the
order alternating between runs; before each timed step both are let go idle (``settle``).

- code-only push until live: ``git push`` until it exits 0 (it exits only once the new
  release passed its health check and took traffic). Goal: at most 1.0 s.
- crash until healthy: ``kill -9`` of the instance until the crew API answers 200 and
  ``status`` shows a new ``up`` instance. Goal: at most 0.5 s.
- ``restart`` and ``config:set`` until live: the SSH command until it returns (both are
  a new release through the health-checked swap).
- memory of a second instance: ``ps:scale 2``, one kickoff, then the PSS of the second
  instance's processes (``/proc/PID/smaps_rollup``; the cold one counts its bubblewrap
  processes too). Goal: at most half of the cold instance's. The preloaded parent's own
  PSS is reported beside it (``parent_pss_mb``).

Each push is also broken into its steps (``push_steps``): receive (``git push`` started
until the server logged ``push_received``), export, validate, release (``build_steps``),
start, health (``instance_healthy``), switch (healthy until ``git push`` exited).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.deploy import APP, Bench
from bench.timing import settle, wait_for
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.sandboxes import kill_preload_sandboxes
from tests.support.server import CrewshipServer, descendants

NAME = "preload"
GOAL_PUSH_S = 1.0
GOAL_CRASH_S = 0.5
GOAL_PSS_RATIO = 0.5
STEPS = ("receive", "export", "validate", "release", "start", "health", "switch")


def log(message: str) -> None:
    print(f"  preload: {message}", file=sys.stderr, flush=True)


def _epoch(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


def pss_kb(pid: int, *, tree: bool = True) -> int:
    """PSS of ``pid`` (and its descendants), in kB."""
    total = 0
    for member in (pid, *(descendants(pid) if tree else ())):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


class Side:
    """One server (preloading or cold) and its app."""

    def __init__(self, name: str, root: Path, llm: FakeLLM, envs: Path, preload: bool) -> None:
        self.name = name
        env = {"CREWSHIP_ENVS_DIR": str(envs), "CREWSHIP_PRELOAD": "1" if preload else "0"}
        self.srv = CrewshipServer(root / "crewship", env=env)
        self.bench = Bench(root, self.srv, llm)
        self.edits = 0

    def start(self) -> None:
        self.srv.start()
        self.bench.setup()
        self.bench.first_kickoff()

    def close(self) -> None:
        self.bench.http.close()
        self.srv.close()

    def code_push(self) -> tuple[float, dict[str, float]]:
        """A code-only push; (until ``git push`` exited, the seconds of each step)."""
        self.edits += 1
        tasks = self.bench.project / "src/demo_crew/config/tasks.yaml"
        tasks.write_text(tasks.read_text().replace("briefing", f"briefing ({self.edits})", 1))
        self.bench.commit(f"reword {self.edits}")
        wall = time.time()
        took, phases = self.bench.push()
        ended = wall + took
        if "cache hit" not in " ".join(phases):
            raise RuntimeError(f"a code-only push rebuilt its environment: {phases}")
        return took, self.steps(wall, ended)

    def steps(self, wall: float, ended: float) -> dict[str, float]:
        srv = self.srv
        release = srv.ssh_json(srv.admin_key, "status", APP)["release"]
        version = int(str(release).lstrip("v"))
        received = [e for e in srv.logs("push_received", app=APP) if _epoch(e) >= wall - 1]
        built = srv.logs("build_steps", app=APP, release=version)
        healthy = [e for e in srv.logs("instance_healthy", app=APP)
                   if str(e.get("instance", "")).startswith(f"{APP}-v{version}.")]
        if not (received and built and healthy):
            return {}
        steps = {"receive": _epoch(received[-1]) - wall}
        steps.update({k: built[-1][f"{k}_ms"] / 1000 for k in ("export", "validate", "release")})
        steps["start"] = healthy[-1]["start_ms"] / 1000
        steps["health"] = healthy[-1]["health_ms"] / 1000
        steps["switch"] = ended - _epoch(healthy[-1])
        return {k: round(v, 3) for k, v in steps.items()}

    def crash(self) -> float:
        """kill -9 the instance; seconds until the daemon logged its replacement taking
        traffic (``instance_restarted``); the crew API is then checked to answer 200."""
        old = self.bench.up_pid()
        if old is None:
            raise RuntimeError("no instance up to kill")
        wall = time.time()
        os.kill(old, signal.SIGKILL)
        found: list[dict[str, Any]] = []

        def restarted() -> bool:
            found[:] = [e for e in self.srv.logs("instance_restarted", app=APP)
                        if _epoch(e) >= wall]
            return bool(found)

        wait_for(restarted, 120, "the instance to be restarted")
        wait_for(self.bench.healthy, 30, "the crew API health to answer 200")
        return _epoch(found[0]) - wall

    def ssh_timed(self, *args: str) -> float:
        started = time.perf_counter()
        self.srv.ssh(self.srv.admin_key, *args, APP, check=True, timeout=300)
        return time.perf_counter() - started

    def restart(self) -> float:
        return self.ssh_timed("restart")

    def config_set(self) -> float:
        self.edits += 1
        started = time.perf_counter()
        self.srv.ssh(self.srv.admin_key, "config:set", APP, f"BENCH_EDIT={self.edits}",
                     check=True, timeout=300)
        return time.perf_counter() - started

    def second_instance_pss(self) -> tuple[float, float, float]:
        """``ps:scale 2``, two kickoffs; PSS in MB of (instance 2, the app's processes: both
        instances and the preloaded parent, the parent alone)."""
        srv = self.srv
        srv.ssh(srv.admin_key, "ps:scale", APP, "2", check=True, timeout=300)
        self.bench.first_kickoff()
        self.bench.first_kickoff()
        settle(srv.pid)
        status = srv.ssh_json(srv.admin_key, "status", APP)
        pids = [int(i["pid"]) for i in status["instances"] if i["state"] == "up"]
        second = next(int(i["pid"]) for i in status["instances"]
                      if i["state"] == "up" and re.search(r"\.2-[0-9a-f]+$", str(i["id"])))
        mb = pss_kb(second) / 1024
        app_mb, parent_mb = sum(pss_kb(pid) for pid in pids) / 1024, 0.0
        if self.name == "preload":  # the parent's tree: itself and both instances
            parent = int(Path(f"/proc/{second}/stat").read_text().rsplit(")", 1)[1].split()[1])
            app_mb, parent_mb = pss_kb(parent) / 1024, pss_kb(parent, tree=False) / 1024
        srv.ssh(srv.admin_key, "ps:scale", APP, "1", check=True, timeout=300)
        return mb, app_mb, parent_mb


def settle_both(sides: list[Side]) -> None:
    for side in sides:
        settle(side.srv.pid)


def row(case: str, ours: list[float], theirs: list[float], *, goal: float,
        goal_abs: float | None = None, unit: str = "s", **extra: Any) -> dict[str, Any]:
    """``goal_abs``: met when crewship's median is at most that many seconds."""
    crewship, cold = statistics.median(ours), statistics.median(theirs)
    ratio = crewship / cold
    met = crewship <= goal_abs if goal_abs is not None else ratio <= goal
    out = {"benchmark": NAME, "case": case, "runs": len(ours), "crewship_s": round(crewship, 4),
           "baseline": "today's cold start (CREWSHIP_PRELOAD=0)",
           "baseline_s": round(cold, 4), "ratio": round(ratio, 3), "goal": goal, "met": met,
           "crewship_all_s": [round(t, 4) for t in ours],
           "baseline_all_s": [round(t, 4) for t in theirs], **extra}
    if goal_abs is not None:
        out["goal_text"] = f"<= {goal_abs:g} s"
    if unit != "s":
        out["unit"] = unit
    return out


def median_steps(all_steps: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in all_steps if k in s), 3)
            for k in STEPS if any(k in s for s in all_steps)}


def measure(warm: Side, cold: Side, runs: int) -> list[dict[str, Any]]:
    sides = [warm, cold]
    results: dict[str, dict[str, list[Any]]] = {s.name: {} for s in sides}

    def timed(side: Side, case: str, value: Any) -> None:
        results[side.name].setdefault(case, []).append(value)

    for i in range(runs):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            settle_both(sides)
            took, steps = side.code_push()
            timed(side, "push", took)
            timed(side, "steps", steps)
            settle_both(sides)
            back = side.crash()
            timed(side, "crash", back)
            settle_both(sides)
            timed(side, "restart", side.restart())
            settle_both(sides)
            timed(side, "config", side.config_set())
            log(f"run {i + 1} {side.name}: push {took:.2f}s {steps}, crash {back:.2f}s, "
                f"restart {results[side.name]['restart'][-1]:.2f}s, "
                f"config:set {results[side.name]['config'][-1]:.2f}s")
    for side in sides:
        mb, app_mb, parent_mb = side.second_instance_pss()
        timed(side, "pss", mb)
        timed(side, "app_pss", app_mb)
        timed(side, "parent_pss", parent_mb)
        log(f"{side.name}: second instance PSS {mb:.0f} MB, the app with 2 instances "
            f"{app_mb:.0f} MB (of which the preloaded parent {parent_mb:.0f} MB)")
    ours, theirs = results["preload"], results["cold"]
    return [
        row("code-only push until live", ours["push"], theirs["push"], goal=1.0,
            goal_abs=GOAL_PUSH_S, push_steps=median_steps(ours["steps"]),
            cold_push_steps=median_steps(theirs["steps"])),
        row("kill -9 until healthy again", ours["crash"], theirs["crash"], goal=1.0,
            goal_abs=GOAL_CRASH_S),
        row("restart until live", ours["restart"], theirs["restart"], goal=1.0),
        row("config:set until live", ours["config"], theirs["config"], goal=1.0),
        row("PSS of a second instance (MB)", ours["pss"], theirs["pss"], goal=GOAL_PSS_RATIO,
            unit="MB"),
        row("PSS of the app with 2 instances, parent included (MB)", ours["app_pss"],
            theirs["app_pss"], goal=1.0, unit="MB",
            parent_pss_mb=round(ours["parent_pss"][0], 1)),
    ]


def run(deploy_runs: int = 3) -> list[dict[str, Any]]:
    """Measure every case on both servers; one result row per case."""
    with tempfile.TemporaryDirectory(prefix="crewship-bench-preload-") as tmp:
        root = Path(tmp)
        envs = cache_root() / "server-envs"  # code-only pushes: a shared env is never rebuilt
        with FakeLLM() as llm:
            warm = Side("preload", root / "preload", llm, envs, preload=True)
            cold = Side("cold", root / "cold", llm, envs, preload=False)
            try:
                warm.start()
                cold.start()
                rows = measure(warm, cold, deploy_runs)
            finally:
                warm.close()
                cold.close()
                kill_preload_sandboxes(warm.srv.data_dir)
        print_steps(rows[0])
        return rows


def print_steps(push: dict[str, Any]) -> None:
    """The push's steps, preloaded beside cold, on stderr (the table prints the totals)."""
    ours, theirs = push.get("push_steps", {}), push.get("cold_push_steps", {})
    print("  code-only push, median seconds per step (preloaded / cold):", file=sys.stderr)
    for step in STEPS:
        print(f"    {step:<9} {ours.get(step, float('nan')):7.3f}  "
              f"{theirs.get(step, float('nan')):7.3f}", file=sys.stderr)

