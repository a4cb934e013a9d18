"""Image benchmarks (issue #5): the docker runtime's build cache and image size.

The real classic-crew fixture is built by ``ImageBuilder`` (the code the server runs for
``--runtime docker``) on the local base image (``CREWSHIP_TEST_BASE_IMAGE``, default
``crewship-base:bookworm``, made by ``.ci/docker-setup``):

- code-only rebuild against a full build: a full build with Docker's cache off (every
  layer, the ~1 GB dependency layer included, built afresh), then code-only commits
  (one task's wording changed), each rebuilt with the cache: only the code layer is new.
  Goal: a code-only rebuild takes at most a tenth of a full build.
- image size against its parts: the image against the base image plus the same lock's
  environment installed on the host (``du`` of the venv) plus the source: the image
  should carry nothing else. Goal: at most 1.15x.

Needs a Docker daemon; without one the benchmark reports nothing (a message says why).
Everything it builds is removed afterwards (label ``crewship.app=bench-image``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.env import EnvBuilder
from builder.image import ImageBuilder, connect
from crewship.config import Layout
from crewship.errors import BuildError
from crewship.reporter import NullReporter
from tests.support.crewenv import ensure_env, locked_copy

NAME = "image"
APP = "bench-image"
BASE = os.environ.get("CREWSHIP_TEST_BASE_IMAGE", "crewship-base:bookworm")
GOALS = {"rebuild": 0.1, "size": 1.15}


def log(message: str) -> None:
    print(f"  image: {message}", file=sys.stderr, flush=True)


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@crewship.local",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@crewship.local"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def row(case: str, goal: float, baseline: str, ours: list[float], theirs: list[float],
        unit: str = "s", **extra: Any) -> dict[str, Any]:
    crewship, base = statistics.median(ours), statistics.median(theirs)
    ratio = crewship / base
    return {"benchmark": NAME, "case": case, "runs": len(ours), "unit": unit,
            "crewship_s": round(crewship, 4), "baseline": baseline,
            "baseline_s": round(base, 4), "ratio": round(ratio, 3), "goal": goal,
            "met": ratio <= goal, "crewship_all_s": [round(t, 4) for t in ours],
            "baseline_all_s": [round(t, 4) for t in theirs], **extra}


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = locked_copy("classic_crew", root)
        self.repo = root / "repo.git"
        git("init", "-q", "-b", "main", cwd=self.project)
        git("add", "-A", cwd=self.project)
        git("commit", "-q", "-m", "initial", cwd=self.project)
        git("clone", "-q", "--bare", str(self.project), str(self.repo), cwd=root)
        self.layout = Layout(root / "data")
        self.layout.ensure()
        self.version = 0

    def builder(self, no_cache: bool) -> ImageBuilder:
        return ImageBuilder(self.layout, EnvBuilder(self.layout.envs, sys.executable), BASE,
                            no_cache=no_cache)

    def build(self, no_cache: bool) -> tuple[float, str]:
        """One build of the current commit as a new release; (seconds, image id)."""
        self.version += 1
        commit = git("rev-parse", "HEAD", cwd=self.project)

        async def go() -> tuple[float, str]:
            builder = self.builder(no_cache)
            try:
                started = time.perf_counter()
                built = await builder.build(APP, self.version, self.repo, commit, NullReporter())
                elapsed = time.perf_counter() - started
            finally:
                await builder.aclose()
            assert built.meta.image is not None
            if not no_cache and not built.env.cache_hit:
                raise RuntimeError("a code-only rebuild rebuilt the dependency layer")
            return elapsed, built.meta.image

        return asyncio.run(go())

    def code_change(self) -> None:
        tasks = self.project / "src/demo_crew/config/tasks.yaml"
        tasks.write_text(tasks.read_text() + f"\n# edit {self.version}\n")
        git("commit", "-q", "-am", f"edit {self.version}", cwd=self.project)
        git("push", "-q", str(self.repo), "main", cwd=self.project)


def cleanup() -> None:
    with contextlib.suppress(BuildError):
        client = connect()
        for container in client.containers.list(all=True, filters={"label": f"crewship.app={APP}"}):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for image in client.images.list(filters={"label": f"crewship.app={APP}"}):
            with contextlib.suppress(Exception):
                client.images.remove(image.id, force=True)
        with contextlib.suppress(Exception):
            client.images.prune(filters={"dangling": True, "label": "crewship.managed"})
        client.close()


def measure(bench: Bench, runs: int) -> list[dict[str, Any]]:
    log("full build (cache off) ...")
    full, image_id = bench.build(no_cache=True)
    log(f"full build {full:.1f}s")
    code_only = []
    for _ in range(runs):
        bench.code_change()
        elapsed, image_id = bench.build(no_cache=False)
        code_only.append(elapsed)
        log(f"code-only rebuild {elapsed:.2f}s")
    client = connect()
    try:
        size = client.images.get(image_id).attrs["Size"] / 1e6
        base = client.images.get(BASE).attrs["Size"] / 1e6
    finally:
        client.close()
    venv = du(ensure_env(bench.project).parent.parent) / 1e6  # .../bin/python -> the venv
    source = du(bench.project) / 1e6
    return [
        row("code-only image rebuild vs full build", GOALS["rebuild"], "full image build",
            code_only, [full]),
        row("image size vs base + venv + source (MB)", GOALS["size"],
            f"base {base:.0f} MB + venv {venv:.0f} MB + source {source:.1f} MB",
            [size], [base + venv + source], unit="MB", image_mb=round(size, 1)),
    ]


def run(deploy_runs: int = 3) -> list[dict[str, Any]]:
    """Both cases; no rows (and a message) when no Docker daemon answers."""
    try:
        connect().close()
    except BuildError as exc:
        log(f"skipped: {exc}")
        return []
    cleanup()
    try:
        with tempfile.TemporaryDirectory(prefix="crewship-bench-image-") as tmp:
            return measure(Bench(Path(tmp)), max(deploy_runs, 1))
    finally:
        cleanup()
