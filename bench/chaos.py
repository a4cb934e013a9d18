"""``make chaos``: the reliability suite (issue 12 item 7). Nothing accepted is ever lost.

    python -m bench.chaos                     # every scenario, full size
    python -m bench.chaos --only a,c --short  # the CI sizes
    python -m bench.chaos --runtime docker

Each scenario runs its own ``crewship server`` (temp data dir, loopback only) with the
real classic-crew fixture against the fake LLM, and prints one line: accepted,
succeeded, failed, lost (goal 0) and time to recover. A kickoff is *accepted* when
``POST /kickoff`` answered with an id; *lost* when, once the load stopped and the
system had ``SETTLE`` seconds to finish, its status is not SUCCESS/FAILURE/REVOKED (or
the server does not know it). Failed kickoffs carry their reason (e.g. the instance
they ran on was killed); they are not lost. Refusals (429, 503, connection refused
while the daemon is down) are counted apart: the client was told.

Adding a scenario: write ``def name(ctx: Context) -> Row`` and decorate it with
``@scenario("x", "what it does")``; ``SCENARIOS`` is the registry the runner walks. The load
(clients posting kickoffs and following each to its end, the counts) is bench/chaosload.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaosload import APP, SETTLE, CrewClient, Load, Row
from runtime.pidrecord import read_record
from tests.support.crewenv import cache_root, locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.sandboxes import kill_preload_sandboxes
from tests.support.server import CrewshipServer

PUSH_STAGGER = 1.0      # seconds between the starts of scenario e's pushes


@dataclass
class Sizes:
    burst_total: int = 1000
    burst_concurrency: int = 50
    kill_every: float = 3.0
    kill_for: float = 60.0
    stream_concurrency: int = 8
    daemon_kills: int = 5
    daemon_kill_every: float = 6.0
    pushes: int = 5

    @classmethod
    def short(cls) -> Sizes:
        return cls(burst_total=200, burst_concurrency=20, kill_for=15.0, daemon_kills=2,
                   pushes=3)


@dataclass
class Context:
    root: Path
    llm: FakeLLM
    runtime: str
    sizes: Sizes
    servers: list[CrewshipServer] = field(default_factory=list)

    def server(self, name: str, **env: str) -> CrewshipServer:
        """A fresh server with the shared env cache; crashes never make the app crashed
        unless a scenario asks (the crash policy is not what these measure)."""
        settings = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs"),
                    "CREWSHIP_RUNTIME": self.runtime, "CREWSHIP_CRASH_LIMIT": "10000",
                    "CREWSHIP_RESTART_DELAY": "0.2", **env}
        if self.runtime == "docker":
            settings["CREWSHIP_BASE_IMAGE"] = os.environ.get("CREWSHIP_TEST_BASE_IMAGE",
                                                             "crewship-base:bookworm")
        srv = CrewshipServer(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)),
                             env=settings)
        self.servers.append(srv)
        return srv.start()

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
            kill_instances(srv)
        if self.runtime == "docker":
            remove_containers()


# ---------------------------------------------------------------------------- setup


def deploy_crew(ctx: Context, srv: CrewshipServer, scale: int) -> CrewClient:
    """The classic crew, pushed and live at ``scale``; a client holding its token."""
    srv.ssh(srv.admin_key, "apps:create", APP, check=True)
    pairs = [f"{k}={v}" for k, v in ctx.llm.env().items()]
    srv.ssh(srv.admin_key, "config:set", APP, *pairs, check=True)
    project = new_project(srv, Path(tempfile.mkdtemp(dir=ctx.root)))
    push = srv.git(srv.admin_key, "push", srv.git_url(APP), "main", cwd=project, check=False,
                   timeout=900)  # a first image build (docker runtime) downloads every wheel
    if push.returncode != 0:
        raise RuntimeError(f"the first push failed:\n{push.stderr}")
    if scale != 1:
        srv.ssh(srv.admin_key, "ps:scale", APP, str(scale), check=True, timeout=180)
    token = srv.ssh(srv.admin_key, "tokens", APP, check=True).stdout.strip()
    return CrewClient(srv, token)


def new_project(srv: CrewshipServer, where: Path) -> Path:
    project = locked_copy("classic_crew", where)
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "-m", "initial", cwd=project)
    return project


def instances(srv: CrewshipServer) -> list[dict[str, Any]]:
    with contextlib.suppress(Exception):
        return list(srv.ssh_json(srv.admin_key, "status", APP)["instances"])
    return []


def kill_instances(srv: CrewshipServer) -> None:
    """Every instance a server (or its predecessors) started: adopted ones are no longer
    its descendants, so they are found through the backend's records."""
    for path in (srv.data_dir / "instances").glob("*.json"):
        found = read_record(path)  # a pid record (runtime/pidrecord.py)
        if found is None:
            continue
        proc = found[1]
        # sandboxed: killing the namespace's init ends everything inside; the outer bwrap
        # alone would leave the crew running
        for pid in (proc.init[0] if proc.init else None, proc.pid):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    kill_preload_sandboxes(srv.data_dir)  # the preloaded parents' namespaces, likewise


