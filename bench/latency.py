"""Latency benchmark: does the daemon's event loop stay responsive under load?

``ssh status`` is timed back to back, first on an idle server, then while two pushes
run at once: a cold build (a fresh environments dir, so ``uv sync`` installs crewai)
and a push carrying a 50 MB file (exported, validated and assembled into a release).
Whatever blocks the loop (SQLite, tree walks, log reads, deletions) shows in the
loaded p50/p99; the idle figures are the baseline.

    python -m bench --only latency             # or: python -m bench.latency
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.crewenv import locked_copy
from tests.support.server import CrewshipServer

NAME = "latency"
IDLE_SAMPLES = 30
GOAL_P50 = 2.0   # loaded p50 at most this many times the idle p50
GOAL_P99 = 4.0


def log(message: str) -> None:
    print(f"[latency] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Prober:
    """``ssh status APP --json`` back to back on a thread, recording each wall time."""

    def __init__(self, srv: CrewshipServer, app: str) -> None:
        self.argv = [*srv.ssh_argv(srv.admin_key), "status", app, "--json"]
        self.samples: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def once(self) -> float:
        started = time.perf_counter()
        result = subprocess.run(self.argv, capture_output=True, timeout=120, check=False)
        took = time.perf_counter() - started
        if result.returncode != 0:
            self.errors += 1
        return took

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.once())
            time.sleep(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(180)
        return self.samples


def push(srv: CrewshipServer, project: Path, app: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["git", "push", srv.git_url(app), "main"], cwd=project,
                            env=srv.git_env(srv.admin_key), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def prepare(srv: CrewshipServer, root: Path, big_mb: int) -> tuple[Path, Path]:
    key = srv.admin_key
    for app in ("cold", "big"):
        srv.ssh(key, "apps:create", app, check=True)
    cold = locked_copy("classic_crew", root / "cold")
    big = locked_copy("classic_crew", root / "big")
    (big / "data.bin").write_bytes(os.urandom(big_mb * 1024 * 1024))
    for project in (cold, big):
        srv.git(None, "init", "-q", "-b", "main", cwd=project)
        srv.git(None, "add", "-A", cwd=project)
        srv.git(None, "commit", "-q", "-m", "initial", cwd=project)
    return cold, big


def measure(big_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crewship-latency-") as tmp:
        root = Path(tmp)
        watchdog = {k: v for k, v in os.environ.items() if k == "CREWSHIP_LOOP_WATCHDOG"}
        srv = CrewshipServer(root / "srv", env=watchdog)  # its own envs dir: a cold build
        srv.start()
        try:
            cold, big = prepare(srv, root, big_mb)
            prober = Prober(srv, "cold")
            idle = [prober.once() for _ in range(IDLE_SAMPLES)]
            log(f"idle: p50 {percentile(idle, 50) * 1000:.0f} ms, "
                f"p99 {percentile(idle, 99) * 1000:.0f} ms")
            started = time.perf_counter()
            prober.start()
            pushes = [push(srv, cold, "cold"), push(srv, big, "big")]
            codes = [p.wait(1200) for p in pushes]
            loaded = prober.stop()
            took = time.perf_counter() - started
            for p, code in zip(pushes, codes, strict=True):
                if code != 0:
                    assert p.stderr is not None
                    log(f"a push failed ({code}): {p.stderr.read().decode()[-1500:]}")
            log(f"loaded ({took:.0f} s, {len(loaded)} probes, {prober.errors} errors): "
                f"p50 {percentile(loaded, 50) * 1000:.0f} ms, "
                f"p99 {percentile(loaded, 99) * 1000:.0f} ms, max {max(loaded) * 1000:.0f} ms")
            return {"idle": idle, "loaded": loaded, "errors": prober.errors,
                    "pushes_ok": codes == [0, 0], "load_s": took}
        finally:
            srv.close()
            if keep := os.environ.get("LATENCY_SERVER_LOG"):  # to find what blocked
                Path(keep).write_bytes(srv.log_path.read_bytes())


def run(large_mb: int = 50) -> list[dict[str, Any]]:
    found = measure(large_mb)
    idle, loaded = found["idle"], found["loaded"]
    rows = []
    for q, goal in ((50, GOAL_P50), (99, GOAL_P99)):
        ours, base = percentile(loaded, q), percentile(idle, q)
        ratio = ours / base
        rows.append({"benchmark": NAME, "case": f"ssh status p{q} during a cold build + "
                     f"{large_mb} MB push", "runs": len(loaded), "crewship_s": round(ours, 4),
                     "baseline_s": round(base, 4), "baseline": "idle server",
                     "ratio": ratio, "goal": goal, "met": ratio <= goal and found["pushes_ok"],
                     "max_s": round(max(loaded), 4), "errors": found["errors"]})
    return rows


def main() -> int:
    for row in run():
        print(f"{row['case']}: {row['crewship_s'] * 1000:.0f} ms loaded, "
              f"{row['baseline_s'] * 1000:.0f} ms idle, max {row['max_s'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
