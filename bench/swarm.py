"""Swarm benchmarks (issue #13): push-to-live on ``--runtime swarm`` beside ``--runtime docker``.

Two servers, each its own data dir, on the same dockerd (a swarm manager: ``.ci/docker-setup``)
serve the real classic-crew fixture against the fake LLM. After each has its first release
live (the swarm server's first push also fills its registry with the dependency layer),
code-only pushes are timed, the two runtimes interleaved:

- push to live, 1 replica: ``git push`` until it exits 0 (the new release is healthy and
  takes kickoffs). Swarm adds the registry push of the new code layer, the service update
  and Swarm's health-check cadence (1 s); baseline: the docker runtime's same push.
- rolling update of 2 replicas: the same at ``ps:scale 2``. Swarm replaces one task at a
  time (``start-first``); the docker runtime starts both new instances at once; baseline:
  the docker runtime.

Goal: at most 1.5x of the docker runtime for one replica and 2.5x for the two-replica
rolling update (one task at a time is the price of never dropping below two healthy).
Needs a swarm manager and ``docker-registry``; without them it reports nothing. Everything
it makes is removed afterwards (label ``crewship.app=bench-swarm``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "swarm"
APP = "bench-swarm"
GOALS = {"push": 1.5, "rolling": 2.5}


def log(message: str) -> None:
    print(f"  swarm: {message}", file=sys.stderr, flush=True)


def row(case: str, goal: float, baseline: str, ours: list[float], theirs: list[float]
        ) -> dict[str, Any]:
    crewship, base = statistics.median(ours), statistics.median(theirs)
    ratio = crewship / base
    return {"benchmark": NAME, "case": case, "runs": len(ours), "unit": "s",
            "crewship_s": round(crewship, 4), "baseline": baseline,
            "baseline_s": round(base, 4), "ratio": round(ratio, 3), "goal": goal,
            "met": ratio <= goal, "crewship_all_s": [round(t, 4) for t in ours],
            "baseline_all_s": [round(t, 4) for t in theirs]}


def run(deploy_runs: int = 3) -> list[dict[str, Any]]:
    import docker

    from tests.conftest import DOCKER_BASE_IMAGE
    from tests.e2e.test_deploy import commit_all, configure, new_project
    from tests.support.fakellm import FakeLLM
    from tests.support.server import CrewshipServer, free_port
    from tests.support.swarmcleanup import remove_swarm_apps

    try:
        client = docker.from_env(timeout=120)
        manager = (client.info().get("Swarm") or {}).get("ControlAvailable")
    except docker.errors.DockerException as exc:
        log(f"skipped: no Docker daemon ({exc})")
        return []
    if not manager:
        log("skipped: this dockerd is not a swarm manager (run .ci/docker-setup)")
        return []
    remove_swarm_apps(client, [APP])
    servers: dict[str, Any] = {}
    timings: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp, FakeLLM() as llm:
        root = Path(tmp)
        try:
            for runtime in ("docker", "swarm"):
                srv = servers[runtime] = CrewshipServer(
                    root / runtime, args=["--runtime", runtime],
                    env={"CREWSHIP_BASE_IMAGE": DOCKER_BASE_IMAGE,
                         "CREWSHIP_DRAIN_TIMEOUT": "20", "CREWSHIP_HEALTH_TIMEOUT": "120",
                         "CREWSHIP_REGISTRY_PORT": str(free_port())}).start(timeout=60)
                configure(srv, APP, llm)
                project = new_project(srv, "classic_crew", root / f"{runtime}-project")
                srv.project = project
                started = time.monotonic()
                push(srv, project)
                log(f"{runtime}: first push live in {time.monotonic() - started:.1f} s")
            for scale in (1, 2):
                for srv in servers.values():
                    srv.ssh(srv.admin_key, "ps:scale", APP, str(scale), check=True, timeout=300)
                for index in range(deploy_runs):
                    for runtime, srv in servers.items():
                        tasks = srv.project / "src/demo_crew/config/tasks.yaml"
                        tasks.write_text(tasks.read_text() + f"\n# bench {scale}.{index}\n")
                        commit_all(srv, srv.project, f"bench {scale}.{index}")
                        started = time.monotonic()
                        push(srv, srv.project)
                        took = time.monotonic() - started
                        timings.setdefault((runtime, scale), []).append(took)
                        log(f"{runtime} scale {scale}: code-only push live in {took:.2f} s")
        finally:
            for srv in servers.values():
                srv.close()
            remove_swarm_apps(client, [APP])
            client.close()
    return [
        row("code-only push until live, 1 replica (swarm)", GOALS["push"],
            "the docker runtime, same push", timings[("swarm", 1)], timings[("docker", 1)]),
        row("rolling update of 2 replicas, push until live (swarm)", GOALS["rolling"],
            "the docker runtime's swap of 2 instances", timings[("swarm", 2)],
            timings[("docker", 2)]),
    ]


def push(srv: Any, project: Path) -> None:
    result = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False,
                     timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"push failed: {result.stderr[-2000:]}")


if __name__ == "__main__":
    for item in run():
        print(item)
