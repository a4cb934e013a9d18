"""Chaos scenarios for deploys (issue 12 item 7, rows d and f), loopback only, bounded.

    d. 20 concurrent pushes to 20 apps: every push told its outcome, every app live.
    f. the data dir's filesystem full (a 64 MB tmpfs this scenario mounts; needs root)
       during a push and during kickoffs: clear errors, state.db intact, no half
       release, and service back once space returns.

Each prints one line: accepted, succeeded, failed, lost (goal 0), time to recover.
The crew is a tiny entrypoint (a function of its inputs, no LLM, no crewai import at
start) in the classic crew's project, so its environment is the cached one.

    python -m bench.chaos_deploys [d] [f]
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.crewenv import cache_root, locked_copy
from tests.support.server import CrewshipServer

APPS = 20
PUSH_TIMEOUT = 600.0
TINY = '''"""A crew-shaped function: answers from its inputs, imports nothing heavy."""

import time


def run(inputs):
    time.sleep(float(inputs.get("sleep", 0)))
    return f"tiny crew ran with {sorted(inputs)}"
'''


@dataclass
class Row:
    scenario: str
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    recover_s: float = 0.0
    note: str = ""

    def line(self) -> str:
        return (f"{self.scenario:<42} accepted {self.accepted:>3}  succeeded {self.succeeded:>3}"
                f"  failed {self.failed:>3}  lost {self.lost:>2}  recover {self.recover_s:6.1f} s"
                + (f"  ({self.note})" if self.note else ""))


def log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


def tiny_project(srv: CrewshipServer, dest: Path) -> Path:
    project = locked_copy("classic_crew", dest)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text()
                         + '\n[tool.crewship]\nentrypoint = "demo_crew.tiny:run"\n')
    (project / "src/demo_crew/tiny.py").write_text(TINY)
    srv.git(None, "init", "-q", "-b", "main", cwd=project)
    commit(srv, project, "tiny crew")
    return project


def commit(srv: CrewshipServer, project: Path, message: str) -> str:
    srv.git(None, "add", "-A", cwd=project)
    srv.git(None, "commit", "-q", "--allow-empty", "-m", message, cwd=project)
    return srv.git(None, "rev-parse", "HEAD", cwd=project).stdout.strip()


def push(srv: CrewshipServer, project: Path, app: str,
         timeout: float = PUSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "push", srv.git_url(app), "main"], cwd=project,
                              env=srv.git_env(srv.admin_key), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:  # never told its outcome: counted lost
        return subprocess.CompletedProcess(exc.cmd, -1, "", "push timed out")


def healthy(srv: CrewshipServer, app: str) -> bool:
    token = srv.ssh(srv.admin_key, "tokens", app).stdout.strip()
    with contextlib.suppress(httpx.HTTPError):
        resp = httpx.get(f"{srv.http_url}/apps/{app}/", timeout=10, trust_env=False,
                         headers={"Authorization": f"Bearer {token}"})
        return resp.status_code == 200
    return False


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


@contextlib.contextmanager
def server(root: Path, data_dir: Path | None = None) -> Iterator[CrewshipServer]:
    env = {"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs")}
    srv = CrewshipServer(root / "srv", env=env)
    if data_dir is not None:  # moved before the first start (the admin key came along)
        data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", f"{srv.data_dir}/.", str(data_dir)], check=True)
        subprocess.run(["rm", "-rf", str(srv.data_dir)], check=True)
        srv.data_dir = data_dir
    srv.start()
    try:
        yield srv
    finally:
        srv.close()
        if keep := os.environ.get("CHAOS_SERVER_LOG"):  # to see what the server said
            Path(keep).write_bytes(srv.log_path.read_bytes())


# ---- d. 20 concurrent pushes to 20 apps -------------------------------------------------------


def scenario_d(apps: int = APPS) -> Row:
    row = Row(f"d. {apps} concurrent pushes to {apps} apps")
    with tempfile.TemporaryDirectory(prefix="crewship-chaos-d-") as tmp, \
            server(Path(tmp)) as srv:
        project = tiny_project(srv, Path(tmp) / "src")
        names = [f"fleet-{i:02d}" for i in range(apps)]
        for name in names:
            srv.ssh(srv.admin_key, "apps:create", name, check=True)
        started = time.monotonic()
        with ThreadPoolExecutor(apps) as pool:
            results = list(pool.map(lambda n: push(srv, project, n), names))
        row.accepted = len(results)
        told = [r for r in results if r.returncode in (0, 1)]
        live = [n for n, r in zip(names, results, strict=True)
                if r.returncode == 0 and healthy(srv, n)]
        row.succeeded = len(live)
        row.failed = sum(1 for r in told if r.returncode != 0)
        row.lost = row.accepted - len(told) + sum(
            1 for n, r in zip(names, results, strict=True) if r.returncode == 0 and n not in live)
        row.recover_s = time.monotonic() - started  # until every push was answered
        for name, result in zip(names, results, strict=True):
            if result.returncode != 0:
                log(f"{name}: push exited {result.returncode}: {result.stderr[-800:]}")
    return row


# ---- f. the data dir's filesystem full ---------------------------------------------------------


@contextlib.contextmanager
def small_fs(size_mb: int = 64) -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="crewship-chaos-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    written = 0
    block = b"\0" * (1024 * 1024)
    with path.open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    return written
                block = block[: len(block) // 16]


def kickoff(srv: CrewshipServer, app: str, token: str, sleep: float = 0) -> tuple[int, str]:
    try:
        resp = httpx.post(f"{srv.http_url}/apps/{app}/kickoff", timeout=30, trust_env=False,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"inputs": {"topic": "disk", "sleep": str(sleep)}})
    except httpx.HTTPError as exc:
        return -1, str(exc)
    return resp.status_code, resp.text


def finished(srv: CrewshipServer, app: str, token: str, kickoff_id: str,
             timeout: float = 60) -> str:
    def state() -> str:
        resp = httpx.get(f"{srv.http_url}/apps/{app}/status/{kickoff_id}", timeout=10,
                         trust_env=False, headers={"Authorization": f"Bearer {token}"})
        return str(resp.json().get("state", "")) if resp.status_code == 200 else ""

    ended = ("SUCCESS", "FAILURE", "REVOKED")
    wait_until(lambda: state() in ended, timeout)
    return state()


def intact(db: Path) -> bool:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def half_releases(data_dir: Path, app: str) -> list[str]:
    root = data_dir / "releases" / app
    half = [p.name for p in root.iterdir() if not (p / "release.json").is_file()] \
        if root.is_dir() else []
    tmp = data_dir / "tmp"
    return half + ([p.name for p in tmp.iterdir()] if tmp.is_dir() else [])


def scenario_f() -> Row:
    row = Row("f. data dir filesystem full (push, kickoffs)")
    if os.geteuid() != 0:
        row.note = "skipped: mounting a tmpfs needs root"
        return row
    with tempfile.TemporaryDirectory(prefix="crewship-chaos-f-") as tmp, small_fs() as mount, \
            server(Path(tmp), mount / "data") as srv:
        project = tiny_project(srv, Path(tmp) / "src")
        srv.ssh(srv.admin_key, "apps:create", "full", check=True)
        if push(srv, project, "full").returncode != 0:
            raise RuntimeError("the first push failed before the disk was full")
        token = srv.ssh(srv.admin_key, "tokens", "full", check=True).stdout.strip()
        in_flight = [kickoff(srv, "full", token, sleep=3) for _ in range(3)]
        filler = mount / "filler"
        log(f"filled the data dir's filesystem with {fill(filler) // 1024 // 1024} MB")
        _full_push(srv, project, row)
        _full_kickoffs(srv, token, row)
        ids = _started(in_flight, row)
        if not intact(srv.data_dir / "state.db"):
            row.lost += 1
            row.note = "state.db failed its integrity check"
        if half := half_releases(srv.data_dir, "full"):
            row.lost += 1
            row.note = f"half-written: {half}"
        filler.unlink()
        started = time.monotonic()
        _settled(srv, token, ids, row)
        _recovered(srv, project, token, row)
        row.recover_s = time.monotonic() - started
    return row


def _full_push(srv: CrewshipServer, project: Path, row: Row) -> None:
    (project / "big.txt").write_text("x" * 4_000_000)  # a push that needs room
    commit(srv, project, "a push into a full disk")
    result = push(srv, project, "full", timeout=180)
    row.accepted += 1
    if result.returncode == 0:
        row.succeeded += 1
    elif result.returncode == 1:
        row.failed += 1
        reason = [ln for ln in result.stderr.splitlines()
                  if "no space" in ln.lower() or "disk is full" in ln.lower()]
        log(f"push into a full disk: {reason[-1] if reason else result.stderr[-400:]}")
        if not reason:
            row.note = "push failed without saying the disk is full"
            log(result.stderr[-1500:])
    else:
        row.lost += 1
        log(f"push into a full disk: exit {result.returncode}: {result.stderr[-1500:]}")


def _full_kickoffs(srv: CrewshipServer, token: str, row: Row) -> None:
    for _ in range(5):
        status, text = kickoff(srv, "full", token)
        row.accepted += 1
        if status in (200, 201, 202):
            kickoff_id = httpx.Response(200, text=text).json()["kickoff_id"]
            state = finished(srv, "full", token, kickoff_id)
            if state == "SUCCESS":
                row.succeeded += 1
            elif state in ("FAILURE", "REVOKED"):
                row.failed += 1
            else:
                row.lost += 1
        elif 400 <= status < 500 or status in (503, 507):
            row.failed += 1
            log(f"kickoff into a full disk: {status} {text[:200]}")
        else:  # a 500 or no answer: not a clear error
            row.lost += 1
            log(f"kickoff into a full disk: unclear answer {status} {text[:200]}")


def _started(answers: list[tuple[int, str]], row: Row) -> list[str]:
    """The kickoffs accepted before the disk filled (still running while it is full)."""
    row.accepted += len(answers)
    ids = [httpx.Response(200, text=text).json()["kickoff_id"]
           for status, text in answers if status in (200, 201, 202)]
    row.failed += len(answers) - len(ids)
    return ids


def _settled(srv: CrewshipServer, token: str, ids: list[str], row: Row) -> None:
    """Kickoffs that ran while the disk was full end, told, once space is back."""
    for kickoff_id in ids:
        state = finished(srv, "full", token, kickoff_id, timeout=30)
        if state == "SUCCESS":
            row.succeeded += 1
        elif state in ("FAILURE", "REVOKED"):
            row.failed += 1
        else:
            row.lost += 1
            log(f"kickoff {kickoff_id} still {state or 'unknown'} after space returned")


def _recovered(srv: CrewshipServer, project: Path, token: str, row: Row) -> None:
    result = push(srv, project, "full", timeout=300)
    row.accepted += 1
    if result.returncode != 0:
        row.lost += 1
        row.note = f"the push after space returned failed: {result.stderr[-300:]}"
        return
    row.succeeded += 1
    status, text = kickoff(srv, "full", token)
    row.accepted += 1
    ok = status in (200, 201, 202) and finished(
        srv, "full", token, httpx.Response(200, text=text).json()["kickoff_id"]) == "SUCCESS"
    row.succeeded += ok
    row.lost += not ok


SCENARIOS: dict[str, Callable[[], Row]] = {"d": scenario_d, "f": scenario_f}


def main(argv: list[str] | None = None) -> int:
    chosen = (argv if argv is not None else sys.argv[1:]) or list(SCENARIOS)
    rows = [SCENARIOS[name]() for name in chosen]
    for row in rows:
        print(row.line(), flush=True)
    return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