def remove_containers() -> None:
    """The docker runtime's containers of this suite's app (labelled by the backend)."""
    import docker

    client = docker.from_env()
    try:
        for container in client.containers.list(all=True, filters={"label": f"crewship.app={APP}"}):
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
    finally:
        client.close()


def wait_until(check: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``check()`` held, or None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


# ------------------------------------------------------------------------ scenarios

Scenario = Callable[[Context], Row]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(key: str, title: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[key] = (title, fn)
        return fn
    return register


@scenario("a", "burst: N kickoffs at concurrency C, scale 2")
def burst(ctx: Context) -> Row:
    sizes = ctx.sizes
    srv = ctx.server("burst")
    client = deploy_crew(ctx, srv, scale=2)
    started = time.monotonic()
    load = Load(client, sizes.burst_concurrency, sizes.burst_total).start()
    wait_until(lambda: len(load.accepted) >= sizes.burst_total, SETTLE * 5)
    load.finish()
    name = f"a. {sizes.burst_total} kickoffs @ {sizes.burst_concurrency}, scale 2"
    return load.row(name, started)


@scenario("b", "kill -9 of a crew instance every few seconds while kickoffs stream in")
def instance_kills(ctx: Context) -> Row:
    sizes = ctx.sizes
    srv = ctx.server("kills")
    client = deploy_crew(ctx, srv, scale=2)
    started = time.monotonic()
    load = Load(client, sizes.stream_concurrency).start()
    recoveries: list[float] = []
    kills = 0
    rng = random.Random(12)
    while time.monotonic() - started < sizes.kill_for:
        time.sleep(sizes.kill_every)
        up = [i for i in instances(srv) if i["state"] == "up" and i["pid"]]
        if not up:
            continue
        victim = rng.choice(up)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(victim["pid"]), signal.SIGKILL)
            kills += 1
    recovered = wait_until(lambda: sum(i["state"] == "up" for i in instances(srv)) == 2, 120)
    if recovered is not None:
        recoveries.append(recovered)
    load.finish()
    name = f"b. kill -9 instance every {sizes.kill_every:g}s for {sizes.kill_for:g}s"
    return load.row(name, started, max(recoveries) if recoveries else None,
                    notes=f"{kills} kills")


@scenario("c", "kill -9 of the daemon during kickoffs, restarted each time")
def daemon_kills(ctx: Context) -> Row:
    sizes = ctx.sizes
    srv = ctx.server("daemon")
    client = deploy_crew(ctx, srv, scale=2)
    ctx.llm.delay = 0.5  # runs long enough to be in flight when the daemon dies
    started = time.monotonic()
    load = Load(client, sizes.stream_concurrency).start()
    recoveries = []
    try:
        for _ in range(sizes.daemon_kills):
            time.sleep(sizes.daemon_kill_every)
            assert srv.proc is not None
            os.kill(srv.pid, signal.SIGKILL)
            srv.proc.wait(30)
            srv.proc = None
            killed = time.monotonic()
            srv.start(timeout=120)
            with httpx.Client(timeout=30, trust_env=False) as http:
                first = wait_until(lambda: client.kickoff(http)[0] is not None, 120)
            if first is not None:
                recoveries.append(time.monotonic() - killed)
        time.sleep(sizes.daemon_kill_every)
        load.finish()
    finally:
        ctx.llm.delay = 0.0
    name = f"c. kill -9 of the daemon x{sizes.daemon_kills} during kickoffs"
    return load.row(name, started, max(recoveries) if recoveries else None)


@scenario("e", "concurrent pushes of different commits to one app")
def concurrent_pushes(ctx: Context) -> Row:
    """Each push force-pushes its own commit, one second after the previous one started (all
    of them are in flight together: a deploy takes longer): serialized by the deploy lock,
    each told its outcome (exit 0 and "is live", or a non-zero exit with the reason), and
    the live release is the branch's tip. A push whose outcome is missing, or a live
    release that is not the tip, counts as lost. (Pushes that start within the same ref
    update race in git itself: the losers get "failed to update ref", also an outcome.)"""
    sizes = ctx.sizes
    srv = ctx.server("pushes")
    deploy_crew(ctx, srv, scale=1)
    clones = []
    for n in range(sizes.pushes):
        project = new_project(srv, Path(tempfile.mkdtemp(dir=ctx.root)))
        (project / f"change_{n}.txt").write_text(f"push {n}\n")
        srv.git(None, "add", "-A", cwd=project)
        srv.git(None, "commit", "-q", "-m", f"push {n}", cwd=project)
        clones.append(project)
    results: dict[int, Any] = {}

    def push(n: int) -> None:
        time.sleep(n * PUSH_STAGGER)
        results[n] = srv.git(srv.admin_key, "push", "-f", srv.git_url(APP), "main",
                             cwd=clones[n], check=False, timeout=900)

    started = time.monotonic()
    threads = [threading.Thread(target=push, args=(n,)) for n in range(sizes.pushes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, r in sorted(results.items()):
        last = [ln for ln in r.stderr.splitlines() if ln.strip()][-2:]
        print(f"   push {n}: exit {r.returncode}: {' | '.join(last)}", file=sys.stderr)
    live = [n for n, r in results.items() if r.returncode == 0 and "is live" in r.stderr]
    told = [n for n, r in results.items() if r.returncode == 0 or "remote:" in r.stderr]
    status = srv.ssh_json(srv.admin_key, "status", APP)
    tip = srv.git(None, "--git-dir", str(srv.repo_path(APP)), "rev-parse", "refs/heads/main",
                  cwd=srv.root).stdout.strip()
    tip_live = status.get("commit") == tip
    lost = (sizes.pushes - len(told)) + (0 if tip_live else 1)
    notes = "live = branch tip" if tip_live else f"live {status.get('commit')} != tip {tip}"
    return Row(f"e. {sizes.pushes} concurrent pushes to one app", sizes.pushes, len(live),
               sizes.pushes - len(live), lost, None, 0, time.monotonic() - started, notes)


# --------------------------------------------------------------------------- runner


@contextlib.contextmanager
def context(runtime: str, sizes: Sizes) -> Iterator[Context]:
    with tempfile.TemporaryDirectory(prefix="crewship-chaos-") as tmp, FakeLLM() as llm:
        ctx = Context(Path(tmp), llm, runtime, sizes)
        try:
            yield ctx
        finally:
            ctx.close()


@scenario("d", "concurrent pushes to many apps, all live (bench/chaos_deploys.py)")
def many_apps(ctx: Context) -> Any:
    from bench.chaos_deploys import APPS, scenario_d

    return scenario_d(4 if ctx.sizes == Sizes.short() else APPS)


@scenario("f", "the data dir's filesystem full during a push and kickoffs (root: a tmpfs)")
def disk_full(ctx: Context) -> Any:
    from bench.chaos_deploys import scenario_f

    return scenario_f()


def run(keys: list[str], runtime: str, sizes: Sizes) -> list[Row]:
    rows = []
    for key in keys:
        title, fn = SCENARIOS[key]
        print(f"-- {key}: {title} ({runtime})", file=sys.stderr, flush=True)
        with context(runtime, sizes) as ctx:
            row = fn(ctx)
        print(row.line(), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenario keys, e.g. a,c")
    parser.add_argument("--runtime", default="process", choices=("process", "docker"))
    parser.add_argument("--short", action="store_true", help="the CI sizes")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: use {', '.join(SCENARIOS)}")
    rows = run(keys, args.runtime, Sizes.short() if args.short else Sizes())
    return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
